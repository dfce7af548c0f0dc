"""On-disk feature cache: one matrix per (dataset, modality, encoder), keyed by item token.

Files under ``<cache_dir>/<dataset>/<modality>/<encoder>/``:

* ``features-<sha>.npy``: float32 ``(n_tokens, D)``, one row per item token (the dataset's original id);
* ``present-<sha>.npy``: bool ``(n_tokens,)``, False where the item had no usable input;
* ``meta.json``: encoder name, weights fingerprint, dim, dtype, the token list and its checksum,
  one input checksum per token, the names and SHA-256 of both ``.npy`` files, creation time.

Every file is written to a temporary name and renamed into place; the ``.npy`` files carry their
checksum in their name and ``meta.json`` is replaced last, so a crash at any point leaves the
previous entry whole (files no meta points to are removed after the next successful write). A request
whose encoder, weights and inputs all match is a cache hit, loaded memory-mapped after a checksum check
and a content check (every value finite); a corrupt file, an entry with NaN/Inf values (even with
matching checksums) or a changed input is detected and the entry is re-encoded, and when the catalogue
grows only the new or changed items are encoded.

Reading needs no write access: a hit (or a request for a subset of the cached items) is served from a
read-only cache folder. A request that must encode checks that the folder can be written before it
encodes anything, and otherwise fails naming the folder (and why the entry is unusable, if it is).

Rows are keyed by token, not by RecBole's internal id, because filtering (e.g. 5-core) renumbers
items: :meth:`CachedFeatures.align` maps them onto a given RecBole dataset via
``dataset.field2id_token``, so one cache serves every filtering.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fusionlayer.encoders.base import Encoder, file_sha256

logger = logging.getLogger(__name__)

__all__ = ["FeatureStore", "CachedFeatures", "AlignedFeatures", "atomic_write_bytes"]

FORMAT_VERSION = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _plain_file_name(name: Any) -> str:
    """A file name from meta.json, refused unless it is a plain ``*.npy`` name inside the entry's folder."""
    if not isinstance(name, str) or Path(name).name != name or name in (".", "..") or not name.endswith(".npy") \
            or "\\" in name:
        raise ValueError(f"meta.json names the file {name!r}; only plain *.npy names inside the cache folder are read")
    return name


def _unwritable_reason(folder: Path) -> str | None:
    """Why the cache cannot write ``folder`` (None: it can). Asks ``os.access`` first, then creates the folder
    and a temporary file in it, so nothing is encoded before a write would fail."""
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"no write permission on {existing}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    return None


WRITABLE_ADVICE = "pass a writable cache_dir (fusionlayer encode --cache-dir DIR, or FUSIONLAYER_CACHE=DIR)"


def _nonfinite_rows(features: np.ndarray, block: int = 8192) -> int:
    """How many rows hold NaN or Inf, read in blocks (a memory map is never loaded whole)."""
    return sum(int((~np.isfinite(features[i:i + block])).any(axis=1).sum()) for i in range(0, len(features), block))


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _tokens_checksum(tokens: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(tokens).encode()).hexdigest()


@dataclass
class AlignedFeatures:
    """Features aligned to a RecBole dataset: row i = internal item id i, row 0 (padding) zeros."""

    features: torch.Tensor  # (item_num, D) float32
    present: torch.Tensor  # (item_num,) bool
    missing_tokens: int  # dataset items the cache has no row for (zero rows, present False)


