"""Dataset content -> encoder -> feature cache -> tables aligned to a RecBole dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from fusionlayer.data import DATASETS, load_item_content
from fusionlayer.data.content import ContentSpec, catalogue_content
from fusionlayer.data.movielens import default_data_root
from fusionlayer.encoders.cache import AlignedFeatures, CachedFeatures, FeatureStore
from fusionlayer.encoders.presets import build_encoder

__all__ = ["default_cache_dir", "encode_items", "item_contents", "load_features"]

CONTENT_OPTIONS = ("text_fields", "template", "text_file", "token_field", "image_dir", "image_field", "image_root")


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "fusionlayer"


def item_contents(dataset: str, data_root: str | Path | None = None, content: ContentSpec | None = None):
    """``(items, counts)`` of ``dataset``: from ``content`` (any RecBole dataset) or, without one, the
    MovieLens source (``ml-100k``, ``ml-1m``)."""
    if content is not None:
        return catalogue_content(dataset, data_root if data_root is not None else default_data_root(), content)
    if dataset in DATASETS:
        return load_item_content(dataset, data_root)
    raise ValueError(f"dataset {dataset!r} has no built-in content source (built in: {list(DATASETS)}); say where its "
                     "content is: text_fields=[...] / template=... and image_dir=... or image_field=... "
                     "(command line: --text-fields, --template, --image-dir, --image-field)")


def encode_items(dataset: str, modality: str, encoder: str | None = None, *, data_root: str | Path | None = None,
                 cache_dir: str | Path | None = None, content: ContentSpec | None = None, **options) -> CachedFeatures:
    """Encode (or load from cache) one modality of every item of ``dataset``.

    Args:
        dataset: the dataset's name (its folder under ``data_root``); ``"ml-100k"`` and ``"ml-1m"``
            have a built-in content source.
        modality: ``"text"`` or ``"image"``.
        encoder: preset or model name (:func:`fusionlayer.encoders.build_encoder`).
        data_root: folder holding the dataset folder; default ``../shared/datasets``.
        cache_dir: feature cache root; default ``~/.cache/fusionlayer``.
        content: where the items' text and images are (:class:`fusionlayer.data.content.ContentSpec`).
        **options: encoder options (``batch_size``, ``device``, ``progress``...).
    """
    if modality not in ("text", "image"):
        raise ValueError(f"modality must be 'text' or 'image', got {modality!r}")
    if content is not None and not (content.wants_text if modality == "text" else content.image_dir or content.image_field):
        raise ValueError(f"no {modality} source given for {dataset!r}: pass "
                         + ("text_fields=[...] or template=..." if modality == "text" else "image_dir=... or image_field=..."))
    enc = build_encoder(modality, encoder, **options)  # a bad encoder name fails before any file is read
    contents, counts = item_contents(dataset, data_root, content)
    inputs = [c.text if modality == "text" else c.poster for c in contents]
    if not any(x is not None for x in inputs):
        where = ("image_dir / image_field (a folder of <item token>.<ext> files, or a column of paths)" if modality == "image"
                 else "text_fields / template (columns with text)")
        raise ValueError(f"none of the {len(contents)} items of {dataset!r} has {'an image' if modality == 'image' else 'text'} "
                         f"(content counts: {counts}): nothing to encode; check {where}")
    result = FeatureStore(cache_dir or default_cache_dir()).get(dataset, modality, enc, [c.token for c in contents], inputs)
    result.stats["content"] = counts
    return result


def load_features(dataset_name: str, recbole_dataset: Any, modalities: Iterable[str] | None = None, *,
                  encoders: dict[str, str] | None = None, **kwargs) -> dict[str, AlignedFeatures]:
    """Per-modality tables aligned to ``recbole_dataset``'s internal item ids (encoded on demand).

    Args:
        dataset_name: the dataset's name (its folder under ``data_root``).
        recbole_dataset: the RecBole dataset the model is built on (``train_data.dataset``).
        modalities: default ``("text", "image")`` for MovieLens, else those the content options give.
        encoders: ``{modality: preset or model name}``.
        **kwargs: ``data_root``, ``cache_dir``; the content options ``text_fields``, ``template``,
            ``text_file``, ``token_field``, ``image_dir``, ``image_field``, ``image_root``
            (:class:`~fusionlayer.data.content.ContentSpec`); encoder options.

    Example::

        feats = load_features("shop", train_data.dataset, data_root="data", text_fields=["title", "description"],
                              image_dir="images")
        fusionlayer.attach(model, feats)
    """
    spec_values = {k: kwargs.pop(k) for k in CONTENT_OPTIONS if kwargs.get(k) is not None}
    for k in CONTENT_OPTIONS:
        kwargs.pop(k, None)
    spec = ContentSpec(**spec_values) if spec_values else None
    if modalities is None:
        modalities = ("text", "image") if spec is None else \
            tuple(m for m, on in (("text", spec.wants_text), ("image", spec.image_dir or spec.image_field)) if on)
    encoders = encoders or {}
    return {m: encode_items(dataset_name, m, encoders.get(m), content=spec, **kwargs).align(recbole_dataset)
            for m in modalities}
