"""Turn the compatibility results (.jsonl) into tables, significance tests, a popularity breakdown and a PNG.

    python -m benchmarks.report [--results benchmarks/results/compat-ml-100k.jsonl]

Writes ``<results>.md`` and ``<results>.png`` next to the results file and prints the markdown.

* Main table: mean +- std over seeds of test MRR@10 / NDCG@10 / Hit@10, full ranking; the relative
  change of +fusion over plain per backbone.
* Secondary table: the same test users ranked against 100 uniformly sampled negatives.
* Significance: per backbone, one-sided Wilcoxon signed-rank test (H1: fusion > plain) on per-user
  test NDCG@10, each user's value averaged over the seeds both variants finished.
* Popularity: NDCG@10 by the test item's number of training interactions (<= 10, 11-50, > 50).
* Targets: per backbone, whether fusion reached +10 % NDCG@10 (mean of 3 seeds) with p < 0.05, and whether
  M2SR matches the best plain backbone, said plainly, with the seeds each verdict rests on.

``--ablation DIR`` reports the ``--fusion-option`` variants whose results lie in ``DIR/*.jsonl`` against the
main grid's plain and default +fusion runs of the same backbone and seed, on **validation** NDCG@10 (the split
options are chosen on), with test NDCG@10 beside it for the record; writes ``DIR/report.md``.

``--readme docs/compatibility-<dataset>.md`` also replaces the part of that page between ``<!-- compat:begin -->``
and ``<!-- compat:end -->`` with the main table, the significance table and the verdicts; ``--summary README.md``
replaces the dataset's short answer in the README (``<!-- summary:begin -->`` for ML-100K,
``<!-- summary-<dataset>:begin -->`` otherwise). Tables are produced by a command, never typed.
"""

from __future__ import annotations

import argparse
import json
import os
import math
import sys
import statistics
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks.compat import read_results
from benchmarks.figures import save_png, subplots
from benchmarks.models import BACKBONES, STANDALONE, variants
from benchmarks.provenance import atomic_write_bytes, runs_summary
from fusionlayer.config import AdapterOptions

HERE = Path(__file__).resolve().parent

METRICS = ["mrr@10", "ndcg@10", "hit@10"]
POPULARITY_BINS = [(0, 10, "<= 10"), (11, 50, "11-50"), (51, 10**9, "> 50")]
PAPER_FILE = HERE / "paper_numbers.json"
REFERENCE_FILE = HERE / "reference_plain.json"
TARGET_GAIN = 0.10  # +10 % relative NDCG@10, issue 5
TARGET_P = 0.05
FULL_SEEDS = 3
README_BEGIN, README_END = "<!-- compat:begin -->", "<!-- compat:end -->"


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def group(rows: list[dict], dataset: str, quick: bool = False) -> dict[tuple[str, str], list[dict]]:
    """Runs by (model, variant), one per seed: a duplicated run is dropped with a warning (the first
    recorded one counts), so tables, means and significance tests all rest on the same runs."""
    groups, seen = defaultdict(list), set()
    for row in rows:
        if row["dataset"] == dataset and bool(row.get("quick")) == quick:
            key = (row["model"], row["variant"], int(row["seed"]))
            if key in seen:
                warnings.warn(f"duplicate run {key} in the results; the first recorded one counts", stacklevel=2)
                continue
            seen.add(key)
            groups[(row["model"], row["variant"])].append(row)
    return groups


def metric_table(groups, protocol: str) -> list[str]:
    lines = ["| model | variant | seeds | MRR@10 | NDCG@10 | Hit@10 | NDCG@10 vs plain (same seeds) |",
             "|---|---|---|---|---|---|---|"]
    for model in BACKBONES + STANDALONE:
        for variant in variants(model):
            runs = groups.get((model, variant), [])
            if not runs:
                lines.append(f"| {model} | {variant} | none | not run yet | | | |")
                continue
            cells = [mean_std([r["test"][protocol][m] for r in runs]) for m in METRICS]
            change = ""
            plain = groups.get((model, "plain"), [])
            paired = sorted({r["seed"] for r in runs} & {r["seed"] for r in plain})
            if variant == "fusion" and paired:  # over the seeds both variants have
                a = statistics.fmean(r["test"][protocol]["ndcg@10"] for r in runs if r["seed"] in paired)
                b = statistics.fmean(r["test"][protocol]["ndcg@10"] for r in plain if r["seed"] in paired)
                change = f"{(a - b) / b * 100:+.1f} %" if b else "n/a"
                if len(paired) < len(plain):
                    change += f" (seed{'s' if len(paired) > 1 else ''} {','.join(map(str, paired))})"
            seeds = ",".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))
            lines.append(f"| {model} | {variant} | {seeds} | " + " | ".join(cells) + f" | {change} |")
    return lines


def per_user(runs: list[dict]) -> dict[int, tuple[float, int]]:
    """user -> (NDCG@10 averaged over the given runs, target popularity)."""
    values, pops = defaultdict(list), {}
    for run in runs:
        pu = run["per_user"]
        for user, ndcg, pop in zip(pu["user"], pu["ndcg@10"], pu["target_pop"]):
            values[user].append(ndcg)
            pops[user] = pop
    return {u: (statistics.fmean(v), pops[u]) for u, v in values.items()}


def paired_users(groups, model: str) -> tuple[list[int], dict, dict] | None:
    """``(seeds, plain per user, fusion per user)`` of ``model`` over the seeds both variants have (:func:`per_user`),
    or None when no seed has both."""
    plain = {r["seed"]: r for r in groups.get((model, "plain"), [])}
    fusion = {r["seed"]: r for r in groups.get((model, "fusion"), [])}
    seeds = sorted(set(plain) & set(fusion))
    if not seeds:
        return None
    return seeds, per_user([plain[s] for s in seeds]), per_user([fusion[s] for s in seeds])


