"""attach / detach: bolt a fusion layer onto a RecBole model in place, PEFT-style.

``attach`` validates everything first (a failed call leaves the model untouched), then installs an
adapter from the registry (``fusionlayer.adapters.registry``, keyed by model class, see :func:`list_adapters`) as
``model.fusion_adapter``, swaps the candidate embeddings for content-aware wrappers and overrides
the methods that build the user/sequence vector. Fresh output gates are zero, so the attached model
scores exactly like the base model until it trains. ``detach`` restores the original modules.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections import Counter
from typing import Any, Mapping

import torch
from torch import nn

from fusionlayer.adapters.registry import get_adapter, list_adapters, register_adapter
from fusionlayer.config import AdapterOptions
from fusionlayer.encoders.cache import CachedFeatures
from fusionlayer.features import as_feature_tables


__all__ = ["attach", "calibrate_cold_offset", "detach", "register_adapter", "list_adapters", "get_adapter", "count_parameters",
           "fusion_state_dict", "load_fusion_state_dict", "backbone_state_dict", "load_backbone_state_dict", "is_attached",
           "add_items"]

def is_attached(model: nn.Module) -> bool:
    return isinstance(getattr(model, "_modules", {}).get("fusion_adapter"), nn.Module)


def attach(model: nn.Module, features: Mapping[str, Any], *, dataset: Any = None, freeze_backbone: bool = False,
           **fusion_options) -> nn.Module:
    """Bolt a multi-modal fusion layer onto ``model``, in place; returns the same object.

    Args:
        model: a RecBole model (SASRec, GRU4Rec, FPMC, BPR, or a sequential model with the same
            contract as SASRec).
        features: ``{modality: (model.n_items, D)}`` tensors, arrays or aligned feature-store objects,
            one row per RecBole internal item id (row 0 = padding id).
        dataset: the training dataset (``train_data.dataset``); required for BPR, whose batches carry
            no history.
        freeze_backbone: train only the fusion parameters.
        **fusion_options: :class:`~fusionlayer.AdapterOptions` fields: the history fusion's
            ``hidden_size``, ``num_layers``, ``dropout``, ... and the adapter's ``output_dropout``,
            ``output_scale``, ``side``, ``cold_dropout``, ``cold_regression``, ``reduce_features``, ... (all of them:
            :class:`~fusionlayer.AdapterOptions`); unset ones take the
            backbone adapter's defaults.

    Raises:
        TypeError: not a RecBole model, or no adapter fits. ValueError: already attached, bad features
        (row count, NaN/Inf), missing ``dataset`` for BPR, unknown or invalid options (the message lists
        the valid ones).
    """
    if is_attached(model):
        raise ValueError(f"{type(model).__name__} already has a fusion layer attached; call fusionlayer.detach(model) first")
    adapter_class = get_adapter(model)
    if not hasattr(model, "n_items"):
        raise TypeError(f"{type(model).__name__} has no n_items; attach() needs a RecBole model built on a dataset")
    tables = as_feature_tables(features, model.n_items, dtype=None)  # the adapter reads them (in chunks if reduced)
    if not tables:
        raise ValueError("features is empty; give at least one modality, e.g. {'text': T}")
    if "id" in tables:
        raise ValueError("the modality name 'id' is reserved for the item-ID stream; rename that feature table")
    options = AdapterOptions.from_options(fusion_options, adapter_class.default_options)
    adapter_class.check_model(model, dataset=dataset, options=options)
    adapter = adapter_class(model, tables, options=options, dataset=dataset)  # changes nothing yet
    reference = next(model.parameters())
    adapter.to(device=reference.device, dtype=reference.dtype)  # float tensors only; ids stay int
    adapter.frozen = {}
    if freeze_backbone:
        adapter.frozen = {name: p.requires_grad for name, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
    adapter.install(model)
    adapter.items_at_attach = int(model.n_items)  # detach says what add_items left behind
    return model


def detach(model: nn.Module) -> nn.Module:
    """Remove the fusion layer; the original modules, methods and ``requires_grad`` flags come back.

    Items added with :func:`add_items` stay in the catalogue (their ID embedding rows are kept, so nothing
    trained since is lost), with a warning: the plain model scores them from those rows alone.
    """
    if not is_attached(model):
        raise ValueError(f"{type(model).__name__} has no fusion layer attached; nothing to detach")
    adapter = model.fusion_adapter
    first = getattr(adapter, "items_at_attach", None)
    added = int(model.n_items) - first if first is not None else 0
    adapter.uninstall(model)
    for name, p in model.named_parameters():
        if name in adapter.frozen:
            p.requires_grad_(adapter.frozen[name])
    if added > 0:
        warnings.warn(f"{added} items added with fusionlayer.add_items (ids {first}..{first + added - 1}) stay in the "
                      f"detached {type(model).__name__}'s catalogue with their ID embedding rows only (zero unless trained "
                      "since): without the fusion it cannot score them from their content", UserWarning, stacklevel=2)
    return model


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``{"trainable", "total", "fusion"}`` parameter counts."""
    params = list(model.parameters())
    fusion = sum(p.numel() for p in model.fusion_adapter.parameters()) if is_attached(model) else 0
    return {"trainable": sum(p.numel() for p in params if p.requires_grad),
            "total": sum(p.numel() for p in params), "fusion": fusion}


