"""Installing an adapter on a RecBole model and removing it again (PEFT's inject / unload, condensed).

:func:`install_adapter` changes the model in place, and :func:`uninstall_adapter` restores exactly what it changed:

* ``model.fusion_adapter``: the adapter, a child module (its weights join the model's parameters and checkpoints);
* each wrapped candidate embedding ``model.<name>`` becomes a :class:`ContentEmbedding` around the original
  (``base_layer``), whose rows and ``weight`` add the item's content part (the adapter's ``fused_rows`` and
  ``fused_weight``);
* each method the adapter overrides (``overrides``) is replaced on the model instance by the adapter's
  ``fused_<name>``, the original kept as ``adapter.base_<name>``;
* each entry point (``forward``, ``calculate_loss``, ``predict``, ``full_sort_predict``) runs as a
  :class:`_Scoped` call: one scope of shared values per call, and what the adapter does around the call;
* with ``cold_dropout`` or ``cold_regression``, a full-softmax ``loss_fct`` is wrapped to leave cold items out of the negatives.
"""

from __future__ import annotations

import functools
import types
import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

from fusionlayer.adapters.cold import _ColdMaskedLoss

if TYPE_CHECKING:
    from fusionlayer.adapters.base import FusionAdapter

__all__ = ["ContentEmbedding", "install_adapter", "uninstall_adapter"]


class ContentEmbedding(nn.Module):
    """An ``nn.Embedding`` stand-in whose rows add the item's fused content features.

    Keeps what host code reads: ``weight``, ``num_embeddings``, ``embedding_dim``, ``padding_idx``.

    Args:
        base_layer: the original embedding (kept, reachable as ``base_layer``).
        adapter: the owning adapter (not registered as a child: it is ``model.fusion_adapter``).
        name: the embedding's attribute name on the model (selects ``adapter.item_out[name]``).
    """

    def __init__(self, base_layer: nn.Embedding, adapter: "FusionAdapter", name: str) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.__dict__["_adapter"] = adapter  # plain reference: no module cycle, no duplicate state
        self.adapter_key = name

    @property
    def weight(self) -> torch.Tensor:
        return self._adapter.fused_weight(self.adapter_key, self.base_layer.weight)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # A plain model's key (``item_embedding.weight``) is the base layer's: a plain checkpoint
        # loaded into an attached model (``strict=False``) keeps its item embeddings, not silently drops them.
        plain, wrapped = prefix + "weight", prefix + "base_layer.weight"
        if plain in state_dict and wrapped not in state_dict:
            state_dict[wrapped] = state_dict.pop(plain)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        saved, rows = state_dict.get(wrapped), self.base_layer.num_embeddings
        if isinstance(saved, torch.Tensor) and saved.dim() == 2 and saved.shape[0] > rows:
            error_msgs.append(f"the checkpoint holds {saved.shape[0] - rows} more items than this model ({saved.shape[0]} "
                              f"rows in {wrapped}, {rows} here): items added with fusionlayer.add_items; add the same "
                              "items again (add_items with their features and tokens, in the same order) before loading")

    @property
    def num_embeddings(self) -> int:
        return self.base_layer.num_embeddings

    @property
    def embedding_dim(self) -> int:
        return self.base_layer.embedding_dim

    @property
    def padding_idx(self) -> int | None:
        return self.base_layer.padding_idx

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self._adapter.fused_rows(self.adapter_key, self.base_layer, ids)