def paired_backbones(groups):
    """``(backbone, seeds, plain per user, fusion per user)`` for each backbone with a seed that has both variants."""
    for model in BACKBONES:
        paired = paired_users(groups, model)
        if paired is not None:
            yield (model, *paired)


def paired_tests(groups) -> dict[str, dict]:
    """backbone -> {seeds, users, plain, fusion, p}: one-sided Wilcoxon signed-rank, H1 fusion > plain."""
    from scipy.stats import wilcoxon

    tests = {}
    for model, seeds, a, b in paired_backbones(groups):
        users = sorted(set(a) & set(b))
        x, y = np.array([a[u][0] for u in users]), np.array([b[u][0] for u in users])
        p = float(wilcoxon(y, x, alternative="greater", zero_method="wilcox").pvalue) if np.any(x != y) else 1.0
        tests[model] = {"seeds": seeds, "users": len(users), "plain": float(x.mean()), "fusion": float(y.mean()), "p": p}
    return tests


def significance(groups) -> list[str]:
    lines = ["| backbone | seeds paired | users | mean NDCG@10 plain | mean NDCG@10 fusion | Wilcoxon one-sided p (fusion > plain) |",
             "|---|---|---|---|---|---|"]
    tests = paired_tests(groups)
    for model in BACKBONES:
        t = tests.get(model)
        if t is None:
            lines.append(f"| {model} | none | | | | |")
            continue
        lines.append(f"| {model} | {','.join(map(str, t['seeds']))} | {t['users']} | {t['plain']:.4f} | {t['fusion']:.4f} | {t['p']:.2g} |")
    return lines


def resolution(groups) -> list[str]:
    """How finely one run's test NDCG@10 is measured: the standard error of its per-user mean, as a share of it."""
    shares = []
    for runs in groups.values():
        for run in runs:
            values = run["per_user"]["ndcg@10"]
            mean = statistics.fmean(values) if values else 0.0
            if len(values) > 1 and mean > 0:
                shares.append(statistics.pstdev(values) / len(values) ** 0.5 / mean)
    if not shares:
        return []
    users = max(len(run["per_user"]["ndcg@10"]) for runs in groups.values() for run in runs)
    return [f"Resolution: one run's test NDCG@10 is a mean over {users} users, with a standard error of "
            f"{min(shares) * 100:.0f}-{max(shares) * 100:.0f} % of its value across the runs above; a single seed "
            f"cannot tell a 10 % effect from noise, which is why the verdicts pool every seed per user."]


def _mean_ndcg(runs: list[dict]) -> float:
    return statistics.fmean(r["test"]["full"]["ndcg@10"] for r in runs)


def _paired_gain(groups, model: str, seeds: list[int]) -> tuple[list[dict], list[dict], float]:
    """(plain runs, fusion runs, relative change of mean test NDCG@10) over the seeds both variants have."""
    plain = [r for r in groups[(model, "plain")] if r["seed"] in seeds]
    fusion = [r for r in groups[(model, "fusion")] if r["seed"] in seeds]
    gain = (_mean_ndcg(fusion) - _mean_ndcg(plain)) / _mean_ndcg(plain) if _mean_ndcg(plain) else math.nan
    return plain, fusion, gain


def _per_backbone(groups):
    """``(backbone, paired test or None, (plain runs, fusion runs, gain))`` for each backbone, in order."""
    tests = paired_tests(groups)
    for model in BACKBONES:
        t = tests.get(model)
        yield model, t, (_paired_gain(groups, model, t["seeds"]) if t else ([], [], math.nan))


def targets(dataset: str) -> dict:
    """The dataset's targets (``benchmarks/protocols/<dataset>.json``): relative gain and p per backbone, and optional
    ``tail_gain`` (on the least popular 20 % of targets) and ``best_attached_ndcg@10``."""
    from benchmarks.compat import load_protocol

    try:
        return {"gain": TARGET_GAIN, "p": TARGET_P, **load_protocol(dataset).get("targets", {})}
    except KeyError:
        return {"gain": TARGET_GAIN, "p": TARGET_P}


