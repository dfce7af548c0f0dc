"""Dataset content -> encoder -> feature cache -> tables aligned to a RecBole dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from fusionlayer.data import load_item_content
from fusionlayer.encoders.cache import AlignedFeatures, CachedFeatures, FeatureStore
from fusionlayer.encoders.presets import build_encoder

__all__ = ["default_cache_dir", "encode_items", "load_features"]


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "fusionlayer"


def encode_items(dataset: str, modality: str, encoder: str | None = None, *, data_root: str | Path | None = None,
                 cache_dir: str | Path | None = None, **options) -> CachedFeatures:
    """Encode (or load from cache) one modality of every item of ``dataset``.

    Args:
        dataset: ``"ml-100k"`` or ``"ml-1m"``.
        modality: ``"text"`` or ``"image"``.
        encoder: preset or model name (:func:`fusionlayer.encoders.build_encoder`).
        data_root: folder holding the dataset folder; default ``../shared/datasets``.
        cache_dir: feature cache root; default ``~/.cache/fusionlayer``.
        **options: encoder options (``batch_size``, ``device``, ``progress``...).
    """
    contents, counts = load_item_content(dataset, data_root)
    enc = build_encoder(modality, encoder, **options)
    inputs = [c.text if modality == "text" else c.poster for c in contents]
    result = FeatureStore(cache_dir or default_cache_dir()).get(dataset, modality, enc, [c.token for c in contents], inputs)
    result.stats["content"] = counts
    return result


def load_features(dataset_name: str, recbole_dataset: Any, modalities: Iterable[str] = ("text", "image"), *,
                  encoders: dict[str, str] | None = None, **kwargs) -> dict[str, AlignedFeatures]:
    """Per-modality tables aligned to ``recbole_dataset``'s internal item ids (encoded on demand)."""
    encoders = encoders or {}
    return {m: encode_items(dataset_name, m, encoders.get(m), **kwargs).align(recbole_dataset) for m in modalities}
