"""FeatureStore: hits, invalidation, growth, corruption, atomic writes, alignment to RecBole ids."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from fusionlayer.encoders.base import Encoder
from fusionlayer.encoders.cache import FeatureStore


class CountingEncoder(Encoder):
    """Deterministic fake: a row is (len(text), hash bucket, 1); counts what it encodes."""

    name, modality = "counting", "text"

    def __init__(self, fingerprint="v1"):
        super().__init__()
        self._fingerprint, self.seen = fingerprint, []

    @property
    def fingerprint(self):
        return self._fingerprint

    @property
    def dim(self):
        return 3

    def input_key(self, value):
        return "missing" if value is None else str(hash(value) & 0xFFFFFFFF)

    def _encode(self, values):
        self.seen.extend(values)
        out = np.array([[len(v or ""), sum(map(ord, v or "")) % 97, 1.0] for v in values], np.float32)
        present = np.array([v is not None for v in values])
        out[~present] = 0
        return out, present


TOKENS, TEXTS = ["1", "2", "3"], ["Toy Story", "GoldenEye", None]


def test_hit_after_first_encode(tmp_path):
    store, enc = FeatureStore(tmp_path), CountingEncoder()
    first = store.get("ds", "text", enc, TOKENS, TEXTS)
    assert first.stats["encoded"] == 3 and not first.stats["hit"] and first.stats["missing"] == 1
    second = store.get("ds", "text", enc, TOKENS, TEXTS)
    assert second.stats["hit"] and second.stats["encoded"] == 0 and len(enc.seen) == 3
    assert isinstance(second.features, np.memmap)
    np.testing.assert_array_equal(np.asarray(second.features), np.asarray(first.features))
    assert second.present.tolist() == [True, True, False]
    meta = json.loads((store.entry_dir("ds", "text", enc) / "meta.json").read_text())
    assert {"encoder", "fingerprint", "dim", "dtype", "tokens_sha256", "sha256", "created"} <= set(meta)


def test_changed_input_and_growth_encode_only_what_changed(tmp_path):
    store, enc = FeatureStore(tmp_path), CountingEncoder()
    store.get("ds", "text", enc, TOKENS, TEXTS)
    enc.seen.clear()
    changed = store.get("ds", "text", enc, TOKENS + ["4"], ["Toy Story 2", "GoldenEye", None, "Heat"])
    assert sorted(enc.seen) == ["Heat", "Toy Story 2"] and changed.stats["reused"] == 2
    assert changed.features[changed.row_of("1")][0] == len("Toy Story 2")


def test_new_weights_invalidate(tmp_path):
    store = FeatureStore(tmp_path)
    store.get("ds", "text", CountingEncoder("v1"), TOKENS, TEXTS)
    again = store.get("ds", "text", CountingEncoder("v2"), TOKENS, TEXTS)
    assert not again.stats["hit"] and again.stats["encoded"] == 3


def test_corrupt_file_is_detected_and_reencoded(tmp_path, caplog):
    store, enc = FeatureStore(tmp_path), CountingEncoder()
    store.get("ds", "text", enc, TOKENS, TEXTS)
    folder = store.entry_dir("ds", "text", enc)
    features = next(folder.glob("features-*.npy"))
    data = bytearray(features.read_bytes())
    data[-1] ^= 0xFF
    features.write_bytes(bytes(data))
    again = store.get("ds", "text", enc, TOKENS, TEXTS)
    assert not again.stats["hit"] and again.stats["encoded"] == 3
    assert "corrupt" in caplog.text
    assert store.get("ds", "text", enc, TOKENS, TEXTS).stats["hit"]


def test_crash_mid_write_keeps_the_previous_entry(tmp_path, monkeypatch):
    store, enc = FeatureStore(tmp_path), CountingEncoder()
    store.get("ds", "text", enc, TOKENS, TEXTS)
    real_replace, calls = os.replace, []

    def crash_on_meta(src, dst):
        calls.append(dst)
        if str(dst).endswith("meta.json"):
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_meta)
    with pytest.raises(OSError, match="simulated crash"):
        store.get("ds", "text", enc, TOKENS, ["changed", "GoldenEye", None])
    monkeypatch.setattr(os, "replace", real_replace)
    folder = store.entry_dir("ds", "text", enc)
    assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*.tmp"))
    survivor = store.get("ds", "text", enc, TOKENS, TEXTS)
    assert survivor.stats["hit"]  # the old entry is whole


def test_bad_requests(tmp_path):
    store, enc = FeatureStore(tmp_path), CountingEncoder()
    with pytest.raises(ValueError, match="one input per token"):
        store.get("ds", "text", enc, TOKENS, TEXTS[:2])
    with pytest.raises(ValueError, match="tokens must be unique"):
        store.get("ds", "text", enc, ["1", "1"], ["a", "b"])
    with pytest.raises(ValueError, match=r"tokens must be unique, got \['7'\] .*as strings"):
        store.get("ds", "text", enc, [7, "7"], ["a", "b"])


def test_align_to_token_order(tmp_path):
    cached = FeatureStore(tmp_path).get("ds", "text", CountingEncoder(), TOKENS, TEXTS)
    aligned = cached.align(["[PAD]", "3", "1", "99"])  # internal id -> token, as RecBole's field2id_token
    assert aligned.features.shape == (4, 3) and aligned.missing_tokens == 1
    assert not aligned.features[0].any() and aligned.present.tolist() == [False, False, True, False]
    assert aligned.features[2, 0] == len("Toy Story")
    with pytest.raises(ValueError, match="none of the dataset's 2 item tokens .* another catalogue"):
        cached.align(["[PAD]", "sku-a", "sku-b"])  # features of another catalogue: an error, not a table of zeros


@pytest.mark.needs_ml100k
@pytest.mark.slow
def test_real_ml100k_features_align_with_recbole_ids(tiny_root, tmp_path):
    """Packaged MiniLM + EfficientNet-Lite0 features, cached, land on RecBole's internal ids."""
    import fusionlayer
    from conftest import SHARED, build
    from fusionlayer.encoders import encode_items, load_features

    text = encode_items("ml-100k", "text", data_root=SHARED, progress=False)
    image = encode_items("ml-100k", "image", data_root=SHARED, progress=False)
    assert text.features.shape == (1682, 384) and image.features.shape == (1682, 1280)
    assert int((~image.present).sum()) == 19 and text.present.all()
    assert encode_items("ml-100k", "text", data_root=SHARED, progress=False).stats["hit"]
    config, train, _, _ = build(fusionlayer.M2SR, tiny_root, tmp_path)
    ds = train.dataset
    aligned = load_features("ml-100k", ds, data_root=SHARED, progress=False)
    toy_story = ds.token2id(ds.iid_field, "1")
    assert torch.equal(aligned["text"].features[toy_story], torch.from_numpy(np.asarray(text.features[text.row_of("1")])))
    assert aligned["image"].features.shape == (ds.item_num, 1280) and not aligned["image"].features[0].any()
    fusionlayer.M2SR(config, ds, features=aligned)  # accepted as-is by the model