def verdicts(groups, dataset: str = "ml-100k") -> list[str]:
    """The targets, one plain sentence per backbone plus M2SR against the best plain backbone."""
    goal = targets(dataset)
    TARGET_GAIN, TARGET_P = goal["gain"], goal["p"]  # noqa: N806 (the dataset's, over the module's defaults)
    lines = []
    for model, t, (plain, fusion, gain) in _per_backbone(groups):
        if t is None:
            lines.append(f"- **{model}**: no paired plain/fusion run yet; no verdict.")
            continue
        partial = "" if len(t["seeds"]) >= FULL_SEEDS else f" (only {len(t['seeds'])} of {FULL_SEEDS} seeds: provisional)"
        if not (math.isfinite(gain) and math.isfinite(t["p"])):
            lines.append(f"- **{model}**: no verdict: a metric or the test is not a number (NaN/zero in the runs of "
                         f"seeds {t['seeds']}); check those runs.")
            continue
        if gain <= 0:
            outcome = "fusion did **not** improve it"
        elif gain >= TARGET_GAIN and t["p"] < TARGET_P:
            outcome = "target met"
        else:
            why = [w for w, bad in ((f"gain below +{TARGET_GAIN:.0%}", gain < TARGET_GAIN),
                                    (f"p >= {TARGET_P}", t["p"] >= TARGET_P)) if bad]
            outcome = "improved, but target not met (" + ", ".join(why) + ")"
        lines.append(f"- **{model}**: NDCG@10 {_mean_ndcg(plain):.4f} -> {_mean_ndcg(fusion):.4f} ({gain * 100:+.1f} %), "
                     f"one-sided p = {t['p']:.2g}: {outcome}{partial}.")
    best = max(((m, _mean_ndcg(groups[(m, "plain")])) for m in BACKBONES if groups.get((m, "plain"))),
               key=lambda kv: kv[1], default=None)
    m2sr = groups.get(("M2SR", "standalone"), [])
    if best and m2sr:
        ok = _mean_ndcg(m2sr) >= best[1]
        partial = "" if len(m2sr) >= FULL_SEEDS else f" (M2SR on {len(m2sr)} of {FULL_SEEDS} seeds: provisional)"
        lines.append(f"- **M2SR** vs the best plain backbone ({best[0]}, {best[1]:.4f}): {_mean_ndcg(m2sr):.4f}, "
                     + ("matches or beats it" if ok else "**below** it: target not met") + partial + ".")
    else:
        lines.append("- **M2SR** vs the best plain backbone: not both run yet; no verdict.")
    lines += tail_verdicts(groups, goal.get("tail_gain")) + best_attached_verdict(groups, goal.get("best_attached_ndcg@10"))
    mixer = groups.get(("MLPMixerRec", "standalone"), [])
    if m2sr and mixer:
        seeds = sorted({r["seed"] for r in m2sr} & {r["seed"] for r in mixer})
        pair = [[r for r in runs if r["seed"] in seeds] for runs in (m2sr, mixer)]
        if seeds:
            ok = _mean_ndcg(pair[0]) >= _mean_ndcg(pair[1])
            partial = "" if len(seeds) >= FULL_SEEDS else f" (only {len(seeds)} of {FULL_SEEDS} seeds: provisional)"
            lines.append(f"- **M2SR** vs MLPMixerRec (the same Mixer on item IDs alone), seeds {','.join(map(str, seeds))}: "
                         f"{_mean_ndcg(pair[0]):.4f} against {_mean_ndcg(pair[1]):.4f}, "
                         + ("matches or beats it" if ok else "**below** it: target not met") + partial + ".")
    return lines


def training_table(groups) -> list[str]:
    """Per run: epochs run, the best epoch, why training stopped, wall time."""
    lines = ["| model | variant | seed | patience / epoch cap | epochs run | best epoch | stopped | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for model in BACKBONES + STANDALONE:
        for variant in variants(model):
            for r in sorted(groups.get((model, variant), []), key=lambda r: r["seed"]):
                if "stopped_early" in r:
                    stop = "early (patience)" if r["stopped_early"] else f"**on the cap** ({r.get('epoch_cap')})"
                else:
                    stop = "not recorded"
                hp = r.get("hparams", {})
                lines.append(f"| {model} | {variant} | {r['seed']} | {hp.get('stopping_step', '-')} / {hp.get('epochs', '-')} | "
                             f"{r.get('epochs_run', '-')} | {r.get('best_epoch', '-')} | "
                             f"{stop} | {r.get('train_seconds', '-')} |")
    return lines



def curve_stats(row: dict, metric: str = "ndcg@10", around: int = 2) -> dict | None:
    """What a run's validation curve says about its stopping point; None without a full curve.

    ``best``: the metric at the best epoch; ``around``: its mean over the ``around`` epochs either side
    (best excluded); ``peak_excess``: ``best / around - 1``, how far the chosen epoch stands above its
    neighbours (early stopping keeps the maximum of a noisy curve, so a large excess means the chosen
    validation score is partly luck that test will not share); ``jitter``: the standard deviation of the
    epoch-to-epoch change, relative to the curve's mean over its last half.
    """
    curve = {c["epoch"]: c[metric] for c in row.get("valid_curve", []) if metric in c}
    best_epoch = row.get("best_epoch")
    if best_epoch not in curve or 0 not in curve:  # a curve that starts at a resumed epoch is partial
        return None
    near = [curve[e] for e in range(best_epoch - around, best_epoch + around + 1) if e != best_epoch and e in curve]
    values = [curve[e] for e in sorted(curve)]
    steps = np.diff(values)
    tail = values[len(values) // 2:]
    return {"best": curve[best_epoch], "around": float(np.mean(near)) if near else float("nan"),
            "peak_excess": curve[best_epoch] / float(np.mean(near)) - 1 if near else float("nan"),
            "jitter": float(np.std(steps)) / float(np.mean(tail)) if len(steps) > 1 else float("nan")}


def curve_table(groups) -> list[str]:
    """Per run with a recorded validation curve: the chosen epoch against its neighbours, and the curve's jitter."""
    lines = ["| model | variant | seed | valid NDCG@10 at best epoch | mean of the 2 epochs either side | peak excess | "
             "epoch-to-epoch jitter |", "|---|---|---|---|---|---|---|"]
    found = False
    for model in BACKBONES + STANDALONE:
        for variant in variants(model):
            for r in sorted(groups.get((model, variant), []), key=lambda r: r["seed"]):
                stats = curve_stats(r)
                if stats is None:
                    continue
                found = True
                lines.append(f"| {model} | {variant} | {r['seed']} | {stats['best']:.4f} | {stats['around']:.4f} | "
                             f"{stats['peak_excess'] * 100:+.1f} % | {stats['jitter'] * 100:.1f} % |")
    if not found:
        return ["No run has a complete validation curve yet (runs recorded before curves were kept, or resumed from "
                "such a snapshot, have none)."]
    return lines + ["", "Peak excess: how far the chosen epoch's validation NDCG@10 stands above the mean of its "
                    "neighbours. Early stopping keeps the maximum of the curve, so on a jittery curve part of the chosen "
                    "score is luck that the test split does not share."]

def _protocol_file(dataset: str, key: str, default: Path) -> Path | None:
    """A file the dataset's protocol names (``reference_plain``, ``published``), beside the benchmarks."""
    from benchmarks.compat import load_protocol

    try:
        name = load_protocol(dataset).get(key)
    except KeyError:
        return default
    return HERE / name if name else None


def reference_check(groups, dataset: str = "ml-100k") -> list[str]:
    """Converged plain baselines (mean of seeds) against the dataset's reference runs (the 0.97x bar)."""
    path = _protocol_file(dataset, "reference_plain", REFERENCE_FILE)
    if path is None or not path.is_file():
        return []
    ref = json.loads(path.read_text())
    lines = [f"Reference: {ref['source']}", "", "| backbone | seeds | plain test NDCG@10 (mean) | reference | ratio | "
             f">= {ref['ratio']}x |", "|---|---|---|---|---|---|"]
    for model, value in ref["test_ndcg@10"].items():
        runs = groups.get((model, "plain"), [])
        if not runs:
            lines.append(f"| {model} | - | not run yet | {value:.4f} | - | - |")
            continue
        mean = _mean_ndcg(runs)
        seeds = ",".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))
        lines.append(f"| {model} | {seeds} | {mean:.4f} | {value:.4f} | {mean / value:.3f} | "
                     f"{'yes' if mean >= ref['ratio'] * value else '**no**'} |")
    return lines


