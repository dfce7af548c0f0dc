"""A searched recipe against the plain backbone on test, over the seeds both have: the grid's plain runs, the recipe's
search and confirmation runs (``benchmarks/results/tuning/``). Test metrics are reported here, never chosen on: the
recipe was picked and confirmed on validation by ``benchmarks.tune``.

    python -m benchmarks.compare --dataset amazon-scientific --model SASRec --candidate content_init

Prints (and with ``--out``, writes) the mean test NDCG@10 of both, the one-sided Wilcoxon test on per-user NDCG@10
averaged over the seeds (:func:`benchmarks.report.paired_tests`) and the popularity table
(:func:`benchmarks.report.popularity`), with the runs' provenance.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks import compat, report, tune
from benchmarks.provenance import runs_summary


def compare(dataset: str, model: str, candidate: str) -> list[str]:
    plain = [r for r in compat.read_results(compat.RESULTS / f"compat-{dataset}.jsonl")
             if r["model"] == model and r["variant"] == "plain" and not r.get("quick")]
    searched = [r for path in compat.tuning_runs(dataset, model) for r in compat.read_results(path)
                if r.get("candidate") == candidate]
    groups = {(model, "plain"): sorted(plain, key=lambda r: r["seed"]),
              (model, "fusion"): sorted(searched, key=lambda r: r["seed"])}
    tests = report.paired_tests(groups)
    if model not in tests:
        return [f"No seed has both a plain {model} run and a `{candidate}` run on {dataset}."]
    t = tests[model]
    return [f"# {model}: `{candidate}` against plain on {dataset} (test; chosen on validation by benchmarks.tune)", "",
            runs_summary([*plain, *searched]) + ".", "",
            f"Seeds {','.join(map(str, t['seeds']))}, {t['users']} users: test NDCG@10 plain {t['plain']:.4f}, "
            f"`{candidate}` {t['fusion']:.4f} ({(t['fusion'] / t['plain'] - 1) * 100:+.1f} %), one-sided Wilcoxon "
            f"p = {t['p']:.2g} (per-user NDCG@10 averaged over the seeds).", "",
            "By target popularity (the row `fusion` is the recipe):", "", *report.popularity(groups)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k", help=f"one of {compat.DATASETS}")
    parser.add_argument("--model", required=True)
    parser.add_argument("--candidate", required=True, help="a candidate name of the dataset's search space")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    names = [c["name"] for c in tune.load_space(tune.space_path(args.dataset))["candidates"]]
    if args.candidate not in names:
        parser.error(f"--candidate {args.candidate!r} is not in the {args.dataset} search space: {names}")
    text = "\n".join(compare(args.dataset, args.model, args.candidate)) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