class _Scoped:
    """A model entry point run inside the adapter's call scope (one projection per call), with what the adapter
    does around it: before a training loss, the check that the optimiser holds the fusion weights and the redraw
    of cold negatives, and with ``backbone_loss`` the backbone's own loss added (a second pass with the fusion off);
    after ``predict`` and ``full_sort_predict``, the cold items' score offset.

    A plain class rather than a closure, so an attached model can be deep-copied and pickled.
    """

    def __init__(self, adapter: "FusionAdapter", function, name: str) -> None:
        self.adapter, self.function, self.name = adapter, function, name
        self.training_calls = 0

    def __call__(self, *args, **kwargs):
        adapter = self.adapter
        if adapter._scope is not None:
            return self.function(*args, **kwargs)
        training_loss = self.name == "calculate_loss" and adapter.training and torch.is_grad_enabled()
        if training_loss:
            self.check_training()
            if args:
                args = (adapter.redraw_cold_negatives(args[0]), *args[1:])
        adapter._scope = {"training_loss": True} if training_loss else {}
        try:
            out = self.function(*args, **kwargs)
            if training_loss and args:
                out = out + adapter.extra_losses(args[0])
            weight = adapter.options.backbone_loss
            if training_loss and weight > 0:  # the same step with the fusion off: the backbone's own loss
                adapter._scope = {"training_loss": True, "backbone_only": True}
                out = out + weight * self.function(*args, **kwargs)
        finally:
            adapter._scope = None
        if self.name == "full_sort_predict" and args:
            return adapter.cold.offset_scores(out)
        if self.name == "predict" and args:
            return adapter.cold.offset_scores(out, args[0], getattr(adapter.model, "ITEM_ID", None))
        return out

    def check_training(self) -> None:
        """Warn once if, by the third training step, the zero-initialised outputs are all still zero:
        the optimiser does not hold the fusion parameters (a Trainer built before ``attach``)."""
        self.training_calls += 1
        if self.training_calls != 3:
            return
        adapter = self.adapter
        outputs = [m.weight for m in [adapter.user_out, *adapter.item_out.values()] if m is not None]
        if outputs and all(w.requires_grad for w in outputs) and not any(bool(w.detach().any()) for w in outputs):
            warnings.warn(
                "the fusion's output weights are still exactly zero after 2 training steps: the optimiser does not "
                "update them. Build RecBole's Trainer (or your optimiser) after fusionlayer.attach(model, ...), "
                "so that it holds the fusion parameters.", UserWarning, stacklevel=4)


def _unbound(model: nn.Module, name: str):
    """``model.<name>`` as ``partial(Class.<name>, model)`` when it is the class's own method.

    A bound method pickles as ``getattr(model, name)``, which after attach would find the override.
    """
    method = getattr(model, name)
    if isinstance(method, types.MethodType) and method.__self__ is model:
        return functools.partial(method.__func__, model)
    return method


def install_adapter(adapter: "FusionAdapter", model: nn.Module) -> None:
    """Install ``adapter`` on ``model``, in place (see the module docstring)."""
    adapter._model_ref.append(model)
    if adapter.options.content_init:
        adapter.init_from_content(model)
    model.add_module("fusion_adapter", adapter)
    for name in adapter.wrapped:
        setattr(model, name, ContentEmbedding(getattr(model, name), adapter, name))
    for name in adapter.overrides:
        setattr(adapter, f"base_{name}", _unbound(model, name))  # the original class's method
        model.__dict__[name] = types.MethodType(getattr(type(adapter), f"fused_{name}"), adapter)
    for name in adapter.entry_points:
        if callable(getattr(model, name, None)):
            model.__dict__[name] = _Scoped(adapter, model.__dict__.get(name) or _unbound(model, name), name)
    if adapter.options.scores_cold_items and isinstance(getattr(model, "loss_fct", None), nn.CrossEntropyLoss):
        model.loss_fct = _ColdMaskedLoss(model.loss_fct, adapter.excluded_negatives)
    adapter.train(model.training)  # a model attached in eval mode stays in eval mode


def uninstall_adapter(adapter: "FusionAdapter", model: nn.Module) -> None:
    """Undo :func:`install_adapter`: the model's own modules and methods come back."""
    for name in {*adapter.overrides, *adapter.entry_points}:
        model.__dict__.pop(name, None)
    for name in adapter.wrapped:
        setattr(model, name, getattr(model, name).base_layer)
    if isinstance(getattr(model, "loss_fct", None), _ColdMaskedLoss):
        model.loss_fct = model.loss_fct.base
    del model._modules["fusion_adapter"]
    adapter._model_ref.clear()
