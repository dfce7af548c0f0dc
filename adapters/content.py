"""The items' content: the frozen feature tables, their projection, and the cache of what is computed from them.

:class:`ItemContent` holds, one row per item (row 0 is RecBole's padding id), as non-persistent buffers (they
move with ``model.to(device)`` and stay out of checkpoints):

* ``normed_<modality>``: the feature table after the parameter-free part of LayerNorm, computed once at attach
  time (the LayerNorm's affine part folds into the projection after it); with ``reduce_features`` the table is
  first reduced to ``(N, r)`` by ``basis_<modality>``, kept for the items added later;
* ``item_present``: (N, 1) bool, whether the item has any content (a zero row means "missing").

From them it computes the projected tables (through the fusion's input projections) and the items' content
vectors, for the whole catalogue or at some rows only, block by block (:meth:`ItemContent.item_blocks`): items
added later (:meth:`ItemContent.append`) never change an existing item's value.

Work done once: within one call of an entry point (``forward``, ``calculate_loss``, ``predict``,
``full_sort_predict``) the projected tables and the items' content vectors are computed once however often the
host model reads ``item_embedding.weight``; the adapter's scoped entry points set ``scope``, the call's values.

Inference cache: in eval mode with autograd off (``model.eval()`` and ``torch.no_grad()``, as in RecBole's
evaluation), those values are also kept across calls (``memo``). The cache is dropped by ``model.train()``, by any
call with autograd on (every training step runs one before its optimiser step, which matters for fused optimisers:
they do not bump version counters), and whenever a tensor it was computed from changes storage or in-place version
(``load_state_dict``, ``.to()``, in-place edits). Edits through ``.data`` bypass all of these: call
``model.fusion_adapter.clear_cache()`` after them. With autograd on nothing is kept across calls (a cached graph
could be back-propagated twice).

Checking the stamp is the only work a cache hit does, so it must cost little beside a batch-1 prediction:
:func:`module_tensors` lists a module's parameters and buffers from a kept list of its submodules (walking the
module tree on every call cost BPR's batch-1 prediction half its time), read afresh from each submodule's own
dicts, so a tensor replaced by ``.to()`` or ``load_state_dict(..., assign=True)`` is seen. The list is rebuilt
whenever any module in the process registers a submodule (torch's global registration hook).
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fusionlayer.config import AdapterOptions
from fusionlayer.fusion import FeatureFusionLayer
from fusionlayer.reduction import normalize_rows, reduce_table, reduce_tables, row_chunks

_structure = [0]  # bumped whenever any module registers a submodule: kept submodule lists are then rebuilt
_submodules: "weakref.WeakKeyDictionary[nn.Module, tuple[int, list[nn.Module]]]" = weakref.WeakKeyDictionary()


def _module_registered(module, name, submodule) -> None:
    _structure[0] += 1


nn.modules.module.register_module_module_registration_hook(_module_registered)


def module_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer of ``module`` and its submodules, as ``[*module.parameters(), *module.buffers()]``
    holds them (order aside), without walking the module tree on each call (the inference cache's stamp)."""
    kept = _submodules.get(module)
    if kept is None or kept[0] != _structure[0]:
        kept = (_structure[0], list(module.modules()))
        _submodules[module] = kept
    return [t for m in kept[1] for group in (m._parameters, m._buffers) for t in group.values() if t is not None]

__all__ = ["ItemContent", "prepare_tables"]