TAIL_SHARE = 0.2  # the least popular 20 % of test targets: one bucket of its own


def tail_users(users: dict[int, tuple[float, int]]) -> set[int]:
    """The users whose test target is among the least popular 20 %: ordered by the target's training popularity
    (then by user id, so ties split the same way every time), the first 20 %. ``users`` as :func:`per_user` gives."""
    order = sorted(users, key=lambda u: (users[u][1], u))
    return set(order[:math.ceil(TAIL_SHARE * len(order))])


def tail_gains(groups) -> dict[str, tuple[float, float, int, int]]:
    """backbone -> (plain, fusion, users, largest target popularity among them): mean test NDCG@10 over the users whose
    target is among the least popular 20 % of the backbone's test targets (over the seeds both variants have)."""
    out = {}
    for model, _, a, b in paired_backbones(groups):
        users = tail_users({u: a[u] for u in set(a) & set(b)})
        if users:
            out[model] = (statistics.fmean(a[u][0] for u in users), statistics.fmean(b[u][0] for u in users), len(users),
                          max(a[u][1] for u in users))
    return out


def tail_verdicts(groups, goal: float | None) -> list[str]:
    if goal is None:
        return []
    lines = []
    for model, (plain, fusion, users, top) in tail_gains(groups).items():
        gain = (fusion - plain) / plain if plain else math.nan
        ok = math.isfinite(gain) and gain >= goal
        lines.append(f"- **{model}**, least popular 20 % of targets ({users} users, targets with <= {top} training "
                     f"interactions): {plain:.4f} -> {fusion:.4f} ({gain * 100:+.1f} %): "
                     + ("target met" if ok else f"target (+{goal:.0%}) **not** met") + ".")
    return lines


def best_attached_verdict(groups, goal: float | None) -> list[str]:
    if goal is None:
        return []
    attached = [(m, _mean_ndcg(groups[(m, "fusion")])) for m in BACKBONES if groups.get((m, "fusion"))]
    if not attached:
        return [f"- Best attached backbone >= {goal:.4f}: no attached run yet; no verdict."]
    model, value = max(attached, key=lambda kv: kv[1])
    return [f"- Best attached backbone: {model} + fusion, {value:.4f} against the {goal:.4f} target: "
            + ("met" if value >= goal else "**not** met") + "."]


def popularity(groups) -> list[str]:
    bins = POPULARITY_BINS
    header = ("| model | variant | " + " | ".join(f"target pop {label} (users)" for *_, label in bins)
              + " | least popular 20 % of targets (users) |")
    lines = [header, "|---|---|" + "---|" * (len(bins) + 1)]
    for model in BACKBONES + STANDALONE:
        for variant in variants(model):
            runs = groups.get((model, variant), [])
            if not runs:
                continue
            users = per_user(runs)
            cells = []
            for low, high, _ in bins:
                vals = [v for v, pop in users.values() if low <= pop <= high]
                cells.append(f"{statistics.fmean(vals):.4f} ({len(vals)})" if vals else "- (0)")
            tail = tail_users(per_user(groups.get((model, "plain")) or runs))  # the same users for both variants
            vals = [users[u][0] for u in tail if u in users]
            cells.append(f"{statistics.fmean(vals):.4f} ({len(vals)})" if vals else "- (0)")
            lines.append(f"| {model} | {variant} | " + " | ".join(cells) + " |")
    return lines


def paper_table(dataset: str = "ml-100k") -> list[str]:
    path = _protocol_file(dataset, "published", PAPER_FILE)
    if path is None:
        return [f"No published numbers for {dataset} are recorded here."]
    if not path.is_file():
        return ["The paper's reported ML-100K numbers are not in this repository (no copy of the paper could be read "
                "offline when this report was written); add them to `benchmarks/paper_numbers.json` as "
                "`{\"model\": {\"mrr@10\": .., \"ndcg@10\": .., \"hit@10\": ..}, \"source\": \"...\"}` and they appear here, "
                "labelled as the paper's."]
    paper = json.loads(path.read_text())
    lines = [f"Source: {paper.get('source', 'the paper')} (published numbers, not ours).", "",
             "| model | MRR@10 (paper) | NDCG@10 (paper) | Hit@10 (paper) |", "|---|---|---|---|"]
    for model, values in paper.items():
        if isinstance(values, dict):
            lines.append(f"| {model} | " + " | ".join(str(values.get(m, "-")) for m in METRICS) + " |")
    return lines


