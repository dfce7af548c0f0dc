"""Items scored from content alone (``cold_dropout`` or ``cold_regression``, the cold-item policy): which they are,
and what that changes in training and ranking.

With ``attach(..., cold_dropout=0.3, dataset=train_data.dataset)``, :class:`ColdItems` decides:

* which items are cold (``cold_items``): never seen in training (:func:`training_items`) or added later with
  ``fusionlayer.add_items``. Their candidate embedding's ID part is zero, so they are scored from content alone;
  in training a fresh random share of all items loses its ID part for the whole step (DropoutNet), so the content
  path learns to score items without one;
* which items a training step leaves out of its negatives: the cold ones. Used as negatives they would only ever
  be pushed down (no step has them as a positive), and the content path would learn to bury exactly those items.
  A full softmax leaves them out through :class:`_ColdMaskedLoss`; sampled negatives that are cold are redrawn;
* what is added to their scores at ranking (``cold_score_offset``, chosen by ``fusionlayer.calibrate_cold_offset``
  and saved with the model): content alone scores on another scale than an ID embedding does.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fusionlayer.config import AdapterOptions

__all__ = ["ColdItems", "training_items"]


def training_items(dataset: Any, n_items: int) -> torch.Tensor | None:
    """(n_items,) bool: items with at least one interaction in ``dataset`` (None without one): a target,
    or, in a sequential dataset's training cases, an item of a history (a user's first item is never a target)."""
    inter = getattr(dataset, "inter_feat", None)
    if inter is None:
        return None
    fields = [dataset.iid_field]
    history = getattr(dataset, "item_id_list_field", None)
    if history is not None and history in getattr(inter, "columns", ()):
        fields.append(history)
    seen = torch.zeros(n_items, dtype=torch.bool)
    for field in fields:
        ids = torch.as_tensor(inter[field]).long().flatten()
        seen |= torch.bincount(ids, minlength=n_items)[:n_items] > 0
    return seen


class ColdItems(nn.Module):
    """The cold-item policy: flags, hidden ID parts, excluded and redrawn negatives, the score offset.

    ``cold_items`` ((N, 1) bool) is a non-persistent buffer; ``cold_score_offset`` (a scalar) is persistent.
    Methods that act within one entry-point call take the adapter's ``scope`` (its values for that call).

    Args:
        n_items: N, the padding id 0 included.
        options: the adapter's options; ``cold_dropout`` and ``cold_regression`` are read at each use.
        seen: (N,) bool, the items seen in training (:func:`training_items`), or None when unknown.
        stacklevel: where the warning about an unknown training set points, counted from the caller.
    """

    def __init__(self, n_items: int, *, options: AdapterOptions, seen: torch.Tensor | None = None,
                 stacklevel: int = 2) -> None:
        super().__init__()
        self.options = options
        cold = torch.zeros(n_items, dtype=torch.bool)
        if seen is not None:
            cold = ~seen
            cold[0] = False
        elif options.scores_cold_items:
            warnings.warn("cold_dropout or cold_regression is set but attach() got no dataset, so no item is known to be unseen in "
                          "training: such items keep their ID embeddings (never trained as positives) instead of being "
                          "scored from content alone. Pass the training split, attach(..., dataset=train_data.dataset); "
                          "items added with fusionlayer.add_items are scored from content alone either way",
                          UserWarning, stacklevel=stacklevel + 1)
        self.register_buffer("cold_items", cold.unsqueeze(1), persistent=False)
        # added to the scores of items scored from content alone (fusionlayer.calibrate_cold_offset); saved with
        # the model, 0 in a checkpoint from before it existed
        self.register_buffer("cold_score_offset", torch.zeros(()))

    def hidden(self, scope: dict[str, Any] | None) -> torch.Tensor | None:
        """(N, 1) bool: items whose ID embedding is hidden now (None without the cold-item policy): the cold ones,
        and in a training step a fresh ``cold_dropout`` share of all items."""
        if not self.options.scores_cold_items:
            return None
        rate, hidden = self.options.cold_dropout, self.cold_items
        if rate > 0 and self.training and torch.is_grad_enabled():
            key = "cold_draw"  # one draw per entry-point call: every read of the step sees the same items hidden
            if scope is not None and key in scope:
                draw = scope[key]
            else:
                draw = torch.rand(hidden.shape, device=hidden.device) < rate
                if scope is not None:
                    scope[key] = draw
            hidden = hidden | draw
        return hidden

    def id_part(self, base_weight: torch.Tensor, scope: dict[str, Any] | None) -> torch.Tensor:
        """``base_weight`` (N, E) with the rows of :meth:`hidden` items zero."""
        hidden = self.hidden(scope)
        return base_weight if hidden is None else base_weight.masked_fill(hidden, 0.0)

    def excluded(self, scope: dict[str, Any] | None) -> torch.Tensor | None:
        """(N,) bool: items a training step must not use as negatives (None when there are none, outside a
        training loss, and without the cold-item policy). Evaluation ranks every item."""
        if not self.options.scores_cold_items or scope is None or not scope.get("training_loss"):
            return None
        return self.lookup()[0]

    def lookup(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(the cold mask or None when no item is cold, the ids a cold negative is redrawn from), computed
        once per state of ``cold_items`` (kept until the buffer is replaced, moved or edited in place), so
        a training step does not synchronise with the device or scan the catalogue to find them."""
        cached = self._cached()
        return cached[2], cached[3]

    def cold_ids(self) -> torch.Tensor | None:
        """(k,) long: the cold items' ids (None when no item is cold), cached as :meth:`lookup` is."""
        return self._cached()[4]

    def _cached(self) -> tuple:
        cold = self.cold_items  # replaced (add_items, .to()) or edited in place (its _version): recomputed
        cached = self.__dict__.get("_cold_cache")
        if cached is None or cached[0] is not cold or cached[1] != cold._version:
            column, found = cold[:, 0], (None, None, None)
            if bool(column.any()):  # no cold item: nothing to mask, no redraw pool to build
                allowed = torch.nonzero(~column).flatten()
                allowed = allowed[allowed != 0]  # 0 is padding
                found = (column, allowed if allowed.numel() else None, torch.nonzero(column).flatten())
            cached = (cold, cold._version, *found)
            self.__dict__["_cold_cache"] = cached
        return cached

    def redraw_negatives(self, interaction: Any, field: str | None) -> Any:
        """``interaction`` with each sampled negative (its ``field``, RecBole's ``neg_<item_id>``) that is a cold
        item redrawn uniformly from the other items, in a copy: the caller's is untouched. Ids outside the
        catalogue pass through unchanged, for the host model to report."""
        if not self.options.scores_cold_items:
            return interaction
        cold, allowed = self.lookup()
        if cold is None or allowed is None:
            return interaction
        try:
            negatives = interaction[field]
        except (KeyError, TypeError, IndexError, AttributeError):
            return interaction
        if not isinstance(negatives, torch.Tensor) or negatives.is_floating_point() or not negatives.numel():
            return interaction
        cold, allowed = cold.to(negatives.device), allowed.to(negatives.device)
        inside = (negatives >= 0) & (negatives < cold.shape[0])
        hit = cold[negatives.clamp(0, cold.shape[0] - 1)] & inside
        if not bool(hit.any()):  # one synchronisation; a sampler that already avoids cold items draws nothing here
            return interaction
        draw = allowed[torch.randint(allowed.numel(), negatives.shape, device=negatives.device)]
        redrawn = torch.where(hit, draw.to(negatives.dtype), negatives)
        if hasattr(interaction, "interaction") and isinstance(interaction.interaction, dict):  # RecBole's Interaction
            out = copy.copy(interaction)
            out.interaction = {**interaction.interaction, field: redrawn}
            return out
        if isinstance(interaction, Mapping):
            return {**interaction, field: redrawn}
        return interaction

    def offset_scores(self, scores: torch.Tensor, interaction: Any = None, field: str | None = None) -> torch.Tensor:
        """``scores`` with ``cold_score_offset`` added to the cold items' (unchanged while the offset is 0): a
        full-sort ``(..., N)`` without ``interaction``, else one score per item of ``interaction[field]``."""
        offset = self.cold_score_offset
        if not bool(offset):
            return scores
        cold = self.cold_items.reshape(-1).to(device=scores.device, dtype=scores.dtype)
        if interaction is None:
            return (scores.reshape(-1, cold.shape[0]) + offset.to(scores) * cold).reshape(scores.shape)
        items = interaction[field].to(scores.device).long()
        return scores + offset.to(scores) * cold[items].reshape(scores.shape)

    def append(self, n_new: int) -> None:
        """Flag ``n_new`` items added to the catalogue as cold: they have no ID embedding, only content."""
        self.cold_items = torch.cat([self.cold_items, self.cold_items.new_ones(n_new, 1)])


