"""What every encoder offers the feature cache: a name, a weights fingerprint, a width, ``encode``."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["Encoder", "check_batch_size", "file_sha256"]


def check_batch_size(value: Any) -> int:
    """``value`` if it is a positive int, else ValueError (0 or -1 would encode nothing and cache empty rows)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"batch_size must be a positive int, got {value!r}")
    return value


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Encoder:
    """Base class: subclasses set ``name``/``modality`` and implement ``fingerprint``, ``dim``, ``_encode``.

    ``encode`` returns a float32 ``(n, dim)`` array and a bool ``present`` vector; a missing or
    unreadable input gives a zero row with ``present=False`` (counted in ``self.failures``), so one
    bad input never aborts a run.
    """

    name: str
    modality: str

    def __init__(self) -> None:
        self.failures: list[tuple[int, str]] = []  # (index in the last encode call, reason)

    @property
    def fingerprint(self) -> str:
        """A checksum of the weights (or their hub name and tag), part of the cache key."""
        raise NotImplementedError

    @property
    def dim(self) -> int:
        raise NotImplementedError

    def input_key(self, value: Any) -> str:
        """A checksum of one raw input; a changed key means the item is re-encoded."""
        raise NotImplementedError

    def _encode(self, values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def encode(self, values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        self.failures = []
        if not values:
            return np.zeros((0, self.dim), np.float32), np.zeros(0, bool)
        return self._encode(values)