def prepare_tables(tables: Mapping[str, torch.Tensor], options: AdapterOptions, *, stacklevel: int = 2
                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """``(normalised tables, reduction bases, (N,) presence flags)`` from validated ``{modality: (N, D)}`` tables.

    Tables are read in row chunks; the caller's memory is never written. Warns (at ``stacklevel``, counted from
    the caller) about modalities that are zero for every item and about very large unreduced tables.
    """
    given = {t.data_ptr() for t in tables.values()}  # the caller's memory: never written
    present = torch.zeros(next(iter(tables.values())).shape[0], dtype=torch.bool)
    empty = []
    for name, table in tables.items():
        rows_present = 0
        for start, rows in row_chunks(table):
            nonzero = (rows != 0).any(dim=1).cpu()
            present[start:start + len(rows)] |= nonzero
            rows_present += int(nonzero[1 if start == 0 else 0:].sum())
        if rows_present == 0:
            empty.append(name)
    if empty:
        warnings.warn(f"features {empty} are zero for every item (a zero row means 'missing'): "
                      f"{'the fusion has no content to add' if len(empty) == len(tables) else 'those modalities add nothing'}; "
                      "check that the features were aligned to this dataset (FeatureStore.align logs how many "
                      "items have no cached row)", UserWarning, stacklevel=stacklevel + 1)
    present[0] = False  # RecBole's padding id
    bases: dict[str, torch.Tensor] = {}
    if options.reduce_features:  # large catalogues: (N, D) -> (N, r) once, in row chunks
        tables, bases = reduce_tables(tables, options.reduce_features, options.layer_norm_eps)
    else:  # kept as given: normalize_rows below writes each one, chunk by chunk, into float32
        size = sum(t.numel() for t in tables.values()) * 4
        if size > 4 * 2**30:
            warnings.warn(f"the normalised feature tables take {size / 2**30:.1f} GiB of float32 memory; for a "
                          f"catalogue this large pass reduce_features=64 (tables read in chunks, {64 * 4} bytes "
                          f"per item and modality)", UserWarning, stacklevel=stacklevel + 1)
    normed = {name: normalize_rows(table, options.layer_norm_eps, in_place=table.data_ptr() not in given)
              for name, table in tables.items()}  # constant: normalised once (in place, by rows, where we own it)
    return normed, bases, present


class ItemContent(nn.Module):
    """The items' frozen content tables, what the fusion's input projections make of them, and the call cache.

    Args:
        normed: ``{modality: (N, D_m)}`` normalised tables (:func:`prepare_tables`).
        present: (N,) bool, whether each item has any content.
        fusion: the adapter's fusion layer, whose input projections (``project_normalized_tables``) and
            normalisation this reads; a plain reference, not a child (its weights are the adapter's).
        bases: ``{modality: (D, r)}`` reduction bases, for the modalities that were reduced.
        feature_dims: ``{modality: D}`` as given at attach (the widths items added later must have).
        layer_norm_eps: the fusion's LayerNorm epsilon (to reduce the rows of items added later).
    """

    def __init__(self, normed: Mapping[str, torch.Tensor], present: torch.Tensor, *, fusion: FeatureFusionLayer,
                 bases: Mapping[str, torch.Tensor] | None = None, feature_dims: Mapping[str, int] | None = None,
                 layer_norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.__dict__["fusion"] = fusion  # plain reference: the adapter registers it
        self.modalities = list(normed)
        self.feature_dims = dict(feature_dims or {name: int(t.shape[1]) for name, t in normed.items()})
        self.layer_norm_eps = layer_norm_eps
        self.register_buffer("item_present", present.reshape(-1, 1), persistent=False)
        for name, basis in (bases or {}).items():
            self.register_buffer(f"basis_{name}", basis, persistent=False)
        for name, table in normed.items():
            self.register_buffer(f"normed_{name}", table, persistent=False)
        self.block_starts = [0]  # the first row of the attach-time items and of each append's (item_blocks)
        self.scope: dict[str, Any] | None = None  # values shared within one entry-point call (module docstring)
        self.memo: dict[str, tuple[tuple, Any]] = {}  # the inference cache (module docstring)

    def normalized_tables(self) -> dict[str, torch.Tensor]:
        """``{modality: (N, D)}``: the feature tables after the parameter-free part of LayerNorm."""
        return {name: getattr(self, f"normed_{name}") for name in self.modalities}

    # ---------------------------------------------------------------- the call cache
    def inputs(self) -> list[torch.Tensor]:
        """The tensors the projected tables and the content vectors are computed from (the cache's stamp)."""
        return [*self.normalized_tables().values(), self.item_present,
                *(p for name in self.modalities for p in module_tensors(self.fusion.projections[name]))]

    def caching(self) -> bool:
        """Inference (eval mode, autograd off): values may be kept across calls (the inference cache)."""
        return not (torch.is_grad_enabled() or self.training)

    def memoised(self, key: str, inputs: list[torch.Tensor], compute: Callable[[], Any]) -> Any:
        """``compute()``, once per entry-point call; in eval mode with autograd off, across calls too
        while none of ``inputs`` has changed storage or version."""
        scope = self.scope
        if scope is not None and key in scope:
            return scope[key]
        if not self.caching():
            self.memo.clear()
            value = compute()
        else:
            stamp = tuple((t.data_ptr(), t._version, t.dtype) for t in inputs)
            hit = self.memo.get(key)
            if hit is not None and hit[0] == stamp:
                value = hit[1]
            else:
                value = compute()
                self.memo[key] = (stamp, value)
        if scope is not None:
            scope[key] = value
        return value

    def clear_cache(self) -> None:
        """Drop the inference cache (see the module docstring for when this happens by itself)."""
        self.memo.clear()

    def train(self, mode: bool = True) -> "ItemContent":
        if mode:
            self.clear_cache()
        return super().train(mode)

    # ---------------------------------------------------------------- blocks of items
    def item_blocks(self, n_items: int) -> list[slice]:
        """The rows to compute separately: all of them, or once items were added after attach, the attach-time
        items and those of each ``add_items`` call. Work over an item axis (projections, scores) runs block by
        block, so adding items never changes an existing item's value: one matmul over more rows or columns
        may round differently."""
        starts = [start for start in self.block_starts if start < n_items]
        if len(starts) == 1:
            return [slice(None)]
        return [slice(start, end) for start, end in zip(starts, [*starts[1:], n_items])]

    def by_item_blocks(self, compute: Callable[[slice], Any], n_items: int, dim: int = 0) -> Any:
        """``compute(block)`` for each of :meth:`item_blocks`, concatenated along ``dim`` (no copy for one block);
        a ``{name: tensor}`` result is concatenated per name."""
        parts = [compute(block) for block in self.item_blocks(n_items)]
        if len(parts) == 1:
            return parts[0]
        if isinstance(parts[0], Mapping):
            return {name: torch.cat([part[name] for part in parts], dim=dim) for name in parts[0]}
        return torch.cat(parts, dim=dim)

    def score_items(self, query: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``torch.matmul(query, weight.T)``, RecBole's full-sort scoring, over :meth:`item_blocks` of ``weight``:
        ``(..., E) x (n_items, E) -> (..., n_items)``, old items' scores bit for bit after ``add_items``."""
        return self.by_item_blocks(lambda block: torch.matmul(query, weight[block].transpose(0, 1)),
                                   weight.shape[0], dim=-1)

    # ---------------------------------------------------------------- projections and content vectors
    def projected_tables(self) -> dict[str, torch.Tensor]:
        """``{modality: (N, H)}``: the content tables through the fusion's input projections."""
        def compute():
            tables = self.normalized_tables()
            return self.by_item_blocks(
                lambda block: self.fusion.project_normalized_tables({name: t[block] for name, t in tables.items()}),
                self.item_present.shape[0])
        return self.memoised("projected_tables", self.inputs(), compute)

    def projected_rows(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{modality: (len(ids), H)}``: :meth:`projected_tables` at the rows ``ids`` only."""
        rows = {name: table.index_select(0, ids) for name, table in self.normalized_tables().items()}
        return self.fusion.project_normalized_tables(rows)

    @staticmethod
    def _content(projected: Mapping[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """Items' content vectors from their projected modality rows: GELU of the sum, zero where absent."""
        return F.gelu(torch.stack(list(projected.values())).sum(0)) * present

    def item_content(self) -> torch.Tensor:
        """(N, H): the sum of the items' projected modality features, zero for absent items."""
        return self.memoised("item_content", self.inputs(),
                             lambda: self._content(self.projected_tables(), self.item_present))

    def content_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """(len(ids), H): :meth:`item_content` at the rows ``ids`` only."""
        return self._content(self.projected_rows(ids), self.item_present.index_select(0, ids))

    # ---------------------------------------------------------------- growing the catalogue
    def append(self, tables: Mapping[str, torch.Tensor]) -> None:
        """Append the rows of new items (``{modality: (n_new, D)}``, validated), as a block of their own."""
        first_row = int(self.item_present.shape[0])
        reference = next(iter(self.normalized_tables().values()))
        tables = {name: reduce_table(t, getattr(self, f"basis_{name}").cpu(), self.layer_norm_eps)
                  if hasattr(self, f"basis_{name}") else t for name, t in tables.items()}
        normed = self.fusion.normalize_tables({k: t.to(reference) for k, t in tables.items()})
        present = torch.zeros(len(next(iter(tables.values()))), 1, dtype=torch.bool, device=reference.device)
        for name in self.modalities:
            setattr(self, f"normed_{name}", torch.cat([getattr(self, f"normed_{name}"), normed[name]]))
            present |= (tables[name] != 0).any(dim=1, keepdim=True).to(present.device)
        self.item_present = torch.cat([self.item_present, present])
        self.block_starts = [*self.block_starts, first_row]  # the new rows: a block of their own (item_blocks)
        self.clear_cache()
