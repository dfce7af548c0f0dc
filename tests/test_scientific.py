"""The dataset-generic benchmark path end to end on a small slice of the shared Amazon-Scientific files:
its own protocol file (no re-filtering, leave-one-out in the given order), text only (no image stream, no zero
table), features through the generic catalogue source, results with a ``dataset`` field, and the report."""

from __future__ import annotations

import argparse
import json

import pytest

from conftest import SHARED

SCIENTIFIC = SHARED / "amazon-scientific"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (SCIENTIFIC / "amazon-scientific.inter").is_file(),
                                 reason=f"the shared Amazon-Scientific copy is not at {SCIENTIFIC}")]


@pytest.fixture(scope="module")
def scientific_slice(tmp_path_factory):
    """A data root holding ``amazon-scientific/`` with the first 40 users' interactions and their items' text."""
    root = tmp_path_factory.mktemp("scientific")
    folder = root / "amazon-scientific"
    folder.mkdir()
    header, *rows = (SCIENTIFIC / "amazon-scientific.inter").read_text().splitlines()
    users = list(dict.fromkeys(r.split("\t")[0] for r in rows))[:40]
    kept = [r for r in rows if r.split("\t")[0] in set(users)]
    (folder / "amazon-scientific.inter").write_text("\n".join([header, *kept]) + "\n")
    items = {r.split("\t")[1] for r in kept}
    item_header, *item_rows = (SCIENTIFIC / "amazon-scientific.item").read_text().splitlines()
    (folder / "amazon-scientific.item").write_text(
        "\n".join([item_header, *(r for r in item_rows if r.split("\t")[0] in items)]) + "\n")
    return root, len(users), len(items), len(kept)


def test_protocol_files_cover_every_benchmarked_dataset():
    from benchmarks import compat

    assert {"ml-100k", "amazon-scientific"} <= set(compat.DATASETS)
    scientific = compat.load_hparams(dataset="amazon-scientific")
    assert scientific["modalities"] == ["text"] and scientific["content"] == {"text_fields": ["text"]}
    assert scientific["recbole"]["item_inter_num_interval"] == "[0,inf)"  # the published split keeps 4-interaction items
    movielens = compat.load_hparams(dataset="ml-100k")
    assert movielens["modalities"] == ["text", "image"] and movielens["content"] is None
    with pytest.raises(KeyError, match="no benchmark protocol for dataset 'nope'"):
        compat.load_protocol("nope")


def test_scientific_runs_end_to_end_text_only(scientific_slice, tmp_path):
    from benchmarks import compat, report

    root, n_users, n_items, n_inter = scientific_slice
    out = tmp_path / "compat-amazon-scientific-quick.jsonl"
    argv = ["--dataset", "amazon-scientific", "--quick", "--data-dir", str(root), "--cache-dir", str(tmp_path / "cache"),
            "--models", "BPR,SASRec,M2SR", "--out", str(out), "--threads", "1"]
    assert compat.main(argv) == 0
    rows = {(r["model"], r["variant"]): r for r in compat.read_results(out)}
    assert set(rows) == {("BPR", "plain"), ("BPR", "fusion"), ("SASRec", "plain"), ("SASRec", "fusion"), ("M2SR", "standalone")}
    for (model, variant), row in rows.items():
        assert row["dataset"] == "amazon-scientific" and row["quick"] is True
        assert row["modalities"] == ([] if variant == "plain" else ["text"])
        assert row["n_users"] <= n_users and row["n_items"] <= n_items
        assert 0 <= row["test"]["full"]["ndcg@10"] <= 1 and len(row["per_user"]["ndcg@10"]) == row["n_users"]
    assert rows[("BPR", "fusion")]["fusion_params"] > 0 and rows[("BPR", "plain")]["fusion_params"] == 0
    text = report.report(out, "amazon-scientific", quick=True)
    assert "amazon-scientific" in text and "SASRec" in text


def test_attached_model_has_a_text_stream_only(scientific_slice, tmp_path):
    from benchmarks import compat

    root, *_ = scientific_slice
    hparams = compat.load_hparams(dataset="amazon-scientific")
    args = argparse.Namespace(dataset="amazon-scientific", data_dir=str(root), cache_dir=str(tmp_path / "cache"),
                              device="cpu", quick=True)
    extra = {k: v for k, v in hparams["quick"].items() if k != "users"}
    extra["checkpoint_dir"] = str(tmp_path / "saved")
    *_, model = compat.build_run("SASRec", "fusion", 0, args, hparams, data_root=root, extra=extra)
    adapter = model.fusion_adapter
    assert adapter.modalities == ["text"]
    assert set(adapter.fusion.projections) == {"id", "text"} or set(adapter.fusion.projections) == {"text"}
    assert not any("image" in name for name, _ in model.named_parameters())
    assert not any("image" in name for name, _ in model.named_buffers())
    assert json.loads(json.dumps(adapter.options.to_dict()))  # the recipe is recorded as JSON


def test_early_curves_record_a_diagnostic_line(scientific_slice, tmp_path):
    from benchmarks import early_curves

    root, *_ = scientific_slice
    out = tmp_path / "early.jsonl"
    argv = ["--dataset", "amazon-scientific", "--model", "BPR", "--epochs", "2", "--data-dir", str(root),
            "--cache-dir", str(tmp_path / "cache"), "--fusion-option", "backbone_loss=1.0", "--out", str(out)]
    assert early_curves.main(argv) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(row["valid_ndcg@10"]) == 2 and row["options"] == {"backbone_loss": 1.0} and row["commit"]
    assert "not a result" in row["diagnostic"]
    with pytest.raises(SystemExit):
        early_curves.main(["--model", "BPR", "--plain", "--fusion-option", "side=history"])


def test_coldstart_takes_the_dataset(scientific_slice, tmp_path):
    """The cold-start benchmark on the Scientific slice: its protocol (no re-filtering), its text features."""
    from benchmarks import coldstart, coldstart_report, compat

    root, *_ = scientific_slice
    out = tmp_path / "coldstart-amazon-scientific-quick.jsonl"
    argv = ["--dataset", "amazon-scientific", "--quick", "--data-dir", str(root), "--cache-dir", str(tmp_path / "cache"),
            "--models", "BPR,ContentKNN", "--variants", "plain,fusion+cold,standalone", "--out", str(out), "--threads", "1"]
    assert coldstart.main(argv) == 0
    rows = {(r["model"], r["variant"]): r for r in compat.read_results(out)}
    assert {("BPR", "plain"), ("BPR", "fusion+cold")} <= {key for key in rows if key[0] == "BPR"}
    assert any(model == "ContentKNN" for model, _ in rows)
    assert all(r["dataset"] == "amazon-scientific" for r in rows.values())
    full, _ = coldstart_report.report(out, quick=True, dataset="amazon-scientific")
    assert full.startswith("# Cold-start benchmark: amazon-scientific")
