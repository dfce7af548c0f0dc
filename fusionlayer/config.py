"""Typed configuration for the fusion layer and the models built on it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping

__all__ = ["AdapterOptions", "FusionConfig"]


def _reserved_names() -> frozenset[str]:
    from torch import nn

    return frozenset(name for name in dir(nn.ModuleDict()) if not name.startswith("__"))


_RESERVED_NAMES = _reserved_names()
_RANGES = {"in [0, 1)": lambda v: 0.0 <= v < 1.0, "> 0": lambda v: v > 0, ">= 0": lambda v: v >= 0}


def _check_numbers(config: Any, **rules: str) -> None:
    """Each named field is a real number (TypeError otherwise) within its rule (ValueError); a rule's
    words after the range are the reason shown."""
    for name, rule in rules.items():
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
        if value in (float("inf"), float("-inf")):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        bound = next(key for key in _RANGES if rule.startswith(key))
        if not _RANGES[bound](value):
            raise ValueError(f"{name} must be {rule}, got {value!r}")


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
            if name in _RESERVED_NAMES:
                raise ValueError(f"modality name {name!r} is an attribute of torch's nn.Module / nn.ModuleDict and "
                                 f"cannot name a stream; rename it (e.g. {name + '_features'!r})")
            if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
                raise ValueError(f"modality_dims[{name!r}] must be a positive int, got {dim!r}")
        for name in ("hidden_size", "max_seq_length", "num_layers", "token_hidden_size", "channel_hidden_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.num_fusion_layers, int) or self.num_fusion_layers < 0:
            raise ValueError(f"num_fusion_layers must be an int >= 0, got {self.num_fusion_layers!r}")
        _check_numbers(self, dropout="in [0, 1)", layer_norm_eps="> 0 (a zero-variance padded row would divide by zero)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "FusionConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise KeyError(f"unknown FusionConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**values)


SIDES = ("both", "history", "candidate")


@dataclass(frozen=True)
class AdapterOptions:
    """What ``attach(model, features, **options)`` accepts: the history fusion's :class:`FusionConfig`
    fields (lighter defaults than the standalone layer: the backbone already models the sequence)
    plus the adapter's own options. Validated before ``attach`` changes anything.

    Dropout sits on the fused ``(B, H)`` output (``output_dropout``) by default, not inside the
    Mixers: on CPU, sampling masks for every ``(B, L, H)`` activation costs more than the matmuls.
    """

    hidden_size: int = 32  # H of the fusion streams
    num_layers: int = 1  # Mixer blocks per modality stream
    num_fusion_layers: int = 1  # Mixer blocks after the concatenation
    token_hidden_size: int = 32
    channel_hidden_size: int = 64
    dropout: float = 0.0  # inside the Mixers
    layer_norm_eps: float = 1e-6
    max_seq_length: int | None = None  # None: the model's own max_seq_length (else 50)
    output_dropout: float = 0.2  # on the fused history vector before user_out
    output_scale: float = 1.0  # alpha on both zero-initialised outputs: under Adam, the fusion's own step size
    side: str = "both"  # where content enters: "both", "history" (user/sequence side), "candidate" (item side)
    cold_dropout: float = 0.0  # training: hide this share of items' ID embeddings per step (DropoutNet); > 0 also
    # scores items never seen in training (and items added later) from content alone, and keeps them out of
    # training steps' negatives (cross-entropy logits, sampled negatives), which would only ever push them down
    cold_regression: float = 0.0  # items unseen in training (and added later) are scored from their own regression
    # of content onto the warm items' embeddings (DeepMusic / DropoutNet's regression): a Linear per candidate
    # embedding from the normalised feature tables, trained by this weight times its relative squared error against
    # the warm items' fused embeddings (their gradient stopped: warm items' scores and the rest of the model do not
    # feel it). > 0 turns the cold-item policy on as cold_dropout does (which items are cold, negatives, offset),
    # with or without cold_dropout's per-step hiding; adds cold_out.* to checkpoints.
    hold_out_target: bool = False  # training: a user's fused history leaves out the item scored as the positive.
    # For backbones whose history is the user's whole training set (BPR); without it every training positive sits in
    # its own user's history, a leak that evaluation never has. Sequential backbones' histories end before the target
    # already: no effect there.
    backbone_loss: float = 0.0  # training: add this weight times the backbone's own loss (the same step with the
    # fusion switched off) to each training loss, so the ID part keeps learning as the plain backbone does while the
    # content learns what it adds (against the content taking over a pairwise loss, which one uniform negative makes
    # easy); costs one more backbone pass per step. Scores are unchanged by it: evaluation always fuses.
    softmax_loss: float = 0.0  # training, pairwise backbones (BPR, FPMC): add this weight times the cross-entropy of
    # the model's fused full-catalogue scores (its full_sort_predict) at the positive item. One uniform negative per
    # positive teaches the content coarse distinctions (any related item beats a random one); the softmax over every
    # item teaches it to rank among related items. Backbones trained with cross-entropy already rank every item.
    content_init: bool = False  # at attach time: every item table of the backbone (SASRec/GRU4Rec/BPR item_embedding,
    # FPMC IU/IL/LI) gets, in the rows of items with content, the content's leading principal components (centred,
    # scaled to the table's own initial spread) in place of its random start: items that training sees rarely start
    # near the items their content resembles (a content prior for ID embeddings). The rest trains as before; nothing
    # is added to checkpoints. Breaks "freshly attached == backbone" on purpose.
    reduce_features: int | None = None  # large catalogues: each table -> its top-r principal directions, once at
    # attach time, read in row chunks (fusionlayer/reduction.py); None keeps the tables exact

    def __post_init__(self) -> None:
        _check_numbers(self, output_dropout="in [0, 1)", output_scale="> 0", cold_dropout="in [0, 1)",
                       backbone_loss=">= 0 (0 turns it off)", softmax_loss=">= 0 (0 turns it off)",
                       cold_regression=">= 0 (0 turns it off)")
        if self.scores_cold_items and self.side == "history":
            which = "cold_dropout" if self.cold_dropout > 0 else "cold_regression"
            raise ValueError(f"{which} scores items from their content on the candidate side, but side='history' leaves "
                             "the candidate side without content; use side='both' or 'candidate'")
        if self.reduce_features is not None and (not isinstance(self.reduce_features, int)
                                                 or isinstance(self.reduce_features, bool) or self.reduce_features < 1):
            raise ValueError(f"reduce_features must be a positive int (columns kept per table) or None, "
                             f"got {self.reduce_features!r}")
        for name in ("hold_out_target", "content_init"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
        if self.side not in SIDES:
            raise ValueError(f"side must be one of {list(SIDES)}, got {self.side!r}")
        self.fusion_config({"id": 1}, 1)  # the FusionConfig checks, now rather than at install time

    @property
    def scores_cold_items(self) -> bool:
        """The cold-item policy is on (``cold_dropout > 0`` or ``cold_regression > 0``): items unseen in training
        and items added later are scored from content alone and kept out of training steps' negatives."""
        return self.cold_dropout > 0 or self.cold_regression > 0

    @classmethod
    def from_options(cls, options: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> "AdapterOptions":
        """``defaults`` (an adapter's own) then ``options`` (the user's); unknown names raise ValueError."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"unknown attach() option(s) {unknown}; valid options: {known}")
        return replace(cls(**dict(defaults or {})), **dict(options))

    def fusion_config(self, modality_dims: Mapping[str, int], default_max_seq_length: int) -> FusionConfig:
        adapter_only = {"output_dropout", "output_scale", "side", "max_seq_length", "cold_dropout", "reduce_features",
                        "hold_out_target", "backbone_loss", "softmax_loss", "content_init", "cold_regression"}
        values = {k: v for k, v in asdict(self).items() if k not in adapter_only}
        return FusionConfig(modality_dims=dict(modality_dims), max_seq_length=self.max_seq_length or default_max_seq_length,
                            **values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