def anchors_table(groups, dataset: str) -> list[str]:
    """Published numbers (labelled, with their source) beside our converged runs (mean over the seeds run)."""
    path = _protocol_file(dataset, "published", None)
    if path is None or not path.is_file() or dataset == "ml-100k":  # ML-100K's paper numbers are not comparable
        return []
    published = json.loads(path.read_text())
    lines = ["| model | test NDCG@10 | test Recall@10 (= Hit@10) | whose |", "|---|---|---|---|"]
    for model, values in published.items():
        if isinstance(values, dict):
            lines.append(f"| {model} | {values.get('ndcg@10', '-')} | {values.get('hit@10', '-')} | published |")
    for model in BACKBONES + STANDALONE:
        for variant in variants(model):
            runs = groups.get((model, variant), [])
            if runs:
                hit = statistics.fmean(r["test"]["full"]["hit@10"] for r in runs)
                name = model + {"plain": "", "fusion": " + fusion", "standalone": ""}[variant]
                lines.append(f"| {name} | {_mean_ndcg(runs):.4f} | {hit:.4f} | ours ({len(runs)} seed"
                             f"{'s' if len(runs) > 1 else ''}) |")
    return lines


def recipe_runs(dataset: str) -> list[str]:
    """The +fusion recipe search's recorded runs on ``dataset`` (``results/tuning/<dataset>-<model>.jsonl``, seed 0's
    candidates and confirmations), beside the plain baseline's validation score: what was tried, on validation."""
    folder, lines = HERE / "results" / "tuning", []
    plain = {(r["model"], r["seed"]): r["valid"]["full"]["ndcg@10"] for r in read_results(HERE / "results" / f"compat-{dataset}.jsonl")
             if r["variant"] == "plain" and not r.get("quick")}
    for model in BACKBONES:
        for path in (folder / f"{dataset}-{model}.jsonl", folder / f"confirm-{dataset}-{model}.jsonl"):
            for r in read_results(path):
                base = plain.get((model, r["seed"]))
                valid = r["valid"]["full"]["ndcg@10"]
                change = f"{100 * (valid / base - 1):+.1f} %" if base else "-"
                lines.append(f"| {model} | {r.get('candidate', '-')} | {r['seed']} | {valid:.4f} | {change} | "
                             f"{r['test']['full']['ndcg@10']:.4f} | {r['best_epoch']} / {r['epochs_run']} | {r['commit']} |")
    head = ["| backbone | candidate | seed | valid NDCG@10 | vs plain (valid) | test NDCG@10 | best epoch / run | commit |",
            "|---|---|---|---|---|---|---|---|"] if lines else []
    early = folder / f"early-curves-{dataset}.jsonl"
    curves = [json.loads(line) for line in early.read_text().splitlines() if line.strip()] if early.is_file() else []
    out = head + lines
    if curves:
        out += ["" if out else "No converged recipe-search run recorded yet.", "", "Early validation curves (diagnostics, not results: a few epochs each, seed 0; "
                f"`python -m benchmarks.early_curves`, lines in `{os.path.relpath(early, HERE.parent)}`):", "",
                "| backbone | variant | options | valid NDCG@10 after each epoch | commit |", "|---|---|---|---|---|"]
        for c in curves:
            options = ", ".join(f"{k}={v}" for k, v in c["options"].items()) + (" (zero content: a control)" if c.get("zero_content") else "")
            out.append(f"| {c['model']} | {c['variant']} | {options or '-'} | {', '.join(f'{v:.4f}' for v in c['valid_ndcg@10'])} | "
                       f"{c['commit']} |")
    return out


def bar_chart(groups, path: Path) -> None:
    models = [m for m in BACKBONES if groups.get((m, "plain")) or groups.get((m, "fusion"))]
    fig, ax = subplots(figsize=(7, 3.6))
    for offset, variant, color in ((-0.2, "plain", "#9aa5b1"), (0.2, "fusion", "#2f6fde")):
        means = [statistics.fmean(r["test"]["full"]["ndcg@10"] for r in groups.get((m, variant), [])) if groups.get((m, variant)) else 0 for m in models]
        stds = [statistics.stdev(r["test"]["full"]["ndcg@10"] for r in groups[(m, variant)]) if len(groups.get((m, variant), [])) > 1 else 0 for m in models]
        ax.bar(np.arange(len(models)) + offset, means, 0.4, yerr=stds, label=variant if variant == "plain" else "+ fusion", color=color)
    for i, model in enumerate(STANDALONE):
        runs = groups.get((model, "standalone"), [])
        if runs:
            ax.axhline(statistics.fmean(r["test"]["full"]["ndcg@10"] for r in runs), ls="--" if i else ":", color="k",
                       lw=1, label=f"{model} (standalone)")
    ax.set_xticks(np.arange(len(models)), models)
    ax.set_ylabel("test NDCG@10 (full ranking)")
    ax.legend(fontsize=8)
    save_png(fig, path)


def provenance(rows: list[dict], quick: bool) -> list[str]:
    full = [r for r in rows if bool(r.get("quick")) == quick]
    return [runs_summary(full) + "."] if full else []


