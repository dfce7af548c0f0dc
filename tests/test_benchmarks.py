"""The benchmark harnesses: FLOP formulas, slope fit, budget guard, results file handling, --quick runs."""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import compat, queue, report, scaling


def test_sdpa_cpu_flops_are_counted_exactly():
    scaling.register_sdpa_cpu_flops()
    B, heads, L, d = 2, 2, 64, 16
    q = torch.randn(B, heads, L, d, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        out = F.scaled_dot_product_attention(q, q, q)
    assert counter.get_total_flops() == 4 * B * L * L * (heads * d)
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert counter.get_total_flops() > 0


def test_fusion_flops_linear_attention_quadratic():
    def fwd_flops(contender, L):
        model = scaling.build(contender, L)
        features, mask = scaling.make_inputs(1, L, "cpu")
        return scaling.count_flops(lambda: model(features, mask))

    assert fwd_flops("fusion", 256) == 2 * fwd_flops("fusion", 128)
    ratio = fwd_flops("attention", 512) / fwd_flops("attention", 256)
    assert 2.2 < ratio < 4  # the L^2 term shows


def test_slope_fit_on_synthetic_data():
    Ls = [64, 128, 256, 512, 1024, 2048]
    assert scaling.fit_slope(Ls, [3 * L for L in Ls]) == pytest.approx(1.0)
    assert scaling.fit_slope(Ls, [0.5 * L**2 for L in Ls]) == pytest.approx(2.0)
    assert scaling.fit_slope(Ls, [100 if L < 256 else L**1.5 for L in Ls]) == pytest.approx(1.5)  # upper half only
    assert scaling.fit_slope([64], [1.0]) is None


def test_budget_guard_marks_and_skips(monkeypatch):
    calls = []

    def fake_point(contender, L, args):
        calls.append((contender, L))
        if contender == "attention" and L >= 128:
            return {"contender": contender, "L": L, "status": "over budget"}
        return {"contender": contender, "L": L, "status": "ok", "fwd_bwd_ms": L / 10, "peak_mem_bytes": L, "flops": L}

    monkeypatch.setattr(scaling, "run_point_subprocess", fake_point)
    args = scaling.parse_args(["--lengths", "64,128,256", "--contenders", "fusion,attention", "--mem-budget-gb", "1"])
    result = scaling.sweep(args)
    statuses = {(p["contender"], p["L"]): p["status"] for p in result["points"]}
    assert statuses[("attention", 128)] == "over budget"
    assert statuses[("attention", 256)].startswith("skipped")
    assert ("attention", 256) not in calls
    assert result["slopes"]["fusion"]["time"] == pytest.approx(1.0)


def test_scaling_quick_runs_end_to_end(tmp_path):
    out = tmp_path / "scaling.json"
    assert scaling.main(["--quick", "--lengths", "16,32", "--out", str(out), "--budget-s", "30"]) == 0
    result = json.loads(out.read_text())
    assert {p["contender"] for p in result["points"]} == {"fusion", "attention", "sasrec"}
    for p in result["points"]:
        assert {"contender", "L", "fwd_ms", "fwd_bwd_ms", "peak_mem_bytes", "flops", "params", "status"} <= set(p)
    assert set(result["slopes"]) == {"fusion", "attention", "sasrec"} and result["gemm_gflops"] > 0
    assert {"command", "commit", "device", "date"} <= set(result)
    assert out.with_suffix(".png").is_file() and out.with_suffix(".csv").is_file()


def test_end_to_end_rows(monkeypatch):
    args = scaling.parse_args(["--e2e-lengths", "8", "--repeats", "1", "--predict-repeats", "3",
                               "--e2e-models", "SASRec,BPR,M2SR"])
    rows = scaling.end_to_end(args)
    assert {(r["model"], r["variant"]) for r in rows} == {("SASRec", "plain"), ("SASRec", "fusion"), ("BPR", "plain"),
                                                          ("BPR", "fusion"), ("M2SR", "standalone")}
    assert all(r["train_step_ms"] > 0 and r["predict_b256_p99_ms"] >= r["predict_b256_p50_ms"] for r in rows)


def test_results_file_malformed_lines_are_skipped_with_a_warning(tmp_path):
    path = tmp_path / "r.jsonl"
    good = {"dataset": "ml-100k", "model": "BPR", "variant": "plain", "seed": 0, "test": {}}
    path.write_text(json.dumps(good) + "\n{not json\n" + json.dumps({"model": "x"}) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = compat.read_results(path)
    assert rows == [good]
    messages = [str(w.message) for w in caught]
    assert any("r.jsonl:2" in m for m in messages) and any("r.jsonl:3" in m for m in messages)
    compat.append_result(path, {**good, "seed": 1})
    assert len(compat.read_results(path)) == 2


def test_bad_arguments_are_rejected():
    with pytest.raises(SystemExit):
        compat.parse_args(["--models", "SASRec,Caser"])
    with pytest.raises(SystemExit):
        compat.parse_args(["--dataset", "ml-25m"])
    with pytest.raises(SystemExit):
        scaling.parse_args(["--contenders", "mamba"])
    assert compat.grid(["BPR", "M2SR"], [0, 1])[:3] == [("BPR", "plain", 0), ("BPR", "fusion", 0), ("M2SR", "standalone", 0)]


@pytest.mark.needs_ml100k
@pytest.mark.slow
def test_compat_quick_end_to_end_and_report(tmp_path):
    out = tmp_path / "quick.jsonl"
    assert compat.main(["--quick", "--out", str(out)]) == 0
    rows = compat.read_results(out)
    assert {(r["model"], r["variant"]) for r in rows} == {(m, v) for m, v, _ in compat.grid(compat.MODELS, [0])}
    for row in rows:
        assert set(row["test"]) == {"full", "uni100"} and set(row["test"]["full"]) == {"mrr@10", "ndcg@10", "hit@10"}
        assert row["test"]["full"]["ndcg@10"] == pytest.approx(row["recbole_test"]["ndcg@10"], abs=1e-4)  # ours == RecBole's
        assert {"best_epoch", "train_seconds", "eval_seconds", "params", "commit", "torch", "device"} <= set(row)
    assert compat.main(["--quick", "--out", str(out)]) == 0  # resumes: nothing left to run
    assert len(compat.read_results(out)) == len(rows)
    text = report.report(out, "ml-100k", quick=True)
    assert "Wilcoxon" in text and "target pop" in text and out.with_suffix(".png").is_file()


def _fake_run(model, variant, seed, ndcg_per_user):
    n = len(ndcg_per_user)
    metrics = {"mrr@10": sum(ndcg_per_user) / n / 2, "ndcg@10": sum(ndcg_per_user) / n, "hit@10": 0.1}
    return {"dataset": "ml-100k", "model": model, "variant": variant, "seed": seed,
            "test": {"full": metrics, "uni100": metrics}, "valid": {"full": metrics, "uni100": metrics},
            "per_user": {"user": list(range(n)), "ndcg@10": ndcg_per_user, "target_pop": [5, 20, 100] * (n // 3)},
            "commit": "abc1234", "torch": "2", "device": "cpu", "date": f"2026-01-0{seed + 1}", "command": "x"}


def test_report_verdicts_and_readme_block(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 0.2, 300)
    rows = []
    for seed in range(3):
        rows += [_fake_run("GRU4Rec", "plain", seed, list(base)),
                 _fake_run("GRU4Rec", "fusion", seed, list(base * 1.5 + 0.01)),  # clearly better
                 _fake_run("BPR", "plain", seed, list(base)),
                 _fake_run("BPR", "fusion", seed, list(base * 0.9)),  # clearly worse
                 _fake_run("M2SR", "standalone", seed, list(base * 0.5))]
    rows.append(_fake_run("SASRec", "plain", 0, list(base)))
    rows.append(_fake_run("SASRec", "fusion", 0, list(base * 1.05 + 0.001)))  # small gain, one seed
    path = tmp_path / "r.jsonl"
    for row in rows:
        compat.append_result(path, row)
    lines = report.verdicts(report.group(compat.read_results(path), "ml-100k"))
    text = "\n".join(lines)
    assert "**GRU4Rec**" in text and "target met" in next(line for line in lines if "GRU4Rec" in line)
    assert "did **not** improve" in next(line for line in lines if "**BPR**" in line)
    (note,) = report.resolution({("x", "plain"): [_fake_run("x", "plain", 0, [0.0, 0.2, 0.0, 0.2])]})
    assert "mean over 4 users" in note and "50-50 %" in note  # sd 0.1, se 0.05, mean 0.1
    sasrec = next(line for line in lines if "**SASRec**" in line)
    assert "gain below +10%" in sasrec and "provisional" in sasrec
    assert "no paired" in next(line for line in lines if "**FPMC**" in line)
    assert "**below** it" in next(line for line in lines if "**M2SR**" in line)
    assert not any("MLPMixerRec" in line for line in lines)  # none run: no comparison

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{report.README_BEGIN}\nold table\n{report.README_END}\nafter\n")
    assert report.main(["--results", str(path), "--readme", str(readme)]) == 0
    new = readme.read_text()
    assert "old table" not in new and new.startswith("# x\n\nbefore\n") and new.endswith(f"{report.README_END}\nafter\n")
    assert "| GRU4Rec | fusion | 0,1,2 |" in new and "17 of 30 runs recorded" in new
    readme.write_text(f"# x\n<!-- summary:begin -->\nold\n<!-- summary:end -->\n{report.README_BEGIN}\n{report.README_END}\n")
    assert report.main(["--results", str(path), "--readme", str(readme), "--summary", str(readme)]) == 0  # the short answer
    summary = readme.read_text().split("<!-- summary:begin -->")[1].split("<!-- summary:end -->")[0]
    assert "old" not in summary and "- GRU4Rec + `attach()`: test NDCG@10 +" in summary
    assert "3 seeds): improved." in summary and "3 seeds): not improved." in summary
    assert "1 seed of 3: provisional): improved, below the +10% target." in summary
    assert "- FPMC: not measured yet." in summary and "17 of the grid's 30 runs recorded" in summary
    readme.write_text("# no markers\n")
    with pytest.raises(SystemExit):
        report.main(["--results", str(path), "--readme", str(readme)])
    with pytest.raises(SystemExit):
        report.main(["--results", str(path), "--summary", str(readme)])
    assert readme.read_text() == "# no markers\n"
    other = tmp_path / "README-other.md"  # another dataset's short answer has its own block
    other.write_text("# x\n<!-- summary-amazon-scientific:begin -->\n<!-- summary-amazon-scientific:end -->\n")
    rows = [{**json.loads(line), "dataset": "amazon-scientific"} for line in path.read_text().splitlines() if line.strip()]
    scientific = tmp_path / "compat-amazon-scientific.jsonl"
    scientific.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert report.main(["--dataset", "amazon-scientific", "--results", str(scientific), "--summary", str(other)]) == 0
    assert "docs/compatibility-amazon-scientific.md" in other.read_text()


def test_inference_cache_benchmark_writes_results(tmp_path):
    from benchmarks import inference_cache

    out = tmp_path / "cache.json"
    assert inference_cache.main(["--models", "BPR", "--calls", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["model"] == "BPR" and row["uncached_p50_ms"] > 0 and row["cached_p50_ms"] > 0
    assert {"command", "commit", "device", "date"} <= set(result)
    with pytest.raises(SystemExit):
        inference_cache.main(["--models", "Caser"])


def test_workers_share_the_grid_through_claims(tmp_path, monkeypatch):
    out = tmp_path / "r.jsonl"
    ran = []

    def fake_run_one(model, variant, seed, args, hparams, state_dir=None):
        ran.append((model, variant, seed))
        assert queue.claims_dir(out).joinpath(f"ml-100k__{model}__{variant}__{seed}__False.json").is_file()
        return {**_fake_run(model, variant, seed, [0.1, 0.2, 0.3]), "best_epoch": 1, "epochs_run": 1, "train_seconds": 1.0}

    monkeypatch.setattr(compat, "run_one", fake_run_one)
    monkeypatch.setattr(compat, "RESULTS", tmp_path)  # no recipe-search run to reuse
    held = queue.claim_run(out, ("ml-100k", "BPR", "fusion", 0, False))  # a live worker (this process) holds it
    assert held is not None and queue.claim_run(out, ("ml-100k", "BPR", "fusion", 0, False)) is None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = queue.claims_dir(out) / "ml-100k__FPMC__plain__0__False.json"
    stale.write_text(json.dumps({"pid": dead.pid, "host": platform.node(), "started": 0}))
    assert compat.main(["--models", "BPR,FPMC", "--seeds", "0", "--out", str(out)]) == 0
    assert ran == [("BPR", "plain", 0), ("FPMC", "plain", 0), ("FPMC", "fusion", 0)]  # the stale claim was taken over
    assert {f.name for f in queue.claims_dir(out).iterdir()} == {held.name}  # finished runs release their claims
    held.unlink()
    assert compat.main(["--models", "BPR,FPMC", "--seeds", "0", "--out", str(out)]) == 0
    assert ran[-1] == ("BPR", "fusion", 0) and len(compat.read_results(out)) == 4
    with pytest.raises(SystemExit):
        compat.parse_args(["--workers", "0"])
    assert compat.without_workers(["--seeds", "1", "--workers", "2", "--threads", "1", "--workers=3"]) == [
        "--seeds", "1", "--threads", "1"]


def test_fusion_options_are_checked_before_training(tmp_path):
    assert compat.parse_fusion_options(["output_dropout=0.5", "hidden_size=16"]) == {"output_dropout": 0.5, "hidden_size": 16}
    for bad, words in [("foo=1", "unknown attach() option(s) ['foo']; valid options: "), ("hidden_size=-1", "hidden_size"),
                       ("output_dropout=1.5", "[0, 1)"), ("hidden_size", "KEY=VALUE")]:
        with pytest.raises(ValueError, match=re.escape(words)):
            compat.parse_fusion_options([bad])
    with pytest.raises(SystemExit):  # a variant never writes into the main grid's file
        compat.parse_args(["--fusion-option", "output_dropout=0.5"])
    with pytest.raises(SystemExit):
        compat.parse_args(["--fusion-option", "output_dropout=0.5", "--models", "M2SR", "--out", str(tmp_path / "a.jsonl")])
    args = compat.parse_args(["--fusion-option", "hidden_size=16", "--models", "BPR,M2SR", "--out", str(tmp_path / "a.jsonl")])
    assert args.fusion_options == {"hidden_size": 16}
    assert compat.grid(args.models, [0, 1], fusion_only=True) == [("BPR", "fusion", 0), ("BPR", "fusion", 1)]



def test_curve_stats_measure_how_far_the_chosen_epoch_stands_out():
    curve = [0.10, 0.12, 0.11, 0.20, 0.11, 0.12, 0.10]  # a lucky spike at epoch 3
    row = {"best_epoch": 3, "valid_curve": [{"epoch": e, "ndcg@10": v} for e, v in enumerate(curve)]}
    stats = report.curve_stats(row)
    assert stats["best"] == 0.20 and abs(stats["around"] - 0.115) < 1e-12
    assert abs(stats["peak_excess"] - (0.20 / 0.115 - 1)) < 1e-12 and stats["jitter"] > 0.3
    smooth = {"best_epoch": 3, "valid_curve": [{"epoch": e, "ndcg@10": 0.1 + 0.001 * min(e, 3)} for e in range(7)]}
    assert report.curve_stats(smooth)["peak_excess"] < 0.01 < stats["peak_excess"]
    partial = {"best_epoch": 5, "valid_curve": row["valid_curve"][4:]}  # resumed from a snapshot without a curve
    assert report.curve_stats(partial) is None and report.curve_stats({"best_epoch": 1}) is None
    table = report.curve_table({("BPR", "fusion"): [{**row, "seed": 0}], ("BPR", "plain"): [{"seed": 0, "best_epoch": 2}]})
    assert any(line.startswith("| BPR | fusion | 0 | 0.2000 | 0.1150 | +73.9 % |") for line in table)
    assert "No run has a complete" in report.curve_table({})[0]


def test_patience_report_sets_the_study_beside_the_main_grid(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 0.2, 300)
    main, study = tmp_path / "main.jsonl", tmp_path / "patience-30.jsonl"
    curve = [{"epoch": e, "ndcg@10": 0.05 + 0.001 * e} for e in range(40)]
    for seed in (0, 1):
        for path, patience, scale in ((main, 10, 0.9), (study, 30, 1.3)):
            for variant, factor in (("plain", 1.0), ("fusion", scale)):
                row = {**_fake_run("BPR", variant, seed, list(base * factor + 0.001)), "best_epoch": 20 + patience,
                       "epochs_run": 30 + patience, "hparams": {"stopping_step": patience}}
                if path == study:
                    row["valid_curve"] = curve
                compat.append_result(path, row)
    with pytest.raises(SystemExit):
        report.main(["--results", str(main), "--patience", str(tmp_path / "missing.jsonl")])
    assert report.main(["--results", str(main), "--patience", str(study)]) == 0
    text = study.with_suffix(".md").read_text()
    assert "patience 30 against 10" in text and f"`{main.as_posix()}` (the baseline)" in text
    assert "| BPR | fusion | 0 | 30 / 40 |" in text and "| 50 / 60 |" in text
    verdict = next(line for line in text.splitlines() if line.startswith("- **BPR**"))
    assert "+29.7 %" in verdict and "provisional" in verdict and "p = " in verdict

def test_patience_study_needs_its_own_results_file(tmp_path, monkeypatch):
    for argv in (["--patience", "30"], ["--patience", "0", "--out", str(tmp_path / "p.jsonl")]):
        with pytest.raises(SystemExit):  # the main grid's rows all share compat_config.json's patience
            compat.parse_args(argv)
    args = compat.parse_args(["--patience", "30", "--models", "BPR", "--out", str(tmp_path / "p.jsonl")])
    assert args.patience == 30 and compat.parse_args([]).patience is None
    assert compat.load_hparams()["models"]["BPR"]["stopping_step"] == 30  # BPR's own patience in the main grid
    seen = []
    row = {"test": {"full": {"ndcg@10": 0.1, "mrr@10": 0.1}}, "best_epoch": 1, "epochs_run": 2, "train_seconds": 1}
    monkeypatch.setattr(compat, "run_one", lambda model, variant, seed, args, hparams, **k: seen.append(
        {**hparams["common"], **hparams["models"][model]}["stopping_step"]) or row)
    monkeypatch.setattr(compat, "append_result", lambda *a, **k: None)
    compat.main(["--patience", "10", "--models", "BPR,FPMC", "--variants", "plain", "--seeds", "0",
                 "--out", str(tmp_path / "p10.jsonl")])
    assert seen == [10, 10]  # --patience wins over a backbone's own stopping_step


def test_ablation_report_compares_on_validation(tmp_path):
    base = list(np.linspace(0.0, 0.2, 30))
    main_path, ablation = tmp_path / "main.jsonl", tmp_path / "ablation"
    for seed in (0, 1):
        for variant, scale in [("plain", 1.0), ("fusion", 0.9)]:
            compat.append_result(main_path, {**_fake_run("BPR", variant, seed, [x * scale for x in base]),
                                             "hparams": {"fusion": {"output_dropout": 0.2}} if variant == "fusion" else {}})
        compat.append_result(ablation / "od.jsonl", {**_fake_run("BPR", "fusion", seed, [x * (1.1 + seed * 0.2) for x in base]),
                                                     "hparams": {"fusion": {"output_dropout": 0.5}}})
    compat.append_result(ablation / "od.jsonl", {**_fake_run("FPMC", "fusion", 0, base),
                                                 "hparams": {"fusion": {"output_dropout": 0.5}}})
    assert report.main(["--results", str(main_path), "--ablation", str(ablation)]) == 0
    text = (ablation / "report.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| BPR | 0 |"))
    assert "output_dropout=0.5" in row and "+22.2 %" in row  # 1.1 / 0.9 on validation
    assert "FPMC seed 0 (od.jsonl)" in text  # no main-grid pair: named, not dropped
    summary = next(line for line in text.splitlines() if line.startswith("| BPR | output_dropout=0.5 | 0,1 |"))
    assert "| +20.0 % |" in summary  # mean of 1.1x and 1.3x the plain run, on test
    assert float(summary.rstrip(" |").rsplit("|", 1)[1]) < 0.05  # every user better: a one-sided Wilcoxon p
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):  # a folder with no results: a clear error, no report.md
        report.main(["--results", str(main_path), "--ablation", str(tmp_path / "empty")])
    assert not (tmp_path / "empty" / "report.md").exists()


def _cost_row(model, variant, step_ms, flops, b1_ms, batch=256):
    return {"model": model, "variant": variant, "status": "ok", "batch_size": batch, "step_ms": step_ms, "flops": flops,
            "gemm_gflops": 100.0, "predict_b1": {"p50_ms": b1_ms, "p99_ms": b1_ms * 2},
            "predict_b256": {"p50_ms": 10.0}, "peak_mem_bytes": 0}


def test_step_cost_targets_and_readme_block(tmp_path):
    from benchmarks import step_cost

    rows = [_cost_row("BPR", "plain", 2.0, 1e9, 0.1, 2048), _cost_row("BPR", "fusion", 30.0, 2e9, 0.6, 2048),
            _cost_row("SASRec", "plain", 200.0, 1e11, 1.0), _cost_row("SASRec", "fusion", 250.0, 1.01e11, 2.5)]
    step_cost.add_ratios(rows)
    bpr, sasrec = rows[1], rows[3]
    assert bpr["floor_ms"] == 10.0 and bpr["added_ms"] == 28.0 and bpr["met"]  # 28 <= 3 x 10 + 1
    assert sasrec["step_ratio"] == 1.25 and not sasrec["met"] and not sasrec["predict_met"]  # 1.25 > 1.15; +1.5 ms
    result = {"command": "python -m benchmarks.step_cost", "commit": "abc", "device": "cpu", "torch": "2", "date": "d",
              "rows": rows}
    before = {**result, "commit": "old", "rows": [{**sasrec, "step_ms": 400.0, "step_ratio": 2.0}]}
    block = step_cost.readme_block(result, before)
    assert "250.0 (before: 400.0)" in block and "1.25 (before: 2.00)" in block
    assert "- BPR: attaching adds 28.0 ms per step, target <= 3 x floor 10.0 + 1 = 31.0 ms: met." in block
    assert "- SASRec: attached step 1.25x plain, target <= 1.15x: **missed**." in block
    assert "adds 1.50 ms (target <= 1 ms): **missed**" in block
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- stepcost:begin -->\nold\n<!-- stepcost:end -->\ny\n")
    out = tmp_path / "cost.json"
    out.write_text(json.dumps(result))
    assert step_cost.main(["--markdown-only", "--out", str(out), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and "at commit `abc`" in text and text.endswith("<!-- stepcost:end -->\ny\n")


@pytest.mark.parametrize("model, variant", [("GRU4Rec", "plain"), ("BPR", "fusion")])
def test_a_run_stopped_part_way_resumes_and_trains_as_if_uninterrupted(tmp_path, monkeypatch, model, variant):
    from recbole.trainer import Trainer

    hparams = compat.load_hparams()
    hparams["quick"] = {**hparams["quick"], "epochs": 4, "stopping_step": 10}
    monkeypatch.setattr(compat, "load_hparams", lambda *a, **k: hparams)
    argv = ["--quick", "--models", model, "--variants", variant, "--threads", "1"]
    whole = tmp_path / "whole.jsonl"
    assert compat.main([*argv, "--out", str(whole)]) == 0
    cut = tmp_path / "cut.jsonl"
    original = Trainer._train_epoch

    def stop_in_epoch_2(self, train_data, epoch_idx, *args, **kwargs):
        if epoch_idx == 2:
            raise KeyboardInterrupt  # a stop in the middle of epoch 2, after its snapshot
        return original(self, train_data, epoch_idx, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_train_epoch", stop_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        compat.main([*argv, "--out", str(cut)])
    state_dir = compat.run_state_dir(cut, ("ml-100k", model, variant, 0, True))
    assert (state_dir / "state.pth").is_file() and not compat.read_results(cut)
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    assert compat.main([*argv, "--out", str(cut)]) == 0
    (a,), (b,) = compat.read_results(whole), compat.read_results(cut)
    assert b["resumed_at"] == [2] and "resumed_at" not in a
    assert (b["epochs_run"], b["best_epoch"]) == (a["epochs_run"], a["best_epoch"]) == (4, b["best_epoch"])
    assert b["test"] == a["test"] and b["valid"] == a["valid"]  # the same training, epoch for epoch
    assert [e["epoch"] for e in a["valid_curve"]] == [0, 1, 2, 3] and b["valid_curve"] == a["valid_curve"]
    assert not state_dir.exists()  # recorded: the snapshot is gone


def test_a_snapshot_of_another_configuration_is_not_resumed(tmp_path, monkeypatch, caplog):
    hparams = compat.load_hparams()
    hparams["quick"] = {**hparams["quick"], "epochs": 3, "stopping_step": 10}
    monkeypatch.setattr(compat, "load_hparams", lambda *a, **k: hparams)
    out = tmp_path / "r.jsonl"
    state_dir = compat.run_state_dir(out, ("ml-100k", "BPR", "plain", 0, True))
    state_dir.mkdir(parents=True)
    torch.save({"fingerprint": {"model": "something else"}, "start_epoch": 2}, state_dir / "state.pth")
    with caplog.at_level("WARNING", logger="fusionlayer.bench.resume"):
        assert compat.main(["--quick", "--models", "BPR", "--variants", "plain", "--out", str(out)]) == 0
    assert "another configuration" in caplog.text
    (row,) = compat.read_results(out)
    assert row["epochs_run"] == 3 and "resumed_at" not in row


@pytest.mark.needs_ml100k
def test_a_snapshot_whose_optimizer_does_not_fit_starts_over_untouched(setups, tmp_path, caplog):
    """A snapshot of the same configuration from code with other parameters (the per-stream Mixer's, before the
    grouped one) is not resumed: the optimizer's refusal comes before the model is touched, and the run starts over."""
    from benchmarks.resume import STATE, ResumableTrainer
    from conftest import fresh

    model, _, (config, train, _, _, _) = fresh("SASRec", setups)
    trainer = ResumableTrainer(config, model, tmp_path / "run", {"same": 1})
    trainer._snapshot(2, train)
    state = torch.load(tmp_path / "run" / STATE, weights_only=False)
    group = state["optimizer"]["param_groups"][0]
    group["params"] = group["params"][:-2]  # two parameters fewer, as a differently laid-out model would have
    state["model"] = {k: v + 1 for k, v in state["model"].items()}
    torch.save(state, tmp_path / "run" / STATE)
    other, _, _ = fresh("SASRec", setups)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with caplog.at_level("WARNING", logger="fusionlayer.bench.resume"):
        resumed = ResumableTrainer(config, other, tmp_path / "run", {"same": 1})
    assert "written for other parameters" in caplog.text and resumed.start_epoch == 0
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())
