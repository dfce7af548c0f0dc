"""The fusion layer's input checks: shapes, dtypes, devices and ids, before any computation.

:class:`InputChecks` is mixed into :class:`~fusionlayer.FeatureFusionLayer`; it reads the layer's ``config``
(modality widths, ``hidden_size``, ``max_seq_length``) and the device and dtype of its ``fuse`` weight. Every error
says what was expected, what arrived and what to do.
"""

from __future__ import annotations

import torch

__all__ = ["InputChecks", "autocast_on"]


def autocast_on(device: torch.device) -> bool:
    """Mixed precision (``torch.autocast``, RecBole's ``enable_amp``) is on for ``device``: inputs then arrive in
    the autocast dtype while the weights stay in theirs, which is how autocast is meant to work."""
    try:
        return torch.is_autocast_enabled(device.type)
    except (TypeError, RuntimeError):  # a device type autocast does not know
        return False


class InputChecks:
    """What :class:`~fusionlayer.FeatureFusionLayer` checks of its inputs (a mixin: the layer's ``config`` and
    ``fuse`` weight are read, nothing is stored)."""

    def _check_mask(self, mask: torch.Tensor) -> tuple[int, int]:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor of shape (B, L) and dtype bool, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must have dtype torch.bool (True = real item), got {mask.dtype}; use mask.bool()")
        if mask.dim() != 2:
            raise ValueError(f"mask must have shape (B, L), got {tuple(mask.shape)}")
        B, L = mask.shape
        if L == 0:
            raise ValueError(f"sequence length L = 0: the mask {tuple(mask.shape)} has L = 0 positions; give at least one "
                             "position per sequence (a history without items is one padding position, id 0)")
        self._check_device(mask, "mask")
        if L > self.config.max_seq_length:
            raise ValueError(
                f"sequence length {L} exceeds max_seq_length={self.config.max_seq_length}; truncate the "
                "sequences to their newest items or build the layer with a larger max_seq_length"
            )
        return B, L

    def _check_keys(self, given: set[str]) -> None:
        expected = set(self.config.modality_dims)
        if given != expected:
            raise ValueError(
                f"expected modalities {sorted(expected)}, got {sorted(given)} "
                f"(missing: {sorted(expected - given)}, unexpected: {sorted(given - expected)})"
            )

    def _check_width(self, name: str, x: torch.Tensor, what: str, *, width: int | None = None,
                     positions: tuple[int, int] | None = None) -> None:
        """One checker for every input: a float tensor of the layer's dtype and device, ``(..., width)``,
        and ``(B, L, width)`` when ``positions=(B, L)`` is given."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{what}[{name!r}] must be a torch.Tensor, got {type(x).__name__}")
        expected = self.config.modality_dims[name] if width is None else width
        if x.dim() == 0 or x.shape[-1] != expected:
            built = f"modality_dims[{name!r}]={expected}" if width is None else f"hidden_size={expected}"
            raise ValueError(f"{what}[{name!r}] has {x.shape[-1] if x.dim() else 0} features in its last dimension "
                             f"(shape {tuple(x.shape)}), but the layer was built with {built}")
        if positions is not None and (x.dim() != 3 or x.shape[:2] != positions):
            raise ValueError(f"{what}[{name!r}] must have shape (B={positions[0]}, L={positions[1]}, D), "
                             f"got {tuple(x.shape)} (D = {expected}); (B, L) is the mask's shape: every modality's "
                             f"(B, L, D) features share one (B, L) mask")
        reference = self.fuse.weight
        if x.dtype != reference.dtype and not (x.is_floating_point() and autocast_on(x.device)):
            raise TypeError(f"{what}[{name!r}] has dtype {x.dtype} but the layer's weights are {reference.dtype}; "
                            f"convert with .to({reference.dtype}) (or the layer with .to(dtype))")
        self._check_device(x, f"{what}[{name!r}]")

    def _check_device(self, x: torch.Tensor, what: str) -> None:
        layer_device = self.fuse.weight.device
        if x.device != layer_device:
            hint = " (the meta device holds shapes, not values: give real tensors)" if "meta" in (x.device.type, layer_device.type) else ""
            raise ValueError(f"{what} is on device {x.device} but the layer is on device {layer_device}{hint}; "
                             f"move one of them with .to(device)")

    @staticmethod
    def _check_ids(id_range: tuple[int, int], n_rows: int, what: str) -> None:
        low, high = id_range
        if low < 0 or high >= n_rows:
            raise ValueError(f"item_seq holds ids from {low} to {high}, but {what} has {n_rows} rows "
                             f"(valid ids 0..{n_rows - 1}, 0 = padding); ids must index the table's rows")

    def _check_items(self, item_seq, mask, tables, projected_tables, sequences) -> tuple[int, int]:
        """:meth:`forward_items`' inputs, checked before any computation; returns ``(B, L)``."""
        if not isinstance(item_seq, torch.Tensor) or item_seq.dim() != 2 or item_seq.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"item_seq must be an integer tensor of shape (B, L), got {getattr(item_seq, 'dtype', type(item_seq))} "
                            f"{tuple(getattr(item_seq, 'shape', ()))}")
        self._check_device(item_seq, "item_seq")
        B, L = self._check_mask(mask)
        if item_seq.shape != mask.shape:
            raise ValueError(f"item_seq {tuple(item_seq.shape)} and mask {tuple(mask.shape)} must have the same shape")
        kinds = {"tables": set(tables), "projected_tables": set(projected_tables), "sequences": set(sequences)}
        seen: dict[str, str] = {}
        for kind, names in kinds.items():
            for name in sorted(names):
                if name in seen:
                    raise ValueError(f"modality {name!r} was given both in {seen[name]} and in {kind}; give each once")
                seen[name] = kind
        self._check_keys(set(seen))
        H = self.config.hidden_size
        for name, table in projected_tables.items():
            if not isinstance(table, torch.Tensor) or table.dim() != 2 or table.shape[1] != H:
                raise ValueError(f"projected_tables[{name!r}] must be an (N, hidden_size={H}) tensor from "
                                 f"project_tables(), got {tuple(getattr(table, 'shape', ()))}")
        id_range = (int(item_seq.min()), int(item_seq.max())) if item_seq.numel() else (0, 0)
        for kind, named in (("tables", tables), ("projected_tables", projected_tables)):
            for name, table in named.items():
                self._check_width(name, table, kind, width=self.config.hidden_size if kind == "projected_tables" else None)
                if table.dim() != 2:
                    raise ValueError(f"{kind}[{name!r}] must be an (N, D) table, got shape {tuple(table.shape)}")
                self._check_ids(id_range, table.shape[0], f"{kind}[{name!r}]")
        for name, x in sequences.items():
            self._check_width(name, x, "sequences", positions=(B, L))
        return B, L