def report(results: Path, dataset: str, quick: bool = False) -> str:
    rows = read_results(results)
    groups = group(rows, dataset, quick)
    title = f"# Compatibility benchmark: {dataset}" + (" (--quick wiring check: 1 epoch, 60 users; not a result)" if quick else "")
    lines = [title, "", *provenance(rows, quick), "",
             "## Test metrics, full ranking over all items (mean ± std over seeds)", "", *metric_table(groups, "full"), "",
             "## Test metrics, 100 uniformly sampled negatives (secondary; same users and models)", "",
             *metric_table(groups, "uni100"), "",
             "## Paired significance (per-user test NDCG@10, full ranking)", "", *significance(groups), "",
             *resolution(groups), "",
             "## Targets", "", *verdicts(groups, dataset), "",
             "## Converged plain baselines against the reference runs", "", *reference_check(groups, dataset), "",
             "## Training per run (early stopping on validation MRR@10)", "", *training_table(groups), "",
             "## Validation curves: the chosen epoch against its neighbours", "", *curve_table(groups), "",
             "## NDCG@10 by popularity of the test item (training interactions)", "", *popularity(groups), "",
             "## Published numbers (other papers' runs and protocols)", "", *paper_table(dataset), "",
             *anchors_table(groups, dataset), "",
             "## The +fusion recipe search (validation chooses; test recorded)", "",
             *(recipe_runs(dataset) or ["No recipe-search run recorded for this dataset."]), ""]
    text = "\n".join(lines)
    atomic_write_bytes(results.with_suffix(".md"), text.encode())
    bar_chart(groups, results.with_suffix(".png"))
    return text


def docs_page(dataset: str) -> str:
    """Where a dataset's compatibility block is shown: ``docs/compatibility-<dataset>.md``."""
    return f"docs/compatibility-{dataset}.md"


def summary_block(dataset: str) -> str:
    """The README block with a dataset's short answer: ``summary`` (ML-100K, the first) or ``summary-<dataset>``."""
    return "summary" if dataset == "ml-100k" else f"summary-{dataset}"


def readme_section(results: Path, dataset: str) -> str:
    """A dataset's compatibility block (its page under docs/): provenance, main table, significance, verdicts, links."""
    rows = read_results(results)
    groups = group(rows, dataset)
    runs = sum(len(v) for v in groups.values())
    expected = FULL_SEEDS * (2 * len(BACKBONES) + len(STANDALONE))
    rel = os.path.relpath(results, HERE.parent)
    lines = [f"Produced by `python -m benchmarks.compat --dataset {dataset}` then `python -m benchmarks.report "
             f"--dataset {dataset} --readme {docs_page(dataset)} --summary README.md`"
             f" ({runs} of {expected} runs recorded).", *provenance(rows, False), "",
             f"Full report (the table against 100 sampled negatives, NDCG by target popularity, the paper's numbers): "
             f"`{rel[:-len('.jsonl')]}.md`; raw lines: `{rel}`; chart: `{rel[:-len('.jsonl')]}.png`.", "",
             "Test metrics, full ranking over all items (mean ± std over seeds):", "", *metric_table(groups, "full"), "",
             "Paired significance on per-user test NDCG@10 (one-sided Wilcoxon signed-rank, H1: fusion > plain):", "",
             *significance(groups), "", *resolution(groups), "",
             f"Targets (+{targets(dataset)['gain']:.0%} NDCG@10 with p < {targets(dataset)['p']} per backbone; "
             "M2SR >= best plain):", "",
             *verdicts(groups, dataset), "", "Converged plain baselines against the reference runs:", "",
             *reference_check(groups, dataset)]
    anchors = anchors_table(groups, dataset)
    if anchors:
        lines += ["", "Published numbers on this split (other papers' code and protocols, labelled) beside ours:", "",
                  *anchors]
    return "\n".join(lines)


def summary_section(results: Path, dataset: str) -> str:
    """The README's short answer to "does attach() help?": one line per backbone and one for M2SR."""
    groups = group(read_results(results), dataset)
    lines = []
    for model, t, (_, _, gain) in _per_backbone(groups):
        if t is None:
            lines.append(f"- {model}: not measured yet.")
            continue
        n = len(t["seeds"])
        if not math.isfinite(gain):
            verdict = "no verdict (a metric is not a number)"
        elif gain > 0 and t["p"] < TARGET_P:
            verdict = "improved" + ("" if gain >= TARGET_GAIN else f", below the +{TARGET_GAIN:.0%} target")
        elif gain > 0:
            verdict = "not significantly improved"
        else:
            verdict = "not improved"
        seeds = f"{n} seed{'s' if n > 1 else ''}" + ("" if n >= FULL_SEEDS else f" of {FULL_SEEDS}: provisional")
        lines.append(f"- {model} + `attach()`: test NDCG@10 {gain * 100:+.1f} % (one-sided p = {t['p']:.2g}, {seeds}): {verdict}.")
    best = max(((m, _mean_ndcg(groups[(m, "plain")])) for m in BACKBONES if groups.get((m, "plain"))),
               key=lambda kv: kv[1], default=None)
    m2sr = groups.get(("M2SR", "standalone"), [])
    if best and m2sr:
        n = len(m2sr)
        mixer = groups.get(("MLPMixerRec", "standalone"), [])
        k = len(mixer)
        lines.append(f"- M2SR (standalone): test NDCG@10 {_mean_ndcg(m2sr):.4f} ({n} seed{'s' if n > 1 else ''}"
                     + ("" if n >= FULL_SEEDS else f" of {FULL_SEEDS}") + f") against {best[1]:.4f} for the best plain "
                     f"backbone ({best[0]})"
                     + (f" and {_mean_ndcg(mixer):.4f} for MLPMixerRec, its ID-only twin ({k} seed{'s' if k > 1 else ''})"
                        if mixer else "") + ".")
    runs = sum(len(v) for v in groups.values())
    expected = FULL_SEEDS * (2 * len(BACKBONES) + len(STANDALONE))
    lines.append(f"- {runs} of the grid's {expected} runs recorded; details: [{docs_page(dataset)}]({docs_page(dataset)}); "
                 f"written by `python -m benchmarks.report --dataset {dataset} --summary README.md`.")
    return "\n".join(lines)