@dataclass
class CachedFeatures:
    """One cache entry: token-keyed rows plus what the request did."""

    tokens: list[str]
    features: np.ndarray  # (n_tokens, D) float32, memory-mapped on a hit
    present: np.ndarray  # (n_tokens,) bool
    meta: dict[str, Any]
    stats: dict[str, Any] = field(default_factory=dict)  # encoded, reused, hit, missing, seconds, ...

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def row_of(self, token: str) -> int:
        return self._index()[token]

    def rows(self, tokens: Sequence[Any]) -> torch.Tensor:
        """``(len(tokens), D)`` float32 rows of ``tokens`` (compared as strings), in their order.

        This is how new items' rows come from the cache, e.g. for :func:`fusionlayer.add_items` (which also
        takes this entry itself and calls this). Raises ``ValueError`` naming the tokens it has no row for.
        """
        if isinstance(tokens, (str, bytes)):
            tokens = [tokens]
        index, wanted = self._index(), [str(t) for t in tokens]
        unknown = [t for t in wanted if t not in index]
        if unknown:
            raise ValueError(f"{len(unknown)} of {len(wanted)} tokens have no row in this cache entry (e.g. {unknown[:5]}; "
                             f"it holds {len(self.tokens)} tokens, e.g. {self.tokens[:3]}); add the items to the catalogue "
                             "(the .item file, text source or image folder) and encode again (fusionlayer encode ...): "
                             "only what is new is encoded")
        return torch.from_numpy(np.array(self.features[[index[t] for t in wanted]], dtype=np.float32).reshape(len(wanted), self.dim))

    def _index(self) -> dict[str, int]:
        if not hasattr(self, "_token_index"):
            self._token_index = {t: i for i, t in enumerate(self.tokens)}
        return self._token_index

    def align(self, dataset: Any, field_name: str | None = None) -> AlignedFeatures:
        """Rows in RecBole's internal item-id order for ``dataset`` (``dataset.item_num`` rows).

        Args:
            dataset: a RecBole ``Dataset`` (uses ``field2id_token``), or a sequence of tokens whose
                index is the internal id (index 0 = padding).
            field_name: the item-id field; default ``dataset.iid_field``.
        """
        if hasattr(dataset, "field2id_token"):
            id_tokens = dataset.field2id_token[field_name or dataset.iid_field]
        else:
            id_tokens = list(dataset)
        index = self._index()
        rows = np.array([index.get(str(t), -1) if i > 0 else -1 for i, t in enumerate(id_tokens)])
        known = rows >= 0
        features = np.zeros((len(id_tokens), self.dim), np.float32)
        present = np.zeros(len(id_tokens), bool)
        features[known] = self.features[rows[known]]
        present[known] = self.present[rows[known]]
        missing = int((~known[1:]).sum())
        if len(id_tokens) > 1 and missing == len(id_tokens) - 1 and self.tokens:
            raise ValueError(f"none of the dataset's {len(id_tokens) - 1} item tokens (e.g. {[str(t) for t in id_tokens[1:4]]}) "
                             f"has a row in these features (tokens e.g. {self.tokens[:3]}): they were encoded for another "
                             "catalogue or item-id field; encode this dataset's items (fusionlayer encode --dataset <name>) "
                             "or pass field_name= the dataset's item-id field")
        if missing:
            logger.warning("%d of %d dataset items have no cached row; they get zero features (present=False)",
                           missing, len(id_tokens) - 1)
        return AlignedFeatures(torch.from_numpy(features), torch.from_numpy(present), missing)