def fusion_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the fusion weights (no backbone, no feature tables)."""
    if not is_attached(model):
        raise ValueError(f"{type(model).__name__} has no fusion layer attached")
    return {k: v.detach().clone() for k, v in model.fusion_adapter.state_dict().items()}


def load_fusion_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load weights saved by :func:`fusion_state_dict` into an attached model (strict)."""
    if not is_attached(model):
        raise ValueError(f"attach a fusion layer to {type(model).__name__} before loading fusion weights")
    model.fusion_adapter.load_state_dict(state_dict, strict=True)
    return model


def _wrapped_names(model: nn.Module) -> list[str]:
    return list(model.fusion_adapter.wrapped) if is_attached(model) else []


def backbone_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's own weights under the plain model's key names (fusion weights left out).

    What a detached model would hold: save it (or put it in a RecBole checkpoint's ``state_dict``)
    and a plain model of the same class loads it, e.g. through RecBole's ``load_data_and_model``.
    """
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("fusion_adapter.")}
    for name in _wrapped_names(model):
        state[f"{name}.weight"] = state.pop(f"{name}.base_layer.weight")
    return state


def load_backbone_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load a plain model's weights (a checkpoint saved before ``attach``) into an attached model (strict).

    The fusion keeps its own weights: fine-tune fusion on a plain checkpoint by building the model,
    attaching, loading the plain weights with this function, then training (``freeze_backbone=True``
    to train the fusion alone).
    """
    state = dict(state_dict)
    for name in _wrapped_names(model):
        key = f"{name}.weight"
        if key in state:
            state[f"{name}.base_layer.weight"] = state.pop(key)
    fusion = {k: v for k, v in model.state_dict().items() if k.startswith("fusion_adapter.")}
    unexpected = sorted(k for k in state if k.startswith("fusion_adapter."))
    if unexpected:
        raise ValueError(f"state_dict holds fusion weights ({unexpected[:3]}...): it is an attached model's; load it "
                         "with model.load_state_dict(...) directly, or the fusion part with load_fusion_state_dict")
    missing, extra = model.load_state_dict({**state, **fusion}, strict=False)
    if missing or extra:
        raise ValueError(f"state_dict does not fit {type(model).__name__}: missing {missing[:5]}, unexpected "
                         f"{extra[:5]}; pass the state_dict of a plain {type(model).__name__} built on the same dataset")
    return model


# Longer than 60 lines on purpose: every check runs before the first change, then the change runs in one
# place, so a failed call leaves the model untouched (attach()'s contract); split, that order is harder to see.
def add_items(model: nn.Module, features: Mapping[str, Any], tokens: list[str], *,
              optimizer: torch.optim.Optimizer | None = None) -> list[int]:
    """Add items to an attached model without retraining; returns their internal ids (``n_items`` onwards).

    The new items have no ID embedding (zero rows) and are scored from their content alone, in
    ``full_sort_predict`` (new columns at the end) and ``predict``; existing items' scores do not change, bit for
    bit: work over the item axis runs in blocks (the attach-time items, then each call's), so no item's value
    depends on how many were added after it (a model under the generic sequential adapter keeps its own
    ``full_sort_predict``, whose single matmul may round old scores differently in the last bit).
    Train with ``attach(..., cold_dropout=0.3)`` (or similar) so that content alone scores well.

    The ID embeddings gain rows in place (the same Parameter objects). To go on training with an optimizer
    built before this call, pass it as ``optimizer``: its per-parameter state (Adam's moments, SGD's
    momentum) gains zero rows for the new items. An optimizer holding the old shapes that was not passed
    here refuses its next ``step()`` with an error that says so (instead of a shape error inside torch).

    Args:
        model: an attached model.
        features: ``{modality: (len(tokens), D)}`` rows for exactly the modalities the model was attached
            with (float, finite), or ``{modality: CachedFeatures}``: a feature-cache entry (what
            ``fusionlayer.encoders.encode_items`` returns once the new items are encoded), whose rows are
            looked up by token.
        tokens: the new items' tokens (unique; none may already be in the model's dataset).
        optimizer: optional optimizer over the model's parameters whose state should follow the new rows.

    Raises:
        ValueError: not attached, attached with ``side="history"``, empty/duplicate/existing tokens, wrong
            modalities, rows or widths, NaN/Inf.
        TypeError: ``optimizer`` is not a ``torch.optim.Optimizer``.
    """
    if not is_attached(model):
        raise ValueError(f"{type(model).__name__} has no fusion layer attached; attach(model, features) first")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer (the one training this model), got {type(optimizer).__name__}")
    adapter = model.fusion_adapter
    if not adapter.wrapped:
        raise ValueError(f"{type(model).__name__} was attached with side={adapter.options.side!r}: candidate items get no "
                         "content, so added items (which have no ID embedding) would all score the same. Attach with "
                         "side='both' (the default) or side='candidate' to score new items from their content")
    tokens = list(tokens) if not isinstance(tokens, str) else [tokens]
    if not tokens:
        raise ValueError("tokens is empty; give one token per new item")
    blank = [i for i, t in enumerate(tokens) if t is None or not str(t).strip()]
    if blank:
        raise ValueError(f"tokens at positions {blank[:5]} are None or blank ({tokens[blank[0]]!r}); every new item "
                         "needs a token (its item_id in the dataset's .item file), which is how it is found later")
    tokens = [str(t) for t in tokens]
    if isinstance(features, Mapping):  # a feature-cache entry serves the new tokens' rows itself
        features = {name: value.rows(tokens) if isinstance(value, CachedFeatures) else value
                    for name, value in features.items()}
    repeated = sorted(t for t, n in Counter(tokens).items() if n > 1)
    if repeated:
        raise ValueError(f"duplicate tokens {repeated[:5]}; each new item needs a unique token")
    existing = sorted(set(tokens) & set(adapter.item_tokens or []))
    if existing:
        raise ValueError(f"tokens {existing[:5]} already exist in the model's catalogue; add only new items")
    widths = dict(adapter.feature_dims)
    shapes = {name: tuple(getattr(getattr(value, "features", value), "shape", (None,))) for name, value in features.items()} \
        if isinstance(features, Mapping) else {}
    vectors = {name: shape for name, shape in shapes.items() if len(shape) == 1 and shape != (None,)}
    if vectors:
        raise ValueError(f"features {vectors} are single vectors; give a (len(tokens), D) matrix per modality, one row "
                         f"per new item (for one item: row[None] or row.reshape(1, -1))")
    wrong = {name: shape[0] for name, shape in shapes.items() if shape[0] != len(tokens)}
    if wrong:
        raise ValueError(f"features have {wrong} rows for {len(tokens)} tokens; give one row per new item")
    tables = as_feature_tables(features, len(tokens), expected_dims=widths, row_labels=tokens)
    empty = torch.stack([(t != 0).any(dim=1).cpu() for t in tables.values()]).any(dim=0).logical_not()
    if empty.any():
        warnings.warn(f"{int(empty.sum())} of {len(tokens)} added items have all-zero features in every modality "
                      f"(zero means 'missing'; tokens {[tokens[i] for i in torch.nonzero(empty).flatten()[:5].tolist()]}): "
                      "with no ID embedding either, they score the same for every user. Encode their text or "
                      "images first (fusionlayer.encoders.encode_items)", UserWarning, stacklevel=2)
    grown: list[torch.Tensor] = []
    ids = adapter.add_items(tables, tokens, grown)
    for param in grown:
        _remember_grown(param)
        if optimizer is not None:
            _grow_optimizer_state(optimizer, param)
    _install_stale_state_check()
    return ids


# Parameters that add_items grew (weakly held), and one global optimizer pre-step check over them.
# Keyed by id (a WeakKeyDictionary compares keys with ==, which for tensors is elementwise), dropped when
# the parameter is collected.
_GROWN: "dict[int, weakref.ref]" = {}


@torch.no_grad()
# Longer than 60 lines on purpose: checks, then the validation pass, then the choice, with the previous offset
# restored on any error in one try block; split, the restore would have to span several functions.
def calibrate_cold_offset(model: nn.Module, valid_data: Any, *, max_warm_loss: float = 0.02,
                          grid: tuple[float, ...] | None = None) -> dict[str, Any]:
    """Choose, on validation, a constant added to the scores of items scored from content alone, and set it.

    Items with no ID embedding (unseen in training, or added with :func:`add_items`) are scored from their
    content alone, on another scale than items with an ID embedding: content can order the new items well
    among themselves and still leave every one of them below the known items. This picks the offset that
    gives ``valid_data``'s cases whose target is such an item the highest NDCG@10 (full ranking), among the
    offsets that cost the other cases at most ``max_warm_loss`` (relative) of their NDCG@10, and stores it on
    the model (``fusion_adapter.cold_score_offset``, saved with its state dict): ``predict`` and
    ``full_sort_predict`` add it from then on. Calling it again re-chooses from no offset.

    Args:
        model: a model attached with ``cold_dropout > 0`` or ``cold_regression > 0`` (trained; the offset is chosen in eval mode).
        valid_data: RecBole's full-sort validation dataloader (batches of ``(interaction, history_index,
            positive_u, positive_i)``), whose cases include targets that are cold items.
        max_warm_loss: the largest relative NDCG@10 loss allowed on the other cases, in [0, 1).
        grid: candidate offsets in units of the validation scores' std (default
            ``fusionlayer.evaluation.OFFSET_GRID``: 0 to 8 in steps of 0.25).

    Returns:
        ``{"offset", "offset_in_std", "before", "after"}``: the offset set, and the validation NDCG@10, Hit@10
        and case counts of the cold and the warm targets without and with it.

    Raises:
        ValueError: not attached, attached without ``cold_dropout`` or ``cold_regression``, no item flagged cold, no validation case
            with a cold target, target ids outside the model's items, ``max_warm_loss`` outside [0, 1), a
            ``grid`` that is empty or not finite.
        TypeError: ``valid_data`` does not yield full-sort evaluation batches.
    """
    from fusionlayer.evaluation import OFFSET_GRID, case_scores, choose_cold_offset

    if not is_attached(model):
        raise ValueError(f"{type(model).__name__} has no fusion layer attached; attach(model, features, "
                         "cold_dropout=0.3, dataset=...) and train it first")
    adapter = model.fusion_adapter
    if not adapter.options.scores_cold_items:
        raise ValueError(f"calibrate_cold_offset needs a model attached with cold_dropout > 0 or cold_regression > 0, "
                         f"got cold_dropout={adapter.options.cold_dropout}, cold_regression="
                         f"{adapter.options.cold_regression}: without either, items unseen in training keep their (untrained) "
                         "ID embeddings and are not scored from content alone")
    if not isinstance(max_warm_loss, (int, float)) or isinstance(max_warm_loss, bool) or not 0 <= max_warm_loss < 1:
        raise ValueError(f"max_warm_loss must be a number in [0, 1) (a relative NDCG@10 loss), got {max_warm_loss!r}")
    grid = OFFSET_GRID if grid is None else tuple(grid)
    if not grid or not all(isinstance(k, (int, float)) and not isinstance(k, bool) and math.isfinite(k) for k in grid):
        raise ValueError(f"grid must hold finite numbers (offsets in units of the validation scores' std), got {grid!r}")
    cold = adapter.cold_items.reshape(-1).cpu()
    if not bool(cold.any()):
        raise ValueError("no item is scored from content alone (none was unseen in the training dataset given to "
                         "attach(..., dataset=...), none added with add_items): there is nothing to calibrate")
    was_training, previous = model.training, adapter.cold_score_offset.clone()
    model.eval()
    adapter.cold_score_offset.zero_()  # choose from the uncalibrated scores
    try:
        try:
            scores, targets, _ = case_scores(model, valid_data, previous.device)
        except TypeError as exc:
            raise TypeError(f"valid_data: {exc}") from None
        if len(targets) and (int(targets.min()) < 1 or int(targets.max()) >= len(cold)):
            raise ValueError(f"valid_data's target items run from id {int(targets.min())} to {int(targets.max())}, but "
                             f"this model scores ids 1..{len(cold) - 1}: pass the validation loader built on the "
                             "model's own dataset")
        if not bool(cold[targets].any()):
            raise ValueError(f"none of valid_data's {len(targets)} cases has a target scored from content alone: "
                             "the offset would be chosen blind; validate on cases that include new or unseen items")
        choice = choose_cold_offset(scores, targets, cold, max_warm_loss=float(max_warm_loss), grid=grid)
    except BaseException:
        adapter.cold_score_offset.copy_(previous)
        raise
    finally:
        model.train(was_training)
    adapter.cold_score_offset.fill_(choice["offset"])
    adapter.clear_cache()
    return choice


def _remember_grown(param: torch.Tensor) -> None:
    key = id(param)
    if key not in _GROWN or _GROWN[key]() is not param:
        _GROWN[key] = weakref.ref(param, lambda _, key=key: _GROWN.pop(key, None))


_STALE_CHECK: list = []


def _grow_optimizer_state(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> None:
    """Pad every per-parameter state tensor shaped like the old ``param`` (Adam's moments, momentum) with zero rows."""
    state = optimizer.state.get(param)
    if not state:
        return
    for key, value in list(state.items()):
        if isinstance(value, torch.Tensor) and value.dim() == param.dim() >= 1 and value.shape[1:] == param.shape[1:] \
                and value.shape[0] < param.shape[0]:
            state[key] = torch.cat([value, value.new_zeros(param.shape[0] - value.shape[0], *value.shape[1:])])


def _check_stale_state(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    for param in [ref() for ref in list(_GROWN.values())]:
        if param is None:
            continue
        state = optimizer.state.get(param)
        if not state:
            continue
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape != param.shape \
                    and value.shape[1:] == param.shape[1:]:
                raise ValueError(
                    f"{type(optimizer).__name__}'s state {key!r} has {value.shape[0]} rows for a parameter that "
                    f"fusionlayer.add_items grew to {param.shape[0]} rows; pass the optimizer to add_items "
                    "(add_items(model, features, tokens, optimizer=opt)) or build a new optimizer after adding items")


def _install_stale_state_check() -> None:
    if not _STALE_CHECK:
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        _STALE_CHECK.append(register_optimizer_step_pre_hook(_check_stale_state))