def update_readme(readme: Path, section: str, block: str = "compat") -> None:
    """Replace the text between ``<!-- {block}:begin -->`` and ``<!-- {block}:end -->`` in ``readme`` (atomically);
    error if the markers are missing."""
    text = readme.read_text()
    opening, closing = f"<!-- {block}:begin -->", f"<!-- {block}:end -->"
    begin, end = text.find(opening), text.find(closing)
    if begin < 0 or end < begin:
        raise ValueError(f"{readme} has no '{opening}' ... '{closing}' block; add the two markers on their own "
                         f"lines where the {block} table belongs and run again")
    new = text[:begin + len(opening)] + "\n" + section.strip() + "\n" + text[end:]
    atomic_write_bytes(readme, new.encode())


def _ndcg(row: dict, split: str) -> float:
    return row[split]["full"]["ndcg@10"]


def _change(new: float, old: float) -> str:
    return f"{(new / old - 1) * 100:+.1f} %" if old else "-"


def ablation_report(results: Path, ablation_dir: Path, dataset: str) -> str:
    """The ``--fusion-option`` variants in ``ablation_dir/*.jsonl`` next to the main grid's runs (validation first)."""
    main_rows = {(r["model"], r["variant"], int(r["seed"])): r for r in read_results(results)
                 if r["dataset"] == dataset and not r.get("quick")}
    files = sorted(ablation_dir.glob("*.jsonl"))
    if not files:
        raise ValueError(f"{ablation_dir} holds no .jsonl results; run benchmarks/compat.py --fusion-option KEY=VALUE "
                         f"--out {ablation_dir}/<name>.jsonl first")
    table = ["| backbone | seed | option (vs default fusion) | valid NDCG@10 plain | valid default fusion | valid variant "
             "| variant vs default fusion (valid) | test NDCG@10 plain / variant |", "|---|---|---|---|---|---|---|---|"]
    variant_rows = {path: read_results(path) for path in files}
    missing, by_option = [], defaultdict(list)
    for path, path_rows in variant_rows.items():
        for row in path_rows:
            if row["dataset"] != dataset or row.get("quick") or row["variant"] != "fusion":
                continue
            seed = int(row["seed"])
            plain, default = main_rows.get((row["model"], "plain", seed)), main_rows.get((row["model"], "fusion", seed))
            if plain is None or default is None:
                missing.append(f"{row['model']} seed {seed} ({path.name})")
                continue
            base_options = {**AdapterOptions().to_dict(), **default["hparams"].get("fusion", {})}  # older rows lack new fields
            option = ", ".join(f"{k}={v}" for k, v in sorted(row["hparams"].get("fusion", {}).items())
                               if base_options.get(k) != v) or "(same as default)"
            by_option[(row["model"], option)].append((seed, plain, default, row))
            table.append(f"| {row['model']} | {seed} | {option} | {_ndcg(plain, 'valid'):.4f} | {_ndcg(default, 'valid'):.4f} "
                         f"| {_ndcg(row, 'valid'):.4f} | {_change(_ndcg(row, 'valid'), _ndcg(default, 'valid'))} "
                         f"| {_ndcg(plain, 'test'):.4f} / {_ndcg(row, 'test'):.4f} |")
    summary = ["| backbone | option | seeds | valid NDCG@10 plain / default fusion / variant "
               "| test NDCG@10 plain / default fusion / variant | variant vs plain (test) | Wilcoxon one-sided p (variant > plain, test) |",
               "|---|---|---|---|---|---|---|"]
    for (model, option), runs in sorted(by_option.items()):
        if len(runs) < 2:
            continue
        runs.sort(key=lambda run: run[0])
        means = {split: [statistics.fmean(_ndcg(run[i], split) for run in runs) for i in (1, 2, 3)] for split in ("valid", "test")}
        summary.append(f"| {model} | {option} | {','.join(str(run[0]) for run in runs)} "
                       f"| {' / '.join(f'{v:.4f}' for v in means['valid'])} | {' / '.join(f'{v:.4f}' for v in means['test'])} "
                       f"| {_change(means['test'][2], means['test'][0])} "
                       f"| {paired_tests({(model, 'plain'): [r[1] for r in runs], (model, 'fusion'): [r[3] for r in runs]})[model]['p']:.2g} |")
    rows = [r for path_rows in variant_rows.values() for r in path_rows if not r.get("quick")]
    commands = sorted({r["command"] for r in rows})
    lines = [f"# Fusion options on {dataset}: validation comparison", "", *provenance(rows, False), "",
             "Commands:", "", *(f"- `{c}`" for c in commands), "",
             "Each row changes one `attach()` option of `compat_config.json`'s `fusion` block and trains the backbone's "
             "+fusion run again (same seed, same hyper-parameters); plain and default-fusion numbers are the main grid's "
             f"(`{os.path.relpath(results, HERE.parent)}`). Options are compared on validation NDCG@10 (full ranking); "
             "the test column is for the record and chose nothing. One seed per row: the main grid's seed-to-seed "
             "spread (std of NDCG@10 up to 0.01) is as large as most differences here.", "", *table]
    if len(summary) > 2:
        lines += ["", "Options run on more than one seed (means over those seeds; an option picked on seed 0's validation "
                  "and then run on the other seeds):", "", *summary]
    if missing:
        lines += ["", f"Left out (no main-grid plain/fusion run for that backbone and seed): {', '.join(missing)}."]
    text = "\n".join(lines) + "\n"
    atomic_write_bytes(ablation_dir / "report.md", text.encode())
    return text