class FeatureStore:
    """Encode item content once, keep it on disk, serve it to any RecBole dataset.

    Args:
        cache_dir: root folder of the cache.
    """

    def __init__(self, cache_dir: str | Path) -> None:
        self.cache_dir = Path(cache_dir)

    def entry_dir(self, dataset: str, modality: str, encoder: Encoder) -> Path:
        return self.cache_dir / dataset / modality / encoder.name.replace("/", "_")

    def _load_entry(self, folder: Path, encoder: Encoder) -> tuple[CachedFeatures | None, str | None]:
        """``(entry, None)``; ``(None, None)`` when there is none or it is another encoder's; ``(None, why)``
        when the entry is unusable (corrupt files, NaN/Inf values). Only reads."""
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            return None, None
        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict):
                raise ValueError(f"meta.json holds a {type(meta).__name__}, not an object")
            missing = sorted({"format", "encoder", "fingerprint", "tokens", "input_keys", "files", "sha256", "dim"} - set(meta))
            if missing:
                raise ValueError(f"meta.json lacks {missing}")
            if (meta["format"] != FORMAT_VERSION or meta["encoder"] != encoder.name
                    or meta["fingerprint"] != encoder.fingerprint):
                logger.info("cache %s was made by another encoder or weights; re-encoding", folder)
                return None, None
            if not isinstance(meta["files"], dict) or set(meta["files"]) != {"features", "present"}:
                raise ValueError("meta.json 'files' must name exactly 'features' and 'present'")
            paths = {kind: folder / _plain_file_name(name) for kind, name in meta["files"].items()}
            for kind, path in paths.items():
                if file_sha256(path) != meta["sha256"][kind]:
                    raise ValueError(f"{path.name} does not match its checksum in meta.json")
            features = np.load(paths["features"], mmap_mode="r", allow_pickle=False)
            present = np.load(paths["present"], allow_pickle=False)
            tokens, keys = meta["tokens"], meta["input_keys"]
            if not isinstance(tokens, list) or not isinstance(keys, list) or len(keys) != len(tokens):
                raise ValueError("meta.json 'tokens' and 'input_keys' must be lists of the same length")
            if features.ndim != 2 or features.shape != (len(tokens), meta["dim"]) or present.shape != (len(tokens),):
                raise ValueError(f"shape {features.shape} does not match meta.json")
            if features.dtype != np.float32:
                raise ValueError(f"{paths['features'].name} holds {features.dtype}, not float32")
            bad = _nonfinite_rows(features)
            if bad:  # the checksums match, so it was written so: its rows cannot be trusted
                raise ValueError(f"{paths['features'].name} has {bad} of {len(tokens)} rows with NaN/Inf values "
                                 "although its checksum matches")
        except (OSError, ValueError, KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            return None, str(exc) or type(exc).__name__
        return CachedFeatures(list(tokens), features, present, meta), None

    # Over 60 lines with its 18-line docstring: hit, read-only answer, encode, write, read back, in order.
    def get(self, dataset: str, modality: str, encoder: Encoder, tokens: Sequence[str],
            inputs: Sequence[Any]) -> CachedFeatures:
        """Return features for ``tokens``, encoding only what the cache lacks or what changed.

        A hit needs only read access. An entry with corrupt files or NaN/Inf values is re-encoded whole
        (logged as a warning). Before encoding, the entry's folder must be writable.

        Args:
            dataset: dataset name (part of the cache path).
            modality: ``"text"`` or ``"image"``.
            encoder: the encoder (name and fingerprint are part of the key).
            tokens: item tokens (original ids), one per input; at least one.
            inputs: raw inputs (texts or image paths; None = missing).

        Raises:
            ValueError: no tokens, one count of tokens and another of inputs, repeated tokens.
            PermissionError: something must be encoded and the folder cannot be written (nothing was encoded).
        """
        tokens = _checked_tokens(dataset, modality, tokens, inputs)
        start = time.perf_counter()
        folder = self.entry_dir(dataset, modality, encoder)
        keys = [encoder.input_key(x) for x in inputs]
        cached, problem = self._load_entry(folder, encoder)
        if cached is not None:
            old_rows = {t: i for i, t in enumerate(cached.tokens)}
            old_key_of = dict(zip(cached.tokens, cached.meta["input_keys"]))
            todo = [i for i, (t, k) in enumerate(zip(tokens, keys)) if old_key_of.get(t) != k]
            if not todo and cached.tokens == tokens:
                cached.stats = {"hit": True, "encoded": 0, "reused": len(tokens),
                                "missing": int((~cached.present).sum()), "failures": [],
                                "seconds": time.perf_counter() - start}
                return cached
        else:
            todo = list(range(len(tokens)))
        unwritable = _unwritable_reason(folder)
        if unwritable is not None and cached is not None and not todo:  # a subset of the entry: served, not rewritten
            rows = [old_rows[t] for t in tokens]
            subset = CachedFeatures(tokens, np.asarray(cached.features[rows]), np.asarray(cached.present[rows]),
                                    {**cached.meta, "tokens": tokens, "input_keys": keys})
            subset.stats = {"hit": True, "encoded": 0, "reused": len(tokens), "missing": int((~subset.present).sum()),
                            "failures": [], "seconds": time.perf_counter() - start}
            return subset
        if unwritable is not None:
            what = (f"its entry is unusable ({problem}) and cannot be re-encoded in place: delete {folder} "
                    "(as a user who may write there), or" if problem else
                    f"{len(todo)} of {len(tokens)} items are not cached yet and nothing was encoded:")
            raise PermissionError(f"the feature cache folder {folder} is not writable ({unwritable}); {what} {WRITABLE_ADVICE}")
        if problem:
            logger.warning("cache %s is corrupt (%s); re-encoding", folder, problem)
        todo_set = set(todo)
        encoded, encoded_present, failures = _encode_rows(encoder, [inputs[i] for i in todo], [tokens[i] for i in todo])
        for token, reason in failures:
            logger.info("%s %s item %s: %s (zero row, present=False)", dataset, modality, token, reason)
        dim = encoded.shape[1] if todo else cached.dim
        features = np.zeros((len(tokens), dim), np.float32)
        present = np.zeros(len(tokens), bool)
        for i, token in enumerate(tokens):
            if i not in todo_set:
                features[i] = cached.features[old_rows[token]]
                present[i] = cached.present[old_rows[token]]
        features[todo] = encoded
        present[todo] = encoded_present
        try:
            self._write(folder, encoder, tokens, keys, features, present)
        except OSError as exc:
            raise type(exc)(f"could not write the feature cache entry {folder} ({exc}); the previous entry, if any, "
                            f"is unchanged; {WRITABLE_ADVICE}") from exc
        result, problem = self._load_entry(folder, encoder)
        if result is None:
            raise OSError(f"the feature cache entry {folder} just written does not read back ({problem}); "
                          f"check the disk, or {WRITABLE_ADVICE}")
        result.stats = {"hit": False, "encoded": len(todo), "reused": len(tokens) - len(todo),
                        "missing": int((~present).sum()), "failures": failures,
                        "seconds": time.perf_counter() - start}
        return result

    def _write(self, folder: Path, encoder: Encoder, tokens: list[str], keys: list[str],
               features: np.ndarray, present: np.ndarray) -> None:
        blobs = {"features": _npy_bytes(features), "present": _npy_bytes(present)}
        sha = {kind: hashlib.sha256(blob).hexdigest() for kind, blob in blobs.items()}
        files = {kind: f"{kind}-{sha[kind][:16]}.npy" for kind in blobs}
        for kind, blob in blobs.items():
            atomic_write_bytes(folder / files[kind], blob)
        meta = {
            "format": FORMAT_VERSION, "encoder": encoder.name, "fingerprint": encoder.fingerprint,
            "dim": int(features.shape[1]), "dtype": "float32", "n_items": len(tokens),
            "tokens_sha256": _tokens_checksum(tokens), "tokens": tokens, "input_keys": keys,
            "files": files, "sha256": sha,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write_bytes(folder / "meta.json", json.dumps(meta).encode())
        for stale in folder.glob("*.npy"):
            if stale.name not in files.values():
                stale.unlink(missing_ok=True)


def _checked_tokens(dataset: str, modality: str, tokens: Sequence[str], inputs: Sequence[Any]) -> list[str]:
    """``tokens`` as strings, after checking there is one input per token, at least one, and no repeats."""
    if len(tokens) != len(inputs):
        raise ValueError(f"got {len(tokens)} tokens but {len(inputs)} inputs; give one input per token")
    if not len(tokens):
        raise ValueError(f"no items to encode for {dataset!r} {modality} (0 tokens): the item list is empty, e.g. "
                         "an item file with a header and no rows; give at least one item token and its input")
    tokens = [str(t) for t in tokens]  # unique as the strings the cache keys on (1 and "1" are one token)
    if len(set(tokens)) != len(tokens):
        repeated = sorted(t for t, n in Counter(tokens).items() if n > 1)[:5]
        raise ValueError(f"tokens must be unique, got {repeated} more than once (compared as strings); "
                         "deduplicate the item list first")
    return tokens


def _encode_rows(encoder: Encoder, inputs: list[Any], tokens: list[str]) -> tuple[np.ndarray, np.ndarray, list]:
    """``(features, present, failures)`` of ``inputs``: a NaN/Inf row is never cached (zeroed, marked missing, counted)."""
    encoded, present = encoder.encode(inputs)
    if encoded.shape[0] != len(inputs):
        raise RuntimeError(f"{encoder.name} returned {encoded.shape[0]} rows for {len(inputs)} inputs; nothing was cached")
    failures = [(tokens[j], reason) for j, reason in encoder.failures]
    bad = ~np.isfinite(encoded).all(axis=1)
    if bad.any():
        encoded[bad], present[bad] = 0.0, False
        failures += [(tokens[j], "encoder output has NaN/Inf values") for j in np.flatnonzero(bad)]
    return encoded, present, failures
