"""Report on the cold-start benchmark: cold and warm targets per model and variant, the targets, a chart.

    python -m benchmarks.coldstart_report                       # writes coldstart-ml-100k.{md,png}
    python -m benchmarks.coldstart_report --readme docs/coldstart.md    # also the block between the markers there
    python -m benchmarks.coldstart_report --remedy benchmarks/results/coldstart-remedy/*.jsonl   # a remedy study

Targets (issue 15): on cold targets every attached backbone with the cold-item option (``fusion+cold``)
beats ContentKNN's NDCG@10 (one-sided Wilcoxon on per-user cold NDCG@10, seeds pooled, users paired
within a seed) and scores at least 5x its plain backbone; on warm targets the option costs at most 2 %
NDCG@10 against the same attached backbone without it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np

from benchmarks.figures import save_png, subplots
from benchmarks.provenance import atomic_write_bytes, runs_summary
from benchmarks.coldstart import PROTOCOL, same_recipe
from benchmarks.queue import read_results
from benchmarks.report import group as report_group
from benchmarks.report import mean_std, update_readme

HERE = Path(__file__).resolve().parent
ORDER = [("ContentKNN", "standalone"), ("M2SR", "standalone")] + [
    (m, v) for m in ("SASRec", "GRU4Rec", "BPR", "FPMC") for v in ("plain", "fusion", "fusion+cold", "content-only")]


def group(rows: list[dict], quick: bool = False, dataset: str = "ml-100k") -> dict[tuple[str, str], list[dict]]:
    """(model, variant) -> runs sorted by seed (:func:`benchmarks.report.group`: a repeated run counts once)."""
    return {k: sorted(v, key=lambda r: int(r["seed"])) for k, v in report_group(rows, dataset, quick).items()}


def _values(runs: list[dict], part: str, metric: str) -> list[float]:
    return [r[part][metric] for r in runs if r[part].get(metric) is not None]


def table(groups) -> list[str]:
    lines = ["| model | variant | seeds | cold NDCG@10 | cold Hit@10 | cold median rank | warm NDCG@10 | warm Hit@10 | "
             "cold / warm users |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key in ORDER:
        runs = groups.get(key)
        if not runs:
            continue
        cells = [mean_std(_values(runs, part, metric)) for part in ("cold", "warm") for metric in ("ndcg@10", "hit@10")]
        medians = _values(runs, "cold", "median_rank")  # recorded since 2026-11-29: older runs lack it
        cells.insert(2, f"{np.mean(medians):.0f} ({len(medians)} of {len(runs)} runs)" if medians else "not recorded")
        seeds = ",".join(str(r["seed"]) for r in runs)
        lines.append(f"| {key[0]} | {key[1]} | {seeds} | " + " | ".join(cells) +
                     f" | {runs[0]['cold']['users']} / {runs[0]['warm']['users']} |")
    return lines


def cold_ndcg_by_user(row: dict) -> dict[int, float]:
    """``{user id: cold NDCG@10}`` of one run: ``per_user_cold_ndcg`` (ordered by user id) with ``per_user_cold_users``."""
    values, users = row["per_user_cold_ndcg"], row.get("per_user_cold_users")
    if isinstance(values, dict):  # lines written before the list format: {"user": [...], "ndcg@10": [...]}
        values, users = values["ndcg@10"], values["user"]
    if users is None or len(users) != len(values):
        raise ValueError(f"{row.get('model')} {row.get('variant')} seed {row.get('seed')}: per_user_cold_ndcg has "
                         f"{len(values)} values but per_user_cold_users has {None if users is None else len(users)}")
    return dict(zip((int(u) for u in users), values))


def paired_cold(a: list[dict], b: list[dict]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Per-user cold NDCG@10 of two run lists, paired by (seed, user) over the seeds both have."""
    by_seed = lambda runs: {int(r["seed"]): r for r in runs}  # noqa: E731
    sa, sb = by_seed(a), by_seed(b)
    x, y, seeds = [], [], sorted(set(sa) & set(sb))
    for seed in seeds:
        ua, ub = cold_ndcg_by_user(sa[seed]), cold_ndcg_by_user(sb[seed])
        for user in sorted(set(ua) & set(ub)):
            x.append(ua[user])
            y.append(ub[user])
    return np.array(x), np.array(y), seeds