def patience_report(results: Path, study: Path, dataset: str) -> str:
    """A patience study (``compat.py --patience N --out STUDY``) beside a baseline's runs (``results``, the main
    grid by default); writes ``STUDY.md``.

    Per run: where each patience stopped, validation and test NDCG@10, and the study curve's peak excess and
    jitter; then, per backbone with both variants on the same seeds, the paired test comparison at the
    study's patience (the same one-sided Wilcoxon as the main grid).
    """
    main_rows = {(r["model"], r["variant"], int(r["seed"])): r for r in read_results(results)
                 if r["dataset"] == dataset and not r.get("quick")}
    rows = [r for r in read_results(study) if r["dataset"] == dataset and not r.get("quick")]
    if not rows:
        raise ValueError(f"{study} holds no {dataset} runs; run benchmarks/compat.py --patience N --out {study} first")
    patience = sorted({r.get("hparams", {}).get("stopping_step") for r in rows}, key=str)
    main_patience = sorted({r.get("hparams", {}).get("stopping_step") for r in main_rows.values()}, key=str)
    label = "/".join(map(str, patience))
    def shown(path: Path) -> str:
        try:
            return path.resolve().relative_to(Path.cwd()).as_posix()
        except ValueError:
            return path.as_posix()

    lines = [f"# Patience study on {dataset}: patience {label} against {'/'.join(map(str, main_patience))}", "",
             f"Written by `python -m benchmarks.report --results {shown(results)} --patience {shown(study)}`: the runs of "
             f"`{shown(study)}` beside those of `{shown(results)}` (the baseline), the same except the early-stopping "
             "patience.", "", *provenance(rows, False), "",
             f"| model | variant | seed | baseline: best / epochs run | valid NDCG@10 | test NDCG@10 | patience {label}: "
             "best / epochs run | valid NDCG@10 | test NDCG@10 | peak excess | jitter |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["model"], r["variant"] != "plain", r["seed"])):
        m = main_rows.get((r["model"], r["variant"], int(r["seed"])))
        before = (f"{m['best_epoch']} / {m['epochs_run']} | {_ndcg(m, 'valid'):.4f} | {_ndcg(m, 'test'):.4f}"
                  if m else "not run | | ")
        stats = curve_stats(r)
        curve = (f"{stats['peak_excess'] * 100:+.1f} % | {stats['jitter'] * 100:.1f} %" if stats else "no curve | ")
        lines.append(f"| {r['model']} | {r['variant']} | {r['seed']} | {before} | {r['best_epoch']} / {r['epochs_run']} | "
                     f"{_ndcg(r, 'valid'):.4f} | {_ndcg(r, 'test'):.4f} | {curve} |")
    lines += ["", "Peak excess and jitter: see the main report's validation-curves section (the chosen epoch against "
              "the mean of the 2 epochs either side; the standard deviation of the epoch-to-epoch change).", "",
              f"## Paired test comparison at patience {label}", ""]
    groups = group(rows, dataset)
    tests = paired_tests(groups)
    if not tests:
        lines.append("No backbone has plain and +fusion on the same seeds yet: no comparison.")
    for model, t in tests.items():
        full = "" if len(t["seeds"]) >= FULL_SEEDS else f" (only {len(t['seeds'])} of {FULL_SEEDS} seeds: provisional)"
        lines.append(f"- **{model}** (seeds {','.join(map(str, t['seeds']))}): test NDCG@10 {t['plain']:.4f} -> "
                     f"{t['fusion']:.4f} ({_change(t['fusion'], t['plain'])}), one-sided Wilcoxon p = {t['p']:.2g}{full}.")
    text = "\n".join(lines) + "\n"
    atomic_write_bytes(study.with_suffix(".md"), text.encode())
    return text

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Report on compatibility benchmark results.")
    parser.add_argument("--results", type=Path, default=None, help="default benchmarks/results/compat-<dataset>.jsonl")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--quick", action="store_true", help="report the --quick rows instead of the real ones")
    parser.add_argument("--readme", type=Path, help="also rewrite the compat block (between the markers) of this page, "
                                                     "e.g. docs/compatibility-<dataset>.md")
    parser.add_argument("--summary", type=Path, help="also rewrite the dataset's summary block of this file (README.md)")
    parser.add_argument("--ablation", type=Path, help="report the --fusion-option variants in DIR/*.jsonl instead (writes DIR/report.md)")
    parser.add_argument("--patience", type=Path, metavar="STUDY",
                        help="report a patience study (compat.py --patience N --out STUDY) beside the runs of --results "
                             "(writes STUDY.md)")
    args = parser.parse_args(argv)
    if args.results is None:
        args.results = HERE / "results" / f"compat-{args.dataset}{'-quick' if args.quick else ''}.jsonl"
    if not args.results.is_file():
        parser.error(f"{args.results} does not exist; run benchmarks/compat.py first")
    studies = ((args.patience, patience_report, lambda p: p.is_file(),
                f"--patience {args.patience} does not exist; run python -m benchmarks.compat --patience N --out {args.patience} first"),
               (args.ablation, ablation_report, lambda p: p.is_dir(), f"--ablation {args.ablation} is not a directory"))
    for study, write, exists, missing in studies:  # a study beside the main grid instead of the grid's report
        if study is not None:
            if not exists(study):
                parser.error(missing)
            try:
                print(write(args.results, study, args.dataset))
            except ValueError as err:
                parser.error(str(err))
            return 0
    for option, path in (("--readme", args.readme), ("--summary", args.summary)):
        if path is not None and not path.is_file():
            parser.error(f"{option} {path} does not exist")
    print(report(args.results, args.dataset, args.quick))
    try:
        if args.readme is not None:
            update_readme(args.readme, readme_section(args.results, args.dataset))
        if args.summary is not None:  # the short answer in the project's README
            update_readme(args.summary, summary_section(args.results, args.dataset), block=summary_block(args.dataset))
    except ValueError as err:
        parser.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
