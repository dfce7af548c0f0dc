"""MovieLens loaders: the shared copy, item content rules, the GroupLens download path (offline)."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from conftest import SHARED
from fusionlayer.data import ensure_dataset, item_text, load_item_content
from fusionlayer.data.movielens import DATASETS


@pytest.mark.needs_ml100k
def test_shared_ml100k_counts(tiny_root, tmp_path):
    from fusionlayer.data.recbole_data import prepare_data, recbole_config

    folder = ensure_dataset("ml-100k", SHARED)
    lines = (folder / "ml-100k.inter").read_text().splitlines()[1:]
    assert len(lines) == 100_000
    assert len({line.split("\t")[0] for line in lines}) == 943
    assert len({line.split("\t")[1] for line in lines}) == 1682
    config = recbole_config("BPR", "ml-100k", data_root=SHARED,
                            overrides={"user_inter_num_interval": None, "item_inter_num_interval": None,
                                       "checkpoint_dir": str(tmp_path)})
    dataset = prepare_data(config)[0]
    assert (dataset.user_num - 1, dataset.item_num - 1, len(dataset.inter_feat)) == (943, 1682, 100_000)


@pytest.mark.needs_ml100k
def test_item_content_rules_on_real_data():
    items, counts = load_item_content("ml-100k", SHARED)
    assert counts == {"items": 1682, "duplicate_csv_rows": 64, "malformed_csv_lines": 0, "non_utf8_csv_rows": 0,
                      "empty_plot": 18, "no_text": 0, "no_poster": 19}
    toy_story = items[0]
    assert toy_story.token == "1" and toy_story.poster.name == "1.jpg"
    assert toy_story.text.startswith("Toy Story (1995). Genres: Animation, Children's, Comedy. Led by Woody")
    assert sum(i.poster is None for i in items) == 19


def test_item_text_template():
    assert item_text("Heat (1995)", ["Action", "Crime"], "A heist.") == "Heat (1995). Genres: Action, Crime. A heist."
    assert item_text("Heat (1995)", [], "") == "Heat (1995)"
    assert item_text("", ["Drama"], "Only a plot.") == "Genres: Drama. Only a plot."
    assert item_text(" ", [], " ") is None


def make_grouplens_zip(path):
    u_data = "1\t10\t4\t881250949\n1\t20\t3\t881250950\n2\t10\t5\t881250951\n"
    u_item = ("10|Heat (1995)|01-Jan-1995||http://x|0|1|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0\n"
              "20|Caf\xe9 Story (1996)|01-Jan-1996||http://x|0|0|0|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0\n")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ml-100k/u.data", u_data)
        zf.writestr("ml-100k/u.item", u_item.encode("latin-1"))
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_verify_extract_convert(tmp_path):
    archive = tmp_path / "ml-100k.zip"
    md5 = make_grouplens_zip(archive)
    folder = ensure_dataset("ml-100k", tmp_path / "root", url=archive.as_uri(), md5=md5)  # the real download path
    inter = (folder / "ml-100k.inter").read_text().splitlines()
    assert inter[0] == "user_id:token\titem_id:token\trating:float\ttimestamp:float" and len(inter) == 4
    item = (folder / "ml-100k.item").read_text().splitlines()
    assert item[1] == "10\tHeat\t1995\tAction Crime"
    assert item[2] == "20\tCaf\xe9 Story\t1996\tDrama"
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["ml-100k"]  # no temp folder left behind


def test_checksum_mismatch_is_rejected_and_leaves_nothing(tmp_path):
    archive = tmp_path / "ml-100k.zip"
    make_grouplens_zip(archive)
    with pytest.raises(ValueError, match="expected 0{32}: a corrupt or different archive"):
        ensure_dataset("ml-100k", tmp_path / "root", archive=archive, md5="0" * 32)
    assert list((tmp_path / "root").iterdir()) == []


def test_unknown_dataset_and_failed_download(tmp_path):
    with pytest.raises(KeyError, match="known datasets"):
        ensure_dataset("ml-25m", tmp_path)
    with pytest.raises(RuntimeError, match="no local copy of ml-1m"):
        ensure_dataset("ml-1m", tmp_path, url=(tmp_path / "absent.zip").as_uri())
    assert DATASETS["ml-100k"]["md5"] == "0e33842e24a9c977be4e0107933c0723"
