"""Catalogue size: attached SASRec and BPR over 10^4 .. 10^6 synthetic items with float16 memory-mapped features.

Each point runs in a fresh interpreter (its peak RSS is its own). The feature tables (text 384-d, image
1,280-d) are float16 ``.npy`` files, the format the feature cache stores, opened memory-mapped; the
attached models use ``attach(..., reduce_features=R)``, so the tables are read in row chunks once at attach
time and never copied whole into float32 memory. Per point: peak RSS, what attach adds to it, attach
time, training-step time (Adam, real-sized random batches), and ``full_sort_predict`` latency at batch
1 and 256 (eval mode, inference cache warm).

    python -m benchmarks.catalogue                      # N = 1e4, 1e5, 1e6 -> benchmarks/results/catalogue-cpu.{json,png}
    python -m benchmarks.catalogue --quick              # N = 2e3, 5e3, a wiring check (not a result)

Targets (issue 16): at N = 10^6 attach adds at most 1.2x the float16 table bytes to peak RSS, and the SASRec
attached step is at most 1.3x plain; from 10^4 to 10^6 the attached step's log-log slope is at most the
plain slope + 0.1.
"""

from __future__ import annotations

import argparse
import os
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.cli_args import names, quiet, reply, results_file, set_threads
from benchmarks.figures import save_png, subplots
from benchmarks.provenance import atomic_write_bytes, atomic_write_json, provenance

MODELS = ["SASRec", "BPR"]
DIMS = {"text": 384, "image": 1280}
L, BATCH = 50, 256


