"""M2SR and its ID-only baseline MLPMixerRec as RecBole sequential recommenders.

M2SR (paper Sec. 3): item-ID embeddings and the per-item modality features of the history go
through the Feature Mixer Layer (one Mixer per modality, Eq. 1) and the Fusion Mixer Layer
(Eq. 2); the Prediction Layer scores every item by the dot product of the fused representation at
the newest position with the item-ID embeddings, trained with cross-entropy over all items.
MLPMixerRec is the same model with the item-ID stream only (the paper's "MLP Mixer" baseline).
Both train with RecBole's own ``Trainer`` and evaluate with full ranking.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import torch
from torch import nn

from fusionlayer.config import FusionConfig
from fusionlayer.features import as_feature_tables
from fusionlayer.fusion import FeatureFusionLayer
from fusionlayer.recbole_compat import patch_recbole

patch_recbole()

from recbole.model.abstract_recommender import SequentialRecommender  # noqa: E402
from recbole.utils import InputType  # noqa: E402

__all__ = ["M2SR", "MLPMixerRec", "fusion_config_from_recbole"]

# RecBole config key -> FusionConfig field, read once at the boundary (missing keys take the default).
RECBOLE_KEYS = {
    "hidden_size": "hidden_size",
    "n_layers": "num_layers",
    "fusion_layers": "num_fusion_layers",
    "token_hidden_size": "token_hidden_size",
    "channel_hidden_size": "channel_hidden_size",
    "dropout_prob": "dropout",
    "layer_norm_eps": "layer_norm_eps",
}


def fusion_config_from_recbole(config: Any, modality_dims: Mapping[str, int], **overrides) -> FusionConfig:
    """Build a typed :class:`FusionConfig` from RecBole's string-keyed config (absent keys: defaults)."""
    values: dict[str, Any] = {"modality_dims": dict(modality_dims), "max_seq_length": config["MAX_ITEM_LIST_LENGTH"]}
    for key, field_name in RECBOLE_KEYS.items():
        value = config[key]
        if value is not None:
            values[field_name] = value
    values.update(overrides)
    return FusionConfig(**values)


class M2SR(SequentialRecommender):
    """Multi-modal Mixer sequential recommender (Feature Mixer + Fusion Mixer + Prediction Layer).

    Args:
        config: RecBole ``Config``. Reads ``hidden_size``, ``n_layers``, ``fusion_layers``,
            ``token_hidden_size``, ``channel_hidden_size``, ``dropout_prob``, ``layer_norm_eps``
            (all optional, :class:`FusionConfig` defaults) and ``MAX_ITEM_LIST_LENGTH``.
        dataset: the RecBole dataset the model is trained on.
        features: ``{modality: (dataset.item_num, D)}`` per-item tables in RecBole's internal id order
            (row 0 = padding id), e.g. from ``FeatureStore.align(dataset)``. Validated once here. Without
            any (RecBole's own pipeline builds models as ``Model(config, dataset)``) it is the ID-only
            :class:`MLPMixerRec`, with a warning.
    """

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset, *, features: Mapping[str, Any] | None = None) -> None:
        super().__init__(config, dataset)
        tables = as_feature_tables(features or {}, self.n_items)
        if "id" in tables:
            raise ValueError("the modality name 'id' is reserved for the item-ID stream; rename that feature table")
        if not tables and type(self) is M2SR:
            warnings.warn("M2SR was built without item features, so it is the ID-only MLPMixerRec; pass "
                          "features=load_features(dataset_name, dataset) (fusionlayer.encoders) for text and images",
                          UserWarning, stacklevel=2)
        loss_type = config["loss_type"] or "CE"
        if loss_type != "CE":
            raise ValueError(f"{type(self).__name__} trains with loss_type='CE' (full softmax), got {loss_type!r}")
        self.fusion_config = fusion_config_from_recbole(
            config, {"id": config["hidden_size"] or FusionConfig.hidden_size, **{n: t.shape[1] for n, t in tables.items()}}
        )
        H = self.fusion_config.hidden_size
        self.item_embedding = nn.Embedding(self.n_items, H, padding_idx=0)
        self.fusion = FeatureFusionLayer(config=self.fusion_config)
        self.modalities = list(tables)
        # Constant tables, normalised once (the input LayerNorm's affine part folds into the projection);
        # buffers: they move with .to(device) and stay out of checkpoints.
        for name, table in self.fusion.normalize_tables(tables).items():
            self.register_buffer(f"normed_{name}", table, persistent=False)
        self.loss_fct = nn.CrossEntropyLoss()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        normalized = {name: getattr(self, f"normed_{name}") for name in self.modalities}
        return self.fusion.forward_items(item_seq, {"id": self.item_embedding.weight}, last_only=True,
                                         projected_tables=self.fusion.project_normalized_tables(normalized))  # (B, H)

    def calculate_loss(self, interaction) -> torch.Tensor:
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        logits = seq_output @ self.item_embedding.weight.t()
        return self.loss_fct(logits, interaction[self.POS_ITEM_ID])

    def predict(self, interaction) -> torch.Tensor:
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return (seq_output * self.item_embedding(interaction[self.ITEM_ID])).sum(dim=-1)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return seq_output @ self.item_embedding.weight.t()  # (B, n_items)


class MLPMixerRec(M2SR):
    """The paper's ID-only "MLP Mixer" baseline: M2SR with the item-ID stream alone.

    Args:
        config: RecBole ``Config`` (same keys as :class:`M2SR`).
        dataset: the RecBole dataset.
    """

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset, features={})
