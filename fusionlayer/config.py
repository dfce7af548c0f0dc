"""Typed configuration for the fusion layer and the models built on it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["FusionConfig"]


@dataclass
class FusionConfig:
    """Configuration of a :class:`~fusionlayer.FeatureFusionLayer` (M2SR Eq. 1 and Eq. 2).

    The token-mixing width is a fixed number, independent of the sequence length, so the layer's
    cost is linear in L (the public MMMLP code uses 4 * L, which is quadratic).
    """

    modality_dims: dict[str, int] = field(default_factory=dict)  # input width D_m per modality name
    hidden_size: int = 64  # H: width of every modality stream after projection and of the output
    max_seq_length: int = 50  # L_max: the longest sequence the token-mixing weights accept
    num_layers: int = 2  # Mixer blocks per modality (Feature Mixer Layer, Eq. 1)
    num_fusion_layers: int = 1  # Mixer blocks after concatenation (Fusion Mixer Layer, Eq. 2)
    token_hidden_size: int = 64  # hidden width of the token-mixing MLP (fixed: linear time in L)
    channel_hidden_size: int = 256  # hidden width of the channel-mixing MLP
    dropout: float = 0.1  # dropout inside the MLPs and on the projected inputs
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if not isinstance(self.modality_dims, dict) or not self.modality_dims:
            raise ValueError(
                f"modality_dims must be a non-empty dict {{name: dim}}, got {self.modality_dims!r}; "
                "e.g. modality_dims={'id': 64, 'text': 384}"
            )
        for name, dim in self.modality_dims.items():
            if not isinstance(name, str):
                raise TypeError(f"modality names must be strings, got {type(name).__name__} {name!r}")
            if not name or "." in name:
                raise ValueError(f"modality names must be non-empty and contain no '.', got {name!r}")
            if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
                raise ValueError(f"modality_dims[{name!r}] must be a positive int, got {dim!r}")
        for name in ("hidden_size", "max_seq_length", "num_layers", "token_hidden_size", "channel_hidden_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.num_fusion_layers, int) or self.num_fusion_layers < 0:
            raise ValueError(f"num_fusion_layers must be an int >= 0, got {self.num_fusion_layers!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "FusionConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise KeyError(f"unknown FusionConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**values)