def _mean(runs: list[dict], part: str) -> float | None:
    values = _values(runs, part, "ndcg@10")
    return statistics.fmean(values) if values and all(np.isfinite(values)) else None


REQUIRED = ("SASRec", "BPR")  # the backbones the 3-seed benchmark asks for


def _on(rows: list[dict]) -> str:
    """Which seeds a paired comparison covers, said when it is fewer than the 3 of the benchmark."""
    seeds = sorted({r["seed"] for r in rows})
    return "" if len(seeds) >= 3 else f" (seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))} only: provisional)"


def verdicts(groups, dataset: str = "ml-100k") -> list[str]:
    from scipy.stats import wilcoxon

    where = "" if dataset == "ml-100k" else f" --dataset {dataset}"

    knn, lines = groups.get(("ContentKNN", "standalone"), []), []
    for model in ("SASRec", "GRU4Rec", "BPR", "FPMC"):
        cold, fused, plain = (groups.get((model, v), []) for v in ("fusion+cold", "fusion", "plain"))
        if not cold:
            if model in REQUIRED:
                lines.append(f"- **{model}**: no fusion+cold run recorded: **not measured** (the 3-seed benchmark "
                             f"needs {', '.join(REQUIRED)}; `python -m benchmarks.coldstart{where} --models {model} --seeds 0,1,2`).")
            continue
        parts = []
        if knn:
            x, y, seeds = paired_cold(knn, cold)
            p = float(wilcoxon(y, x, alternative="greater").pvalue) if len(x) and np.any(x != y) else 1.0
            ok = y.mean() > x.mean() and p < 0.05
            parts.append(f"cold NDCG@10 {y.mean():.4f} vs ContentKNN {x.mean():.4f} (seeds {seeds}, {len(x)} users, "
                         f"one-sided Wilcoxon p = {p:.3g}): {'met' if ok else '**not met**'}")
        cold_seeds = {r["seed"] for r in cold}
        plain, fused = [r for r in plain if r["seed"] in cold_seeds], [r for r in fused if r["seed"] in cold_seeds]
        cold_p = [r for r in cold if r["seed"] in {r["seed"] for r in plain}]  # ratios on the seeds both have
        cold_f = [r for r in cold if r["seed"] in {r["seed"] for r in fused}]
        base, mine = _mean(plain, "cold"), _mean(cold_p, "cold")
        if base is not None and mine is not None:
            if base > 0:
                ratio = mine / base
                parts.append(f"{ratio:.1f}x its plain backbone on cold targets{_on(cold_p)} (target 5x): "
                             f"{'met' if ratio >= 5 else '**not met**'}")
            else:
                parts.append(f"its plain backbone scores {base:.4f} on cold targets against {mine:.4f}{_on(cold_p)} "
                             f"(target 5x): {'met' if mine > 0 else '**not met**'}")
        warm_with, warm_without = _mean(cold_f, "warm"), _mean(fused, "warm")
        if warm_with is not None and warm_without is not None:
            change = warm_with / warm_without - 1
            parts.append(f"warm NDCG@10 {100 * change:+.1f} % against +fusion without the option{_on(cold_f)} "
                         f"(target >= -2 %): {'met' if change >= -0.02 else '**not met**'}")
        seeds = ",".join(str(r["seed"]) for r in cold)
        partial = "" if len(cold) >= 3 else f" (**{len(cold)} of 3 seeds**: provisional)"
        lines.append(f"- **{model}** fusion+cold (seeds {seeds}){partial}: " + "; ".join(parts or ["nothing to compare yet"]) + ".")
    return lines or ["- no fusion+cold run recorded yet; no verdict."]