class _ColdMaskedLoss(nn.Module):
    """The host's full-softmax loss (``nn.CrossEntropyLoss``) with some items left out of the softmax: their
    logits set to -inf, unless an item is this batch's target.

    ``excluded`` is called at each loss: it returns an (n_items,) bool mask, or None for "leave nothing out".
    :func:`~fusionlayer.adapters.install.install_adapter` installs it with ``FusionAdapter.excluded_negatives``
    with the cold-item policy on (items never seen in training, during training steps only); ``base`` is the
    original loss, restored by ``detach``. Benchmarks that keep held-out items out of a model's training use it
    with a fixed mask.
    """

    def __init__(self, base: nn.Module, excluded) -> None:
        super().__init__()
        self.base = base
        self.__dict__["_excluded"] = excluded  # a plain callable (may be the adapter's bound method): no module cycle

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        excluded = self._excluded()
        if excluded is None or logits.dim() != 2 or logits.shape[1] != excluded.shape[0] or target.dim() != 1 \
                or target.is_floating_point():
            return self.base(logits, target)
        valid = (target >= 0) & (target < logits.shape[1])  # not ignore_index
        excluded = excluded.to(logits.device).index_fill(0, target[valid], False)  # a target stays a candidate
        base = self.base
        if not base.label_smoothing:  # -inf: a softmax weight (and gradient) of exactly zero
            return base(logits.masked_fill(excluded, float("-inf")), target)
        keep = ~excluded  # label smoothing spreads mass over every class: leave the excluded ones out
        column = keep.cumsum(0) - 1
        target = torch.where(valid, column[target.clamp(0, logits.shape[1] - 1)], target)
        weight = None if base.weight is None else base.weight[keep]
        return F.cross_entropy(logits[:, keep], target, weight=weight, ignore_index=base.ignore_index,
                               reduction=base.reduction, label_smoothing=base.label_smoothing)
