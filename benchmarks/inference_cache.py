"""Batch-1 ``full_sort_predict`` of attached models with and without the adapters' inference cache.

    python -m benchmarks.inference_cache [--models SASRec,GRU4Rec,FPMC,BPR] [--calls 200] [--threads 2]

Synthetic ML-100K-sized model and features (benchmarks/synthetic.py), L = 50, eval mode, no_grad.
Calls alternate between clearing the cache first (uncached: every call projects the item tables) and
not (cached), so both see the same machine load; the medians go to
``benchmarks/results/inference-cache-cpu.json`` with command, commit, device and date.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
from benchmarks.cli_args import set_threads
from benchmarks.provenance import atomic_write_json, provenance
from benchmarks.synthetic import build_model, synthetic_batch

MODELS = ["SASRec", "GRU4Rec", "FPMC", "BPR"]


def measure(name: str, calls: int, L: int = 50) -> dict:
    model = build_model(name, "fusion", L).eval()
    batch = synthetic_batch(model, 1, L, "cpu", train=False)
    memo = model.fusion_adapter._memo
    samples: dict[bool, list[float]] = {True: [], False: []}
    with torch.no_grad():
        reference = model.full_sort_predict(batch)
        for i in range(calls):
            uncached = i % 2 == 0
            if uncached:
                memo.clear()
            start = time.perf_counter()
            scores = model.full_sort_predict(batch)
            samples[uncached].append((time.perf_counter() - start) * 1e3)
            if not torch.equal(scores, reference):
                raise AssertionError(f"{name}: cached and uncached scores differ")
    median = {k: sorted(v)[len(v) // 2] for k, v in samples.items()}
    return {"model": name, "L": L, "calls": calls, "uncached_p50_ms": round(median[True], 3),
            "cached_p50_ms": round(median[False], 3), "speed_up": round(median[True] / median[False], 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "inference-cache-cpu.json")
    args = parser.parse_args(argv)
    models = args.models.split(",")
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {MODELS}")
    if args.calls < 2:
        parser.error(f"--calls must be >= 2, got {args.calls}")
    set_threads(args.threads)
    rows = []
    for name in models:
        rows.append(measure(name, args.calls))
        print(json.dumps(rows[-1]), flush=True)
    atomic_write_json(args.out, {**provenance("benchmarks.inference_cache", argv), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