def feature_files(folder: Path, n_items: int) -> dict[str, Path]:
    """float16 ``.npy`` tables of ``n_items`` rows under ``folder`` (written once, in chunks; row 0 zero)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, dim in DIMS.items():
        path = folder / f"{name}-{n_items}.npy"
        if not path.is_file():
            partial = path.with_suffix(".partial.npy")
            table = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(n_items, dim))
            g = torch.Generator().manual_seed(dim)
            step = max(1, (1 << 24) // dim)
            for start in range(0, n_items, step):
                rows = torch.randn(min(step, n_items - start), dim, generator=g).to(torch.float16).numpy()
                table[start:start + len(rows)] = rows
            table[0] = 0
            table.flush()
            del table
            partial.rename(path)
        paths[name] = path
    return paths


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _median_ms(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def measure(model_name: str, variant: str, n_items: int, args) -> dict:
    """One point, in this process."""
    from benchmarks.synthetic import SyntheticDataset, build_model, synthetic_batch, training_step
    import fusionlayer

    paths = feature_files(args.work, n_items)
    maps = {name: np.load(path, mmap_mode="r") for name, path in paths.items()}
    table_bytes = sum(m.nbytes for m in maps.values())
    torch.manual_seed(0)
    model = build_model(model_name, "plain", L, n_items=n_items)
    rss_before = _peak_rss()
    start = time.perf_counter()
    if variant == "fusion":
        fusionlayer.attach(model, maps, dataset=SyntheticDataset(n_items=n_items), reduce_features=args.reduce)
    attach_s = time.perf_counter() - start
    attach_rss = _peak_rss() - rss_before
    step = training_step(model, synthetic_batch(model, BATCH, L, "cpu", train=True))
    model.train()
    step_ms = _median_ms(step, args.steps, warmup=2)
    model.eval()
    predict = {}
    eval_batch = synthetic_batch(model, 256, L, "cpu", train=False)
    with torch.no_grad():
        for size in (1, 256):
            part = eval_batch[torch.arange(size)]
            predict[size] = _median_ms(lambda: model.full_sort_predict(part), args.predict_repeats, warmup=2)
    return {"model": model_name, "variant": variant, "n_items": n_items, "table_bytes": int(table_bytes),
            "peak_rss_bytes": _peak_rss(), "attach_rss_bytes": int(attach_rss), "attach_s": round(attach_s, 3),
            "step_ms": round(step_ms, 2), "predict_b1_ms": round(predict[1], 3), "predict_b256_ms": round(predict[256], 2),
            "status": "ok"}


def run_point(model_name: str, variant: str, n_items: int, args) -> dict:
    """``measure`` in a fresh interpreter; a failure (memory, time) becomes the point's status."""
    flags = ["--threads", str(args.threads)] if args.threads else []
    command = [sys.executable, "-m", "benchmarks.catalogue", "--_point", model_name, variant, str(n_items),
               "--work", str(args.work), "--reduce", str(args.reduce), "--steps", str(args.steps),
               "--predict-repeats", str(args.predict_repeats), *flags]
    base = {"model": model_name, "variant": variant, "n_items": n_items}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.point_timeout_s)
    except subprocess.TimeoutExpired:
        return {**base, "status": f"timeout after {args.point_timeout_s} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {**base, "status": f"failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(lines[-1])


def slope(points: list[dict], model: str, variant: str, low: int, high: int) -> float | None:
    by_n = {p["n_items"]: p["step_ms"] for p in points if p["model"] == model and p["variant"] == variant
            and p["status"] == "ok"}
    if low not in by_n or high not in by_n:
        return None
    return round(math.log(by_n[high] / by_n[low]) / math.log(high / low), 3)


def targets(points: list[dict], sizes: list[int]) -> dict:
    low, high = min(sizes), max(sizes)
    ok = {(p["model"], p["variant"], p["n_items"]): p for p in points if p["status"] == "ok"}
    out = {}
    for model in MODELS:
        fused, plain = ok.get((model, "fusion", high)), ok.get((model, "plain", high))
        entry = {"slope_plain": slope(points, model, "plain", low, high),
                 "slope_fusion": slope(points, model, "fusion", low, high)}
        if fused:
            entry["attach_rss_over_table"] = round(fused["attach_rss_bytes"] / fused["table_bytes"], 3)
            entry["rss_met"] = entry["attach_rss_over_table"] <= 1.2
        if fused and plain:
            entry["step_ratio"] = round(fused["step_ms"] / plain["step_ms"], 3)
        if entry["slope_plain"] is not None and entry["slope_fusion"] is not None:
            entry["slope_met"] = entry["slope_fusion"] <= entry["slope_plain"] + 0.1
        out[model] = entry
    if "step_ratio" in out.get("SASRec", {}):
        out["SASRec"]["step_ratio_met"] = out["SASRec"]["step_ratio"] <= 1.3
    return out


def plot(result: dict, path: Path) -> None:
    fig, axes = subplots(1, 2, figsize=(9, 3.4))
    for model, marker in zip(MODELS, "os"):
        for variant, style in (("plain", "--"), ("fusion", "-")):
            rows = sorted((p for p in result["points"] if p["model"] == model and p["variant"] == variant
                           and p["status"] == "ok"), key=lambda p: p["n_items"])
            if not rows:
                continue
            n = [p["n_items"] for p in rows]
            label = f"{model} {'+fusion' if variant == 'fusion' else 'plain'}"
            axes[0].loglog(n, [p["step_ms"] for p in rows], style, marker=marker, label=label)
            axes[1].loglog(n, [p["peak_rss_bytes"] / 2**20 for p in rows], style, marker=marker, label=label)
    sizes = sorted({p["n_items"] for p in result["points"]})
    axes[1].loglog(sizes, [s * sum(DIMS.values()) * 2 / 2**20 for s in sizes], ":", color="k", label="float16 tables")
    axes[0].set(xlabel="items", ylabel="training step, ms")
    axes[1].set(xlabel="items", ylabel="peak RSS, MiB")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    save_png(fig, path)


def markdown(result: dict) -> str:
    lines = [f"`{result['command']}`, commit {result['commit']}, {result['device']}, {result['date']}; "
             f"reduce_features={result['reduce_features']}, batch {BATCH}, L {L}", "",
             "| model | variant | items | float16 tables MiB | peak RSS MiB | attach adds MiB | attach s | step ms | "
             "predict b1 ms | predict b256 ms | status |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in result["points"]:
        if p["status"] != "ok":
            lines.append(f"| {p['model']} | {p['variant']} | {p['n_items']:,} | | | | | | | | {p['status']} |")
            continue
        lines.append(f"| {p['model']} | {p['variant']} | {p['n_items']:,} | {p['table_bytes'] / 2**20:.0f} | "
                     f"{p['peak_rss_bytes'] / 2**20:.0f} | {p['attach_rss_bytes'] / 2**20:.0f} | {p['attach_s']} | "
                     f"{p['step_ms']} | {p['predict_b1_ms']} | {p['predict_b256_ms']} | ok |")
    return "\n".join(lines + ["", *targets_table(result["targets"], min(p["n_items"] for p in result["points"]),
                                                 max(p["n_items"] for p in result["points"]))])


def targets_table(found: dict, low: int, high: int) -> list[str]:
    """Issue 16's targets, one row per model: the measured figure, the bar it is held to, met or missed."""
    def verdict(met):
        return "" if met is None else ("met" if met else "**missed**")

    rows = [f"Targets at N = {high:,} (slopes from {low:,}):", "",
            "| model | target | measured | bar | |", "|---|---|---|---|---|"]
    for model, entry in found.items():
        if entry.get("attach_rss_over_table") is not None:
            rows.append(f"| {model} | peak RSS added by attach / float16 table bytes | "
                        f"{entry['attach_rss_over_table']:.2f}x | <= 1.2x | {verdict(entry.get('rss_met'))} |")
        if entry.get("slope_fusion") is not None and entry.get("slope_plain") is not None:
            rows.append(f"| {model} | log-log slope of the attached step | {entry['slope_fusion']:.2f} | "
                        f"<= plain {entry['slope_plain']:.2f} + 0.1 | {verdict(entry.get('slope_met'))} |")
        if "step_ratio_met" in entry:
            rows.append(f"| {model} | attached step / plain step | {entry['step_ratio']:.2f}x | <= 1.3x | "
                        f"{verdict(entry['step_ratio_met'])} |")
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--sizes", default="10000,100000,1000000", help="catalogue sizes (items)")
    parser.add_argument("--reduce", type=int, default=64, help="attach(reduce_features=...) of the attached models")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per point (median)")
    parser.add_argument("--predict-repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fusionlayer-catalogue"),
                        help="where the float16 tables are written (about 3.3 GB at 10^6 items)")
    parser.add_argument("--point-timeout-s", type=int, default=900)
    parser.add_argument("--quick", action="store_true", help="N = 2,000 and 5,000, 2 steps: a wiring check")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--readme", type=Path, default=None, help="also rewrite this README's catalogue block")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite <out>.md/.png (and --readme) from <out>")
    parser.add_argument("--_point", nargs=3, metavar=("MODEL", "VARIANT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.models = names(parser, args.models, MODELS, "--models")
    if args.quick:
        args.steps, args.predict_repeats = 2, 2
        if args.sizes == parser.get_default("sizes"):
            args.sizes = "2000,5000"
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    if not args.sizes or min(args.sizes) < 10:
        parser.error(f"--sizes must be item counts >= 10, got {args.sizes}")
    args.out = args.out or results_file("catalogue", "cpu", args.quick)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    if args._point:  # a worker: one point, answered as one JSON line
        quiet()
        return reply(measure(args._point[0], args._point[1], int(args._point[2]), args))
    if args.markdown_only:
        return publish(json.loads(args.out.read_text()), args)
    points = []
    for n in args.sizes:
        for model in args.models:
            for variant in ("plain", "fusion"):
                points.append(run_point(model, variant, n, args))
                print(json.dumps(points[-1]), flush=True)
    result = {**provenance("benchmarks.catalogue", argv, "cpu"), "threads": torch.get_num_threads(),
              "reduce_features": args.reduce, "batch": BATCH, "max_seq_length": L, "feature_dims": DIMS,
              "points": points, "targets": targets(points, args.sizes)}
    atomic_write_json(args.out, result)
    return publish(result, args)


def publish(result: dict, args) -> int:
    """The markdown summary and the log-log plot next to the results file; the README block with ``--readme``."""
    from benchmarks.report import update_readme

    plot(result, args.out.with_suffix(".png"))
    text = markdown(result)
    atomic_write_bytes(args.out.with_suffix(".md"), text.encode())
    if args.readme:
        rel = Path(os.path.relpath(args.out.resolve(), args.readme.resolve().parent))  # the image link from the page
        update_readme(args.readme, f"{text}\n\n![step time and peak RSS against catalogue size]({rel.with_suffix('.png')})",
                      block="catalogue")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
