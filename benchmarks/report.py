"""Turn the compatibility results (.jsonl) into tables, significance tests, a popularity breakdown and a PNG.

    python benchmarks/report.py [--results benchmarks/results/compat-ml-100k.jsonl]

Writes ``<results>.md`` and ``<results>.png`` next to the results file and prints the markdown.

* Main table: mean +- std over seeds of test MRR@10 / NDCG@10 / Hit@10, full ranking; the relative
  change of +fusion over plain per backbone.
* Secondary table: the same test users ranked against 100 uniformly sampled negatives.
* Significance: per backbone, one-sided Wilcoxon signed-rank test (H1: fusion > plain) on per-user
  test NDCG@10, each user's value averaged over the seeds both variants finished.
* Popularity: NDCG@10 by the test item's number of training interactions (<= 10, 11-50, > 50).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from benchmarks.compat import BACKBONES, STANDALONE, read_results  # noqa: E402

METRICS = ["mrr@10", "ndcg@10", "hit@10"]
POPULARITY_BINS = [(0, 10, "<= 10"), (11, 50, "11-50"), (51, 10**9, "> 50")]
PAPER_FILE = HERE / "paper_numbers.json"


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def group(rows: list[dict], dataset: str, quick: bool = False) -> dict[tuple[str, str], list[dict]]:
    groups = defaultdict(list)
    for row in rows:
        if row["dataset"] == dataset and bool(row.get("quick")) == quick:
            groups[(row["model"], row["variant"])].append(row)
    return groups


def metric_table(groups, protocol: str) -> list[str]:
    lines = ["| model | variant | seeds | MRR@10 | NDCG@10 | Hit@10 | NDCG@10 vs plain |", "|---|---|---|---|---|---|---|"]
    for model in BACKBONES + STANDALONE:
        for variant in (["standalone"] if model in STANDALONE else ["plain", "fusion"]):
            runs = groups.get((model, variant), [])
            if not runs:
                lines.append(f"| {model} | {variant} | none | not run yet | | | |")
                continue
            cells = [mean_std([r["test"][protocol][m] for r in runs]) for m in METRICS]
            change = ""
            plain = groups.get((model, "plain"), [])
            if variant == "fusion" and plain:
                a = statistics.fmean(r["test"][protocol]["ndcg@10"] for r in runs)
                b = statistics.fmean(r["test"][protocol]["ndcg@10"] for r in plain)
                change = f"{(a - b) / b * 100:+.1f} %" if b else "n/a"
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


def significance(groups) -> list[str]:
    from scipy.stats import wilcoxon

    lines = ["| backbone | seeds paired | users | mean NDCG@10 plain | mean NDCG@10 fusion | Wilcoxon one-sided p (fusion > plain) |",
             "|---|---|---|---|---|---|"]
    for model in BACKBONES:
        plain = {r["seed"]: r for r in groups.get((model, "plain"), [])}
        fusion = {r["seed"]: r for r in groups.get((model, "fusion"), [])}
        seeds = sorted(set(plain) & set(fusion))
        if not seeds:
            lines.append(f"| {model} | none | | | | |")
            continue
        a, b = per_user([plain[s] for s in seeds]), per_user([fusion[s] for s in seeds])
        users = sorted(set(a) & set(b))
        x, y = np.array([a[u][0] for u in users]), np.array([b[u][0] for u in users])
        p = wilcoxon(y, x, alternative="greater", zero_method="wilcox").pvalue if np.any(x != y) else 1.0
        lines.append(f"| {model} | {','.join(map(str, seeds))} | {len(users)} | {x.mean():.4f} | {y.mean():.4f} | {p:.2g} |")
    return lines


def popularity(groups) -> list[str]:
    header = "| model | variant | " + " | ".join(f"target pop {label} (users)" for *_, label in POPULARITY_BINS) + " |"
    lines = [header, "|---|---|" + "---|" * len(POPULARITY_BINS)]
    for model in BACKBONES + STANDALONE:
        for variant in (["standalone"] if model in STANDALONE else ["plain", "fusion"]):
            runs = groups.get((model, variant), [])
            if not runs:
                continue
            users = per_user(runs)
            cells = []
            for low, high, _ in POPULARITY_BINS:
                vals = [v for v, pop in users.values() if low <= pop <= high]
                cells.append(f"{statistics.fmean(vals):.4f} ({len(vals)})" if vals else "- (0)")
            lines.append(f"| {model} | {variant} | " + " | ".join(cells) + " |")
    return lines


def paper_table() -> list[str]:
    if not PAPER_FILE.is_file():
        return ["The paper's reported ML-100K numbers are not in this repository (no copy of the paper could be read "
                "offline when this report was written); add them to `benchmarks/paper_numbers.json` as "
                "`{\"model\": {\"mrr@10\": .., \"ndcg@10\": .., \"hit@10\": ..}, \"source\": \"...\"}` and they appear here, "
                "labelled as the paper's."]
    paper = json.loads(PAPER_FILE.read_text())
    lines = [f"Source: {paper.get('source', 'the paper')} (the paper's numbers, not ours; its protocol looks sampled).", "",
             "| model | MRR@10 (paper) | NDCG@10 (paper) | Hit@10 (paper) |", "|---|---|---|---|"]
    for model, values in paper.items():
        if isinstance(values, dict):
            lines.append(f"| {model} | " + " | ".join(str(values.get(m, "-")) for m in METRICS) + " |")
    return lines


def bar_chart(groups, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in BACKBONES if groups.get((m, "plain")) or groups.get((m, "fusion"))]
    fig, ax = plt.subplots(figsize=(7, 3.6))
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def provenance(rows: list[dict], quick: bool) -> list[str]:
    full = [r for r in rows if bool(r.get("quick")) == quick]
    if not full:
        return []
    commits = sorted({r["commit"] for r in full})
    dates = sorted(r["date"] for r in full)
    devices = sorted({r["device"] for r in full})
    return [f"Runs: {len(full)}; commits {', '.join(commits)}; device {', '.join(devices)}; torch {full[0]['torch']}; "
            f"dates {dates[0]} .. {dates[-1]}; command `{full[0]['command']}`."]


def report(results: Path, dataset: str, quick: bool = False) -> str:
    rows = read_results(results)
    groups = group(rows, dataset, quick)
    title = f"# Compatibility benchmark: {dataset}" + (" (--quick wiring check: 1 epoch, 60 users; not a result)" if quick else "")
    lines = [title, "", *provenance(rows, quick), "",
             "## Test metrics, full ranking over all items (mean ± std over seeds)", "", *metric_table(groups, "full"), "",
             "## Test metrics, 100 uniformly sampled negatives (secondary; same users and models)", "",
             *metric_table(groups, "uni100"), "",
             "## Paired significance (per-user test NDCG@10, full ranking)", "", *significance(groups), "",
             "## NDCG@10 by popularity of the test item (training interactions)", "", *popularity(groups), "",
             "## The paper's reported numbers", "", *paper_table(), ""]
    text = "\n".join(lines)
    results.with_suffix(".md").write_text(text)
    bar_chart(groups, results.with_suffix(".png"))
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Report on compatibility benchmark results.")
    parser.add_argument("--results", type=Path, default=HERE / "results" / "compat-ml-100k.jsonl")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--quick", action="store_true", help="report the --quick rows instead of the real ones")
    args = parser.parse_args(argv)
    if not args.results.is_file():
        parser.error(f"{args.results} does not exist; run benchmarks/compat.py first")
    print(report(args.results, args.dataset, args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
