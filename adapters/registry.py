"""The adapter registry: which adapter serves which RecBole model class (PEFT's mapping, condensed).

It lives next to the adapters, so dependencies point one way: ``fusionlayer.attach`` uses the
registry, the registry uses the adapters, the adapters use the core (config, fusion, features).
"""

from __future__ import annotations

import warnings

from torch import nn

from fusionlayer.adapters.base import FusionAdapter
from fusionlayer.adapters.bpr import BPRAdapter
from fusionlayer.adapters.fpmc import FPMCAdapter
from fusionlayer.adapters.sequential import GenericSequentialAdapter, GRU4RecAdapter, SASRecAdapter
from fusionlayer.recbole_compat import patch_recbole

__all__ = ["get_adapter", "list_adapters", "register_adapter", "registered_adapter"]

_REGISTRY: dict[type, type] = {}


def _default_registry() -> dict[type, type]:
    if not _REGISTRY:
        patch_recbole()
        from recbole.model.general_recommender import BPR
        from recbole.model.sequential_recommender import FPMC, GRU4Rec, SASRec

        _REGISTRY.update({SASRec: SASRecAdapter, GRU4Rec: GRU4RecAdapter, FPMC: FPMCAdapter, BPR: BPRAdapter})
    return _REGISTRY


def register_adapter(model_class: type, adapter_class: type) -> None:
    """Register ``adapter_class`` (a :class:`fusionlayer.adapters.FusionAdapter`) for ``model_class``."""
    if not (isinstance(adapter_class, type) and issubclass(adapter_class, FusionAdapter)):
        raise TypeError(f"adapter_class must subclass fusionlayer.adapters.FusionAdapter, got {adapter_class!r}")
    _default_registry()[model_class] = adapter_class


def list_adapters() -> dict[str, str]:
    """``{model class name: adapter class name}`` for every registered backbone."""
    return {model.__name__: adapter.__name__ for model, adapter in _default_registry().items()}


def registered_adapter(model_class: type) -> type | None:
    """The adapter registered for ``model_class`` or its nearest registered base class, or ``None``."""
    registry = _default_registry()
    return next((registry[cls] for cls in model_class.__mro__ if cls in registry), None)


def get_adapter(model: nn.Module) -> type:
    """The adapter class for ``model``: registered (by class, then base classes) or generic sequential."""
    from recbole.model.abstract_recommender import AbstractRecommender, SequentialRecommender

    if not isinstance(model, AbstractRecommender):
        raise TypeError(
            f"attach() takes a RecBole recommender (recbole.model.abstract_recommender.AbstractRecommender), "
            f"got {type(model).__name__}; registered adapters: {list_adapters()}"
        )
    adapter = registered_adapter(type(model))
    if adapter is not None:
        return adapter
    reason = ""
    if isinstance(model, SequentialRecommender) and isinstance(getattr(model, "item_embedding", None), nn.Embedding):
        try:
            GenericSequentialAdapter.check_model(model)
        except TypeError as exc:
            reason = f" The generic sequential adapter does not fit: {exc}."
        else:
            warnings.warn(
                f"{type(model).__name__} has no registered adapter; using the generic sequential adapter "
                "(item embeddings as the ID stream). Register a dedicated one with fusionlayer.register_adapter.",
                stacklevel=3,
            )
            return GenericSequentialAdapter
    raise TypeError(
        f"no adapter for {type(model).__name__}; registered adapters: {list_adapters()}. A sequential model "
        f"with item_embedding and forward(item_seq, item_seq_len) -> (B, H) gets the generic adapter.{reason}"
    )
