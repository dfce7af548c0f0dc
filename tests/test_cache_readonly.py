"""The feature cache on a read-only folder, its content checks and its refusals (issue 37).

A hit needs only read access, from ``FeatureStore``, ``load_features`` and ``fusionlayer encode``; a miss on a
read-only folder fails before anything is encoded, naming the folder and the ``--cache-dir`` /
``FUSIONLAYER_CACHE`` way out. The folder is made read-only with ``chmod``; under root, which ignores
permission bits, ``os.access`` also answers "not writable" for it and every write primitive under it raises
``PermissionError``, so a write that slips through fails the test instead of passing silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

from fusionlayer.encoders.cache import FeatureStore
from test_cache import TEXTS, TOKENS, CountingEncoder


def _under(path, root: Path) -> bool:
    try:
        return Path(os.fspath(path)).resolve().is_relative_to(root)
    except (TypeError, ValueError, OSError):
        return False


@pytest.fixture
def make_read_only(monkeypatch):
    """``make_read_only(folder)``: remove the write bits of ``folder`` and all in it (and, as root, simulate them)."""
    roots: list[Path] = []

    def refuse(original, *path_args):
        def guarded(*args, **kwargs):
            if any(_under(args[i], root) for i in path_args if i < len(args) for root in roots):
                raise PermissionError(13, "Permission denied (read-only test folder)", str(args[path_args[0]]))
            return original(*args, **kwargs)
        return guarded

    def make(folder: Path) -> None:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        roots.append(folder.resolve())
        if os.geteuid() != 0 or len(roots) > 1:
            return
        real_access, real_open = os.access, os.open
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if mode & os.W_OK and any(
            _under(path, root) for root in roots) else real_access(path, mode, **kw))
        write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
        monkeypatch.setattr(os, "open", lambda path, flags, *a, **kw: refuse(real_open, 0)(path, flags, *a, **kw)
                            if flags & write_flags else real_open(path, flags, *a, **kw))
        for name, path_args in (("replace", (0, 1)), ("rename", (0, 1)), ("mkdir", (0,)), ("unlink", (0,)),
                                ("rmdir", (0,))):
            monkeypatch.setattr(os, name, refuse(getattr(os, name), *path_args))

    yield make
    for root in roots:  # let pytest clean up its tmp_path
        for path in [root, *root.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def _refuse_encoding(encoder):
    encoder.encode = lambda values: pytest.fail(f"encoded {len(values)} inputs on a read-only cache")
    return encoder


def test_a_hit_on_a_read_only_cache_writes_nothing(tmp_path, make_read_only):
    store = FeatureStore(tmp_path / "cache")
    first = store.get("ds", "text", CountingEncoder(), TOKENS, TEXTS)
    make_read_only(tmp_path / "cache")
    hit = store.get("ds", "text", _refuse_encoding(CountingEncoder()), TOKENS, TEXTS)
    assert hit.stats["hit"] and np.array_equal(np.asarray(hit.features), np.asarray(first.features))
    subset = store.get("ds", "text", _refuse_encoding(CountingEncoder()), TOKENS[:2], TEXTS[:2])  # fewer items
    assert subset.stats["hit"] and subset.tokens == TOKENS[:2]
    assert np.array_equal(subset.features, np.asarray(first.features)[:2])


def test_a_miss_on_a_read_only_cache_fails_before_encoding(tmp_path, make_read_only):
    store = FeatureStore(tmp_path / "cache")
    store.get("ds", "text", CountingEncoder(), TOKENS, TEXTS)
    make_read_only(tmp_path / "cache")
    folder = store.entry_dir("ds", "text", CountingEncoder())
    with pytest.raises(PermissionError, match=rf"{re.escape(str(folder))} is not writable .*1 of 4 items are not cached yet and "
                                              r"nothing was encoded.*--cache-dir DIR, or FUSIONLAYER_CACHE=DIR"):
        store.get("ds", "text", _refuse_encoding(CountingEncoder()), TOKENS + ["4"], TEXTS + ["Heat"])
    with pytest.raises(PermissionError, match="other/text/counting is not writable"):  # a new dataset: no folder yet
        store.get("other", "text", _refuse_encoding(CountingEncoder()), TOKENS, TEXTS)


def test_a_write_that_fails_names_the_entry_and_the_way_out(tmp_path, monkeypatch):
    store = FeatureStore(tmp_path / "cache")

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", refuse)  # e.g. a quota, or a folder made read-only meanwhile
    with pytest.raises(PermissionError, match=r"could not write the feature cache entry .*ds/text/counting .*"
                                              r"Permission denied.*--cache-dir DIR, or FUSIONLAYER_CACHE=DIR"):
        store.get("ds", "text", CountingEncoder(), TOKENS, TEXTS)


# ----------------------------------------------------------------------------------- content checks
def _poison(store: FeatureStore, encoder, row: int, value: float) -> Path:
    """Write ``value`` into one row of the entry and make its checksum match again (as a buggy writer would)."""
    folder = store.entry_dir("ds", "text", encoder)
    meta = json.loads((folder / "meta.json").read_text())
    path = folder / meta["files"]["features"]
    features = np.load(path)
    features[row] = value
    np.save(path, features)
    meta["sha256"]["features"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_rows_with_matching_checksums_are_re_encoded(tmp_path, caplog, value):
    """Documented choice: such an entry is no hit; it is re-encoded whole, and the next request is a hit."""
    store, encoder = FeatureStore(tmp_path), CountingEncoder()
    store.get("ds", "text", encoder, TOKENS, TEXTS)
    folder = _poison(store, encoder, 1, value)
    encoder.seen.clear()
    again = store.get("ds", "text", encoder, TOKENS, TEXTS)
    assert not again.stats["hit"] and again.stats["encoded"] == 3 and len(encoder.seen) == 3
    assert np.isfinite(again.features).all()
    assert f"cache {folder} is corrupt" in caplog.text and "1 of 3 rows with NaN/Inf values" in caplog.text
    assert store.get("ds", "text", encoder, TOKENS, TEXTS).stats["hit"]


def test_non_finite_rows_in_a_read_only_cache_say_what_to_delete(tmp_path, make_read_only):
    store, encoder = FeatureStore(tmp_path / "cache"), CountingEncoder()
    store.get("ds", "text", encoder, TOKENS, TEXTS)
    folder = _poison(store, encoder, 0, np.nan)
    make_read_only(tmp_path / "cache")
    with pytest.raises(PermissionError, match=rf"entry is unusable \(features-\w+\.npy has 1 of 3 rows with NaN/Inf "
                                              rf"values.*delete {re.escape(str(folder))} .*--cache-dir DIR, or FUSIONLAYER_CACHE=DIR"):
        store.get("ds", "text", _refuse_encoding(CountingEncoder()), TOKENS, TEXTS)


def test_no_tokens_is_a_clear_error_and_keeps_the_entry(tmp_path):
    """An item file with a header and no rows reaches the store as tokens=[]: an error, never an empty entry."""
    store = FeatureStore(tmp_path)
    with pytest.raises(ValueError, match=r"no items to encode for 'ds' text \(0 tokens\).*header and no rows"):
        store.get("ds", "text", CountingEncoder(), [], [])
    store.get("ds", "text", CountingEncoder(), TOKENS, TEXTS)
    with pytest.raises(ValueError, match="no items to encode"):
        store.get("ds", "text", CountingEncoder(), [], [])
    assert store.get("ds", "text", CountingEncoder(), TOKENS, TEXTS).stats["hit"]  # the entry was not emptied


# ----------------------------------------------------------------------------------- load_features and the CLI
@pytest.fixture
def catalogue(tmp_path, monkeypatch):
    """``(data_root, encoder)``: a 4-item catalogue ``shop`` and the fake encoder every build returns."""
    folder = tmp_path / "data" / "shop"
    folder.mkdir(parents=True)
    (folder / "shop.inter").write_text("user_id:token\titem_id:token\n" + "".join(f"u1\ts{i}\n" for i in range(4)))
    (folder / "shop.item").write_text("item_id:token\ttitle:token_seq\n" + "".join(f"s{i}\tThing {i}\n" for i in range(4)))
    encoder = CountingEncoder()
    monkeypatch.setattr("fusionlayer.encoders.pipeline.build_encoder", lambda modality, name=None, **options: encoder)
    return tmp_path / "data", encoder


def test_load_features_reads_a_read_only_cache(tmp_path, catalogue, make_read_only):
    from fusionlayer.encoders import load_features

    data, encoder = catalogue
    options = dict(data_root=data, cache_dir=tmp_path / "cache", text_fields=["title"])
    first = load_features("shop", ["[PAD]", "s2", "s0"], **options)
    make_read_only(tmp_path / "cache")
    _refuse_encoding(encoder)
    again = load_features("shop", ["[PAD]", "s2", "s0"], **options)
    assert np.array_equal(again["text"].features.numpy(), first["text"].features.numpy())
    with (data / "shop" / "shop.item").open("a") as f:
        f.write("s9\tNew thing\n")
    with pytest.raises(PermissionError, match=r"1 of 5 items are not cached yet and nothing was encoded.*--cache-dir"):
        load_features("shop", ["[PAD]", "s2", "s0"], **options)


def test_cli_encode_hits_a_read_only_cache_and_refuses_a_miss_in_one_line(tmp_path, catalogue, make_read_only, capsys):
    from fusionlayer import cli

    data, encoder = catalogue
    args = ["encode", "--dataset", "shop", "--data-dir", str(data), "--cache-dir", str(tmp_path / "cache"),
            "--modality", "text", "--text-fields", "title", "--no-progress"]
    assert cli.main(args) == 0
    make_read_only(tmp_path / "cache")
    _refuse_encoding(encoder)
    capsys.readouterr()
    assert cli.main(args) == 0
    out, err = capsys.readouterr()
    assert "4 items x 3 (cache hit" in out and err == ""
    with (data / "shop" / "shop.item").open("a") as f:
        f.write("s9\tNew thing\n")
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    folder = tmp_path / "cache" / "shop" / "text" / "counting"
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"fusionlayer encode: error: the feature cache folder {folder} is not writable")
    assert "--cache-dir DIR, or FUSIONLAYER_CACHE=DIR" in err