def _arm_name(runs: list[dict]) -> str:
    options = runs[0].get("fusion_options") or {}
    return ", ".join(f"{k}={v}" for k, v in sorted(options.items())) or "attach() defaults"


def remedy_report(paths: list[Path]) -> str:
    """A remedy study of ``fusion+cold``: one results file per arm (``coldstart --fusion-option ... --out``), the
    arm without overrides as the baseline. Validation and test, cold and warm, on the seeds every arm has, and
    the arm the validation split picks: the highest validation cold NDCG@10 among the arms whose validation warm
    NDCG@10 is within 2 % of the baseline's (the warm target). Test numbers are shown, never used to choose."""
    arms: dict[str, dict[str, list[dict]]] = {}  # backbone -> arm -> fusion+cold runs
    rows = []
    for path in paths:
        for (model, variant), runs in group([r for r in read_results(path) if same_recipe(r)]).items():
            if variant == "fusion+cold" and all("valid" in r for r in runs):
                rows += runs
                name = _arm_name(runs)
                if name in arms.setdefault(model, {}):
                    raise ValueError(f"{path}: a second results file for {model} arm {name!r}; one file per arm")
                arms[model][name] = runs
    lines = [runs_summary(rows) + "." if rows else "No fusion+cold runs with a validation split recorded yet.", ""]
    for model, by_arm in arms.items():
        seeds = sorted(set.intersection(*({int(r["seed"]) for r in runs} for runs in by_arm.values())))
        lines += [f"**{model}** fusion+cold, seeds {','.join(map(str, seeds)) or 'none in common'} "
                  f"(mean over the seeds every arm has):", "",
                  "| arm | valid cold NDCG@10 | valid warm NDCG@10 | test cold NDCG@10 | test cold hits | "
                  "test warm NDCG@10 | content-only cold median rank | with the validation-chosen cold offset: "
                  "test cold / warm NDCG@10 |", "|---|---|---|---|---|---|---|---|"]
        means = {}
        for name, runs in by_arm.items():
            runs = [r for r in runs if int(r["seed"]) in seeds]
            if not runs:
                continue
            def mean(split: str, group: str) -> float:  # test metrics sit at the line's top level
                return statistics.fmean((r["valid"] if split == "valid" else r)[group]["ndcg@10"] or 0.0 for r in runs)

            means[name] = (mean("valid", "cold"), mean("valid", "warm"))
            hits = sum(round(r["cold"]["hit@10"] * r["cold"]["users"]) for r in runs)
            probe = [r["probe"]["cold"]["content_only"]["median_rank"] for r in runs if r.get("probe")]
            probe_cell = f"{statistics.fmean(probe):.1f}" if probe else "-"
            calibrated = [r["calibrated"]["test"] for r in runs if r.get("calibrated")]
            offset_cell = " / ".join(f"{statistics.fmean(c[g]['ndcg@10'] or 0.0 for c in calibrated):.4f}"
                                     for g in ("cold", "warm")) if len(calibrated) == len(runs) else "-"
            lines.append(f"| {name} | {means[name][0]:.4f} | {means[name][1]:.4f} | {mean('test', 'cold'):.4f} | "
                         f"{hits} of {sum(r['cold']['users'] for r in runs)} | {mean('test', 'warm'):.4f} | {probe_cell} "
                         f"| {offset_cell} |")
        base = means.get("attach() defaults")
        if len(means) < 2:
            lines += ["", "One arm only: nothing to choose between yet."]
        elif base is None:
            lines += ["", "No baseline arm (a run without --fusion-option) to choose against."]
        else:
            allowed = {k: v for k, v in means.items() if v[1] >= 0.98 * base[1]}
            pick = max(allowed, key=lambda k: allowed[k][0])
            lines += ["", f"Picked on validation (highest cold NDCG@10 with warm within 2 % of the baseline's): "
                      f"**{pick}**" + ("." if len(seeds) >= 3 else f" ({len(seeds)} seed{'s' * (len(seeds) > 1)}: "
                                                                          "provisional).")]
        lines.append("")
    return "\n".join(["# Cold-start remedy study: ml-100k", "", *lines])


