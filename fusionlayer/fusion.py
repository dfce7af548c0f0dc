"""FeatureFusionLayer: the Feature Mixer Layer (paper Eq. 1) and Fusion Mixer Layer (Eq. 2).

Each modality stream (item-ID embeddings, image features, text features of the items in a
history) is projected to ``hidden_size`` and mixed by its own stack of Mixer blocks; the streams
are concatenated, projected back to ``hidden_size`` by a Linear and mixed again by the fusion
Mixer. The token-mixing width is fixed, so time and memory are linear in the sequence length L.

The per-modality stacks run together: block i of every stream is one
:class:`~fusionlayer.layers.GroupedMixerBlock` (per-stream weights stacked on a leading axis, batched
matmuls, one LayerNorm over the stacked streams), so a call costs the same number of operations for
one modality as for three. That path serves inference and every GPU call. A training step on the CPU runs the
streams one by one with each stream's weight slices instead: measured on ML-100K batches
(``python -m benchmarks.step_cost``), stacking made FPMC's step 20 % slower there (the stack's copies and the
batched matmuls' backward cost more memory traffic than the launches saved). Checkpoints:

* State dicts keep one key per stacked parameter: ``stream_mixers.<i>.<param>`` ``(M, ...)`` and
  ``stream_norms.weight`` / ``.bias`` ``(M, H)``, stream m being the m-th name of ``modality_dims``.
* A state dict written before the grouping (``mixers.<modality>.<i>.<param>``,
  ``norms.<modality>.<param>``) loads as it is: a load hook stacks its keys (tested against a
  checkpoint written by the per-stream code, ``tests/fixtures/per_stream_v1.pt``). This covers the
  model weights; an *optimizer* state saved mid-training by the per-stream code has one entry per
  old parameter and does not fit the grouped parameters (torch's ``Optimizer.load_state_dict``
  refuses it): resume such a run with the version that started it, or start the optimizer afresh.

Padding: any mask layout is accepted (RecBole pads on the right). Each sequence is first re-aligned
by a stable sort of its mask so its real items keep their order and end at position L - 1, padded
positions come first and are zeroed after every normalisation and residual. Position-specific
token weights therefore always see the newest item at the same index, and content at padded
positions cannot reach a real position. Outputs are returned in the input layout, zero at padded
positions.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fusionlayer.config import FusionConfig
from fusionlayer.inputs import InputChecks, autocast_on
from fusionlayer.layers import GroupedLayerNorm, GroupedMixerBlock, MixerBlock

__all__ = ["FeatureFusionLayer"]


def _mixer_stack(config: FusionConfig, depth: int) -> nn.ModuleList:
    return nn.ModuleList(
        MixerBlock(
            config.hidden_size,
            config.max_seq_length,
            token_hidden_size=config.token_hidden_size,
            channel_hidden_size=config.channel_hidden_size,
            dropout=config.dropout,
            layer_norm_eps=config.layer_norm_eps,
        )
        for _ in range(depth)
    )


# About 230 lines, a third of them docstrings: the computation only (its input checks are fusionlayer/inputs.py).
class FeatureFusionLayer(InputChecks, nn.Module):
    """Per-modality Mixers followed by a fusion Mixer; ``(B, L, D_m)`` streams -> ``(B, L, H)``.

    Args:
        modality_dims: ``{name: D_m}``, any number of modalities with any names.
        hidden_size: H, the width of every stream and of the output.
        max_seq_length: the longest L accepted.
        config: a complete :class:`FusionConfig` instead of the keywords (then give nothing else).
        **kwargs: any other :class:`FusionConfig` field (num_layers, dropout, ...).

    Example::

        layer = FeatureFusionLayer(modality_dims={"id": 64, "text": 384}, hidden_size=64, max_seq_length=50)
        out = layer({"id": ids, "text": text}, mask)  # (B, L, 64), mask: (B, L) bool, True = real item
    """

    def __init__(
        self,
        modality_dims: Mapping[str, int] | None = None,
        hidden_size: int | None = None,
        max_seq_length: int | None = None,
        *,
        config: FusionConfig | None = None,
        **kwargs,
    ) -> None:
        super().__init__()
        if config is None:
            config = FusionConfig(
                modality_dims=dict(modality_dims or {}), hidden_size=64 if hidden_size is None else hidden_size,
                max_seq_length=50 if max_seq_length is None else max_seq_length, **kwargs,
            )
        elif not isinstance(config, FusionConfig):
            raise TypeError(f"config must be a FusionConfig, got {type(config).__name__}")
        else:
            given = sorted([*kwargs, *(name for name, value in (("modality_dims", modality_dims), ("hidden_size", hidden_size),
                                                                 ("max_seq_length", max_seq_length)) if value is not None)])
            if given:
                raise TypeError(f"pass either config=FusionConfig(...) or keyword arguments, not both (got {given} "
                                "beside config); set them on the config: dataclasses.replace(config, ...)")
        self.config = config
        H = config.hidden_size
        self.projections = nn.ModuleDict(
            {name: nn.Sequential(nn.LayerNorm(dim, eps=config.layer_norm_eps), nn.Linear(dim, H))
             for name, dim in config.modality_dims.items()}
        )
        # The Feature Mixer: one stack of Mixer blocks per modality, all streams run together (fusionlayer/layers.py,
        # grouped blocks). Built per stream and stacked, so a seed initialises exactly as the per-stream layer did.
        per_stream = [_mixer_stack(config, config.num_layers) for _ in config.modality_dims]
        self.stream_mixers = nn.ModuleList(GroupedMixerBlock.from_blocks([stack[i] for stack in per_stream])
                                           for i in range(config.num_layers))
        self.stream_norms = GroupedLayerNorm(len(config.modality_dims), H, eps=config.layer_norm_eps)
        self.fuse = nn.Linear(len(config.modality_dims) * H, H)
        self.fusion_mixers = _mixer_stack(config, config.num_fusion_layers)
        self.fusion_norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.drop = nn.Dropout(config.dropout)
        self.register_load_state_dict_pre_hook(_per_stream_checkpoint)

    @property
    def modality_names(self) -> list[str]:
        return list(self.config.modality_dims)

    # ------------------------------------------------------------------ forward paths
    def forward(self, features: Mapping[str, torch.Tensor], mask: torch.Tensor, *, last_only: bool = False) -> torch.Tensor:
        """Fuse per-position modality features.

        Args:
            features: ``{name: (B, L, D_name)}`` for exactly the configured modalities.
            mask: ``(B, L)`` bool, True at real items.
            last_only: return only the output at each sequence's newest real item, ``(B, H)``.

        Returns:
            ``(B, L, H)`` (zeros at padded positions), or ``(B, H)`` with ``last_only``.
        """
        B, L = self._check_mask(mask)
        self._check_keys(set(features))
        for name, x in features.items():
            self._check_width(name, x, "features", positions=(B, L))
        order, aligned_mask = self._align(mask)
        K = _longest(aligned_mask)  # positions before L - K are padding in every row: not computed
        index = _positions_first_index(order, B, L, mask.device, keep=K)
        streams = {name: self._project_positions(name, x, mask, index, K) for name, x in features.items()}
        return self._finish(self._mix(streams, aligned_mask[:, L - K:], last_only), order, last_only, L)

    def forward_items(
        self,
        item_seq: torch.Tensor,
        tables: Mapping[str, torch.Tensor],
        *,
        sequences: Mapping[str, torch.Tensor] | None = None,
        projected_tables: Mapping[str, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Fuse the histories ``item_seq`` given per-item feature tables.

        Each table is projected once, ``(N, D) -> (N, H)``, and then indexed by the sequence: the
        projection is per item, so this equals projecting every gathered row, at a fraction of the
        cost when B * L > N.

        Args:
            item_seq: ``(B, L)`` item ids indexing the tables' rows.
            tables: ``{name: (N, D_name)}`` per-item features.
            sequences: ``{name: (B, L, D_name)}`` streams that are already per position (e.g. a
                backbone's own sequence output). Tables and sequences together must cover exactly
                the configured modalities.
            projected_tables: ``{name: (N, H)}`` tables already passed through
                :meth:`project_tables` (lets a caller reuse one projection, e.g. an inference cache).
                Tables, projected tables and sequences together cover each modality exactly once.
            mask: ``(B, L)`` bool; default ``item_seq != 0`` (RecBole's padding id).
            last_only: see :meth:`forward`.
        """
        sequences, projected_tables = dict(sequences or {}), dict(projected_tables or {})
        mask = item_seq != 0 if mask is None and isinstance(item_seq, torch.Tensor) else mask
        B, L = self._check_items(item_seq, mask, tables, projected_tables, sequences)
        buckets = _length_buckets(mask) if last_only else None
        if buckets is not None:  # short and long histories apart: each group computes only its own positions
            parts = [self._items(item_seq[rows], tables, {k: v[rows] for k, v in sequences.items()},
                                 projected_tables, mask[rows], last_only=True) for rows in buckets]
            return torch.cat(parts).index_select(0, torch.argsort(torch.cat(buckets)))
        return self._items(item_seq, tables, sequences, projected_tables, mask, last_only=last_only)

    def _items(self, item_seq, tables, sequences, projected_tables, mask, *, last_only: bool) -> torch.Tensor:
        """:meth:`forward_items` after its checks (and, with ``last_only``, for one length bucket)."""
        B, L = mask.shape
        order, aligned_mask = self._align(mask)
        K = _longest(aligned_mask)  # positions before L - K are padding in every row: not computed
        aligned_seq = item_seq if order is None else item_seq.gather(1, order)
        ids = aligned_seq[:, L - K:].t().reshape(-1)  # positions first: row k * B + b holds kept position k of history b
        streams = {name: self._gather_projected(name, table, ids, K, B) for name, table in tables.items()}
        streams.update({name: _take_rows(table, ids, K, B) for name, table in projected_tables.items()})
        if sequences:
            index = _positions_first_index(order, B, L, mask.device, keep=K)
            streams.update({name: self._project_positions(name, x, mask, index, K) for name, x in sequences.items()})
        return self._finish(self._mix(streams, aligned_mask[:, L - K:], last_only), order, last_only, L)

    def _project_positions(self, name: str, x: torch.Tensor, mask: torch.Tensor, index: torch.Tensor,
                           K: int) -> torch.Tensor:
        """The ``K`` kept positions of a per-position stream ``(B, L, D)``, positions first like the tables' rows
        (``index``), projected: ``(K, B, H)``. The projection is per row, so only the kept rows are projected."""
        B, L = mask.shape
        rows = _take_rows(_zero_padding(x, mask).reshape(B * L, x.shape[-1]), index, K, B)
        return self.projections[name](rows)

    def project_tables(self, tables: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Project per-item tables to the hidden width: ``{name: (N, D)} -> {name: (N, H)}``."""
        for name, table in tables.items():
            self._check_device(table, f"tables[{name!r}]")
        return {name: self.projections[name](table) for name, table in tables.items()}

    def normalize_tables(self, tables: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The parameter-free part of each input LayerNorm, ``(x - mean) / sqrt(var + eps)`` per row.

        For constant tables (frozen features) compute this once and project with
        :meth:`project_normalized_tables`: the LayerNorm's affine part folds into the Linear after it,
        so no step normalises (or back-propagates through the normalisation of) the whole table again.
        """
        return {name: F.layer_norm(table, table.shape[-1:], eps=self.config.layer_norm_eps).detach()
                for name, table in tables.items()}

    def project_normalized_tables(self, normalized: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """:meth:`project_tables` of tables already through :meth:`normalize_tables` (same result).

        ``Linear(gamma * x_hat + beta) = x_hat @ (W * gamma)^T + (W @ beta + b)``: one matmul per table,
        gradients reach ``gamma``, ``beta``, ``W`` and ``b`` as before.
        """
        out = {}
        for name, table in normalized.items():
            self._check_device(table, f"normalized[{name!r}]")
            norm, linear = self.projections[name]
            out[name] = F.linear(table, linear.weight * norm.weight, torch.addmv(linear.bias, linear.weight, norm.bias))
        return out

    # ------------------------------------------------------------------ internals
    def _gather_projected(self, name: str, table: torch.Tensor, ids: torch.Tensor, L: int, B: int) -> torch.Tensor:
        # Project per item: the rows the histories use when they are fewer than the table's, else the table.
        if ids.numel() < table.shape[0]:
            return self.projections[name](_take_rows(table, ids, L, B))
        return _take_rows(self.projections[name](table), ids, L, B)

    @staticmethod
    def _align(mask: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(order, aligned_mask)``: padded positions first, real items after in their own order.

        ``order`` is None when the mask is already left-padded; for right padding (RecBole's layout)
        it is a roll per row, otherwise a stable sort of the mask.
        """
        B, L = mask.shape  # (batch, positions)
        lengths = mask.sum(1, keepdim=True)
        positions = torch.arange(L, device=mask.device)
        if torch.equal(mask, positions >= L - lengths):
            return None, mask
        if torch.equal(mask, positions < lengths):
            return (positions + lengths) % L, positions >= L - lengths
        order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
        return order, mask.gather(1, order)

    def _mix(self, streams: dict[str, torch.Tensor], aligned_mask: torch.Tensor, last_only: bool) -> torch.Tensor:
        """Streams ``(L, B, H)``, positions first: token mixing is then one matmul with no transposes.

        Padded positions hold finite values that no position reads: every Mixer block masks its
        token-mixing input, the only place where positions meet, and the output is masked at the end.
        """
        names = list(self.config.modality_dims)  # fixed order: the fuse Linear's input layout
        first = streams[names[0]]
        m = aligned_mask.t().unsqueeze(-1).to(first.dtype)  # (L, B, 1)
        if first.device.type == "cpu" and torch.is_grad_enabled():
            # CPU training: stream by stream with each stream's weight slices (the stack's copies and the batched
            # matmuls' backward cost more than the launches saved when B x L is large), Eq. 2's concat -> Linear as a
            # sum of per-modality slices of the Linear
            H, norms = self.config.hidden_size, self.stream_norms
            x = self.fuse.bias
            for s, name in enumerate(names):
                h = self.drop(streams[name])
                for block in self.stream_mixers:
                    h = block.stream_forward(h, m, s)
                h = F.layer_norm(h, (H,), norms.weight[s], norms.bias[s], norms.eps)
                x = x + F.linear(h, self.fuse.weight[:, s * H:(s + 1) * H])
        else:  # inference, and every GPU call: every modality at once, (M, L, B, H), 1/M of the Mixer operations
            h = self.drop(torch.stack([streams[name] for name in names]))
            for block in self.stream_mixers:
                h = block(h, m)
            M, L, B, H = h.shape
            # Eq. 2: concat -> Linear back to H (the stream axis next to the features: one matmul over M * H)
            x = F.linear(self.stream_norms(h).permute(1, 2, 0, 3).reshape(L, B, M * H), self.fuse.weight, self.fuse.bias)
        for i, block in enumerate(self.fusion_mixers):
            x = block(x, m, positions_first=True, last_only=last_only and i == len(self.fusion_mixers) - 1)
        if last_only:
            x = x[-1] if x.dim() == 3 else x
            return self.fusion_norm(x) * m[-1]
        return self.fusion_norm(x) * m

    @staticmethod
    def _finish(aligned_out: torch.Tensor, order: torch.Tensor | None, last_only: bool, L: int) -> torch.Tensor:
        """``(K, B, H)`` positions first, aligned and cropped to the kept positions -> ``(B, L, H)`` in the input
        layout (zeros at the positions that were padding in every row)."""
        if last_only:
            return aligned_out
        K, B, H = aligned_out.shape
        if K < L:
            aligned_out = torch.cat([aligned_out.new_zeros(L - K, B, H), aligned_out])
        if order is None:
            return aligned_out.transpose(0, 1)
        inverse = torch.argsort(order, dim=1)  # (B, L): aligned position of each input position
        index = (inverse * B + torch.arange(B, device=order.device).unsqueeze(1)).reshape(-1)
        return aligned_out.reshape(L * B, H).index_select(0, index).view(B, L, H)


def _per_stream_checkpoint(layer: "FeatureFusionLayer", state_dict, prefix: str, *args) -> None:
    """Load-state-dict pre-hook: a checkpoint in the per-stream layout (before the grouped Mixer: one Mixer stack per
    modality, ``mixers.<modality>.<i>.<param>`` and ``norms.<modality>.<param>``) is converted in place, each
    parameter stacked over the modalities in the layer's order into ``stream_mixers.<i>.<param>`` and
    ``stream_norms.<param>``. A parameter some modalities lack is left as it is, so ``load_state_dict`` names it."""
    names = list(layer.config.modality_dims)
    targets = [(f"stream_mixers.{i}.{param}", [f"mixers.{n}.{i}.{param}" for n in names])
               for i, block in enumerate(layer.stream_mixers) for param, _ in block.named_parameters()]
    targets += [(f"stream_norms.{param}", [f"norms.{n}.{param}" for n in names]) for param in ("weight", "bias")]
    for new, old in targets:
        if prefix + new not in state_dict and all(prefix + key in state_dict for key in old):
            state_dict[prefix + new] = torch.stack([state_dict.pop(prefix + key) for key in old])


def _take_rows(table: torch.Tensor, ids: torch.Tensor, L: int, B: int) -> torch.Tensor:
    """``table[ids]`` as ``(L, B, D)``; ``index_select``, whose backward is far cheaper on CPU than indexing's."""
    return table.index_select(0, ids).view(L, B, table.shape[-1])


def _positions_first_index(order: torch.Tensor | None, B: int, L: int, device, *, keep: int | None = None) -> torch.Tensor:
    """Rows of a ``(B * L, D)`` view to take, positions first and aligned, for :func:`_take_rows`; with ``keep``,
    only the last ``keep`` aligned positions."""
    rows = torch.arange(B, device=device).unsqueeze(1) * L
    order = torch.arange(L, device=device).expand(B, L) if order is None else order
    if keep is not None and keep < L:
        order = order[:, L - keep:]
    return (rows + order).t().reshape(-1)


BUCKET_MIN_ROWS = 64  # smaller batches run as one group (a group's fixed cost outweighs the positions saved)


def _length_buckets(mask: torch.Tensor) -> list[torch.Tensor] | None:
    """Row indices of ``mask`` grouped by length (<= 8, <= 16, <= 32, ... real items), or None for one group.

    A batch computes as many positions as its longest history (:func:`_longest`); on a sparse catalogue a few long
    histories would make every short one pay for their length. Each row's output does not depend on the other rows,
    so grouping changes no value. Only for ``last_only`` outputs (one vector per row), and batches of at least
    ``BUCKET_MIN_ROWS`` rows whose longest group is much longer than most. One host read per call."""
    B, L = mask.shape
    if B < BUCKET_MIN_ROWS or L <= 8:
        return None
    lengths = mask.sum(1)
    limits = [8]
    while limits[-1] < L:
        limits.append(limits[-1] * 2)
    group = torch.bucketize(lengths, torch.tensor(limits, device=lengths.device))  # (B,) group of each row
    counts = torch.bincount(group, minlength=len(limits)).tolist()
    if sum(1 for c in counts if c) < 2:
        return None
    order = torch.argsort(group, stable=True)
    return [rows for rows in torch.split(order, counts) if rows.numel()]


def _longest(aligned_mask: torch.Tensor) -> int:
    """K: the most real items any row of an aligned ``(B, L)`` mask holds (at least 1). Real items end at position
    L - 1, so the first L - K positions are padding in every row. The token-mixing weights index positions from the
    end (``fusionlayer.layers``), so computing only the last K positions gives the same outputs there: on a sparse
    catalogue, where most histories are far shorter than L_max, most of the work is saved. One host read per call."""
    L = aligned_mask.shape[1]
    if L <= 1 or aligned_mask.shape[0] == 0 or bool(aligned_mask[:, 0].any()):  # a full-length row: nothing to crop
        return L
    return max(1, int(aligned_mask.sum(1).max()))


def _zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Padded positions set to 0 (not multiplied: NaN * 0 is NaN), so nothing non-finite enters."""
    return torch.where(mask.unsqueeze(-1), x, x.new_zeros(()))