def chart(groups, path: Path) -> None:
    keys = [k for k in ORDER if groups.get(k)]
    fig, ax = subplots(figsize=(7.5, 3.6))
    xs = np.arange(len(keys))
    for offset, part, color in ((-0.2, "cold", "#2f6fde"), (0.2, "warm", "#9aa5b1")):
        means = [statistics.fmean(_values(groups[k], part, "ndcg@10") or [0]) for k in keys]
        ax.bar(xs + offset, means, 0.4, label=f"{part} targets", color=color)
    ax.set_xticks(xs, [f"{m}\n{v}" for m, v in keys], fontsize=7)
    ax.set_ylabel("test NDCG@10 (full ranking)")
    ax.legend(fontsize=8)
    save_png(fig, path)


def provenance_line(rows: list[dict]) -> str:
    if not rows:
        return "No runs recorded yet."
    return f"{runs_summary(rows)}; cold items in the catalogue {rows[0].get('cold_items')}."


def report(results: Path, quick: bool = False, dataset: str = "ml-100k") -> tuple[str, str]:
    """(full markdown report, README section); writes ``<results>.md`` and ``<results>.png``."""
    rows = [r for r in read_results(results) if bool(r.get("quick")) == quick
            and (r["model"] == "ContentKNN" or r.get("protocol") == PROTOCOL)  # older protocols: history/
            and same_recipe(r)]  # a +fusion line whose recipe is no longer attach()'s default: stale
    groups = group(rows, quick, dataset)
    rel = os.path.relpath(results, HERE.parent)
    body = [provenance_line(rows), "",
            "Test metrics, full ranking over all items, split by whether the test target is a cold item "
            "(mean ± std over seeds):", "", *table(groups), "", "Targets:", "", *verdicts(groups, dataset)]
    full = "\n".join([f"# Cold-start benchmark: {dataset}" + (" (--quick wiring check; not a result)" if quick else ""), "",
                      *body, ""])
    atomic_write_bytes(results.with_suffix(".md"), full.encode())
    chart(groups, results.with_suffix(".png"))
    flag = "" if dataset == "ml-100k" else f" --dataset {dataset}"
    section = "\n".join([f"Produced by `python -m benchmarks.coldstart{flag}` then `python -m benchmarks.coldstart_report"
                         f"{flag} --readme docs/coldstart.md`; raw lines `{rel}`, chart `{rel[:-len('.jsonl')]}.png`.", "",
                         *body])
    return full, section


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--results", type=Path, default=None, help="default benchmarks/results/coldstart-<dataset>.jsonl")
    parser.add_argument("--quick", action="store_true", help="report the --quick rows instead of the real ones")
    parser.add_argument("--readme", type=Path, default=None, help="also rewrite this README's coldstart block")
    parser.add_argument("--remedy", type=Path, nargs="+", default=None, metavar="JSONL",
                        help="instead: compare these remedy-study files (one per arm) and write remedy.md beside them")
    args = parser.parse_args(argv)
    if args.remedy:
        missing = [str(p) for p in args.remedy if not p.is_file()]
        if missing:
            parser.error(f"--remedy: no such file(s) {missing}; run python -m benchmarks.coldstart --out ... first")
        text = remedy_report(args.remedy)
        atomic_write_bytes(args.remedy[0].parent / "remedy.md", text.encode())
        print(text)
        return 0
    if args.results is None:
        args.results = HERE / "results" / f"coldstart-{args.dataset}{'-quick' if args.quick else ''}.jsonl"
    if not args.results.is_file():
        parser.error(f"{args.results} does not exist; run python -m benchmarks.coldstart --dataset {args.dataset} first")
    full, section = report(args.results, args.quick, args.dataset)
    if args.readme:
        update_readme(args.readme, section, block="coldstart" if args.dataset == "ml-100k" else f"coldstart-{args.dataset}")
    print(full)
    return 0


if __name__ == "__main__":
    sys.exit(main())
