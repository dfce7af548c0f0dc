"""What attaching fusion costs each backbone, on real ML-100K batches: step, FLOPs, prediction, memory, epoch.

Per model, plain and attached (M2SR standalone), with the compatibility benchmark's model
hyper-parameters (``benchmarks/compat_config.json``) at batch 256 for the cross-entropy models and 2048
for BPR and FPMC (the batch sizes the capped grid trained with), each (model, variant) in a fresh
subprocess so its memory is its own:

* ``step_ms``: median of timed RecBole-style training steps (zero_grad, ``calculate_loss``, backward,
  Adam step) cycling over the first real training batches, after warm-up;
* ``flops``: one step's FLOPs (``FlopCounterMode``, forward + backward); the parent adds
  ``added_ms`` / ``added_flops`` (attached minus plain) and ``floor_ms``, the added FLOPs at the GEMM
  rate measured in the same worker (``gemm_gflops``, a 2048^2 float32 matmul);
* ``predict_b1`` / ``predict_b256``: ``full_sort_predict`` p50 / p99 in eval mode under ``no_grad``;
* ``peak_mem_bytes``: CUDA ``max_memory_allocated`` during the steps; on CPU the growth of the
  process's max RSS over the steps (``ru_maxrss``), the dataset and model already loaded;
* ``epoch_s``: one whole training epoch through RecBole's own ``Trainer._train_epoch``.

    python -m benchmarks.step_cost                               # all models, CPU (about 8 minutes on 2 cores)
    python -m benchmarks.step_cost --models BPR --no-epoch      # one backbone, steps and prediction only
    python -m benchmarks.step_cost --profile                     # + torch.profiler top ops per attached model
    python -m benchmarks.step_cost --device cuda --out benchmarks/results/step-cost-cuda.json
    python -m benchmarks.step_cost --markdown-only --before benchmarks/results/step-cost-cpu-before.json
    python -m benchmarks.step_cost --before benchmarks/results/step-cost-cpu-before.json --readme docs/cost.md
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.compat import load_hparams
from benchmarks.cli_args import names, quiet, reply, results_file, set_threads
from benchmarks.models import BACKBONES
from benchmarks.provenance import provenance
from fusionlayer.encoders.cache import atomic_write_bytes

HERE = Path(__file__).resolve().parent
MODELS = [*BACKBONES, "M2SR"]
TARGETS = {"SASRec": 1.15, "GRU4Rec": 1.3}  # attached step / plain step
BATCH_SIZE = {"BPR": 2048, "FPMC": 2048}  # others 256


def timed(fn, device: str, repeats: int, warmup: int = 2) -> list[float]:
    """Milliseconds of ``fn()`` per call (CUDA synchronised inside the timed region)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def gemm_gflops(device: str, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    ms = statistics.median(timed(lambda: torch.mm(a, b), device, repeats))
    return 2 * n**3 / (ms / 1e3) / 1e9


def percentiles(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {"p50_ms": round(samples[len(samples) // 2], 3),
            "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 3)}


def build(model_name: str, variant: str, args):
    """(config, model, train_data, test_data) built exactly as the compatibility benchmark builds them."""
    from benchmarks.compat import build_run

    extra = {"train_batch_size": BATCH_SIZE.get(model_name, 256), "checkpoint_dir": "/tmp/fusionlayer-step-cost"}
    config, _, (train_data, _, test_data), model = build_run(model_name, variant, 0, args, load_hparams(),
                                                            data_root=args.data_dir, extra=extra)
    return config, model, train_data, test_data


def measure(model_name: str, variant: str, args) -> dict:
    """One (model, variant): every number of the table, in this process."""
    from benchmarks.synthetic import training_step
    from torch.utils.flop_counter import FlopCounterMode

    config, model, train_data, test_data = build(model_name, variant, args)
    batches = []
    for batch in train_data:
        batches.append(batch.to(args.device))
        if len(batches) == args.batches:
            break
    step = training_step(model, batches)

    model.train()
    gemm = gemm_gflops(args.device)
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step_ms = statistics.median(timed(step, args.device, args.steps, warmup=3))
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    row = {"model": model_name, "variant": variant, "batch_size": int(config["train_batch_size"]),
           "step_ms": round(step_ms, 3), "flops": int(flops), "gemm_gflops": round(gemm, 1),
           "peak_mem_bytes": int(peak), "params": sum(p.numel() for p in model.parameters())}
    model.eval()
    eval_batch = next(iter(test_data))[0].to(args.device)
    for size in (1, 256):
        interaction = eval_batch[torch.arange(min(size, len(eval_batch)))]
        with torch.no_grad():
            row[f"predict_b{size}"] = percentiles(timed(lambda: model.full_sort_predict(interaction), args.device,
                                                        args.predict_repeats, warmup=5))
    if args.profile and variant != "plain":
        row["profile"] = profile_steps(step, model)
    if args.epoch:
        from recbole.trainer import Trainer

        model.train()
        trainer = Trainer(config, model)
        start = time.perf_counter()
        trainer._train_epoch(train_data, 0, show_progress=False)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        row["epoch_s"] = round(time.perf_counter() - start, 2)
    return row


def profile_steps(step, model, steps: int = 5, top: int = 12) -> list[dict]:
    """The ops that take the most self time over ``steps`` training steps (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    model.train()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"op": e.key, "calls_per_step": round(e.count / steps, 1),
             "self_ms_per_step": round(e.self_cpu_time_total / 1e3 / steps, 3)} for e in rows]


def run_worker(model_name: str, variant: str, args) -> dict:
    """``measure`` in a fresh interpreter (so each row's memory is its own); failures become a status."""
    command = [sys.executable, "-m", "benchmarks.step_cost", "--worker", f"{model_name}:{variant}",
               *worker_flags(args)]
    done = subprocess.run(command, cwd=HERE.parent, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return {"model": model_name, "variant": variant, "status": f"failed: {tail}"}
    return {**json.loads(lines[-1]), "status": "ok"}


def worker_flags(args) -> list[str]:
    flags = ["--device", args.device, "--dataset", args.dataset, "--steps", str(args.steps),
             "--batches", str(args.batches), "--predict-repeats", str(args.predict_repeats)]
    flags += ["--threads", str(args.threads)] if args.threads else []
    flags += ["--data-dir", args.data_dir] if args.data_dir else []
    flags += ["--cache-dir", args.cache_dir] if args.cache_dir else []
    flags += ["--profile"] if args.profile else []
    flags += [] if args.epoch else ["--no-epoch"]
    return flags


def add_ratios(rows: list[dict]) -> None:
    """Attached vs plain of the same backbone: step ratio, added ms and FLOPs, and the FLOP floor."""
    plain = {r["model"]: r for r in rows if r.get("variant") == "plain" and r["status"] == "ok"}
    for row in rows:
        base = plain.get(row["model"])
        if row.get("variant") != "fusion" or base is None or row["status"] != "ok":
            continue
        added_flops = row["flops"] - base["flops"]
        floor_ms = added_flops / (row["gemm_gflops"] * 1e9) * 1e3
        row.update({"step_ratio": round(row["step_ms"] / base["step_ms"], 3),
                    "added_ms": round(row["step_ms"] - base["step_ms"], 3), "added_flops": int(added_flops),
                    "floor_ms": round(floor_ms, 3),
                    "added_over_floor": round((row["step_ms"] - base["step_ms"]) / floor_ms, 2) if floor_ms > 0 else None,
                    "predict_b1_added_ms": round(row["predict_b1"]["p50_ms"] - base["predict_b1"]["p50_ms"], 3)})
        if row["model"] in TARGETS:
            row["target"] = f"step_ratio <= {TARGETS[row['model']]}"
            row["met"] = row["step_ratio"] <= TARGETS[row["model"]]
        else:
            row["target"] = "added_ms <= 3 x floor_ms + 1"
            row["met"] = row["added_ms"] <= 3 * floor_ms + 1
        row["predict_met"] = row["predict_b1_added_ms"] <= 1.0


def table(result: dict) -> str:
    """The README's markdown table."""
    head = ("| model | variant | batch | step ms | x plain | added ms | FLOP floor ms | target | "
            "predict b1 p50/p99 ms | predict b256 p50 ms | peak mem MiB | epoch s |\n|" + "---|" * 12)
    lines = [head]
    for r in result["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {r['variant']} | | {r['status']} |" + " |" * 8)
            continue
        target = "" if "met" not in r else f"{'met' if r['met'] else 'missed'} ({r['target']})"
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['batch_size']} | {r['step_ms']:.1f} | {r.get('step_ratio', '')} | "
            f"{r.get('added_ms', '')} | {r.get('floor_ms', '')} | {target} | "
            f"{r['predict_b1']['p50_ms']:.2f} / {r['predict_b1']['p99_ms']:.2f} | {r['predict_b256']['p50_ms']:.1f} | "
            f"{r['peak_mem_bytes'] / 2**20:.0f} | {r.get('epoch_s', '')} |")
    return "\n".join(lines)


def readme_block(result: dict, before: dict | None = None) -> str:
    """The README's block: provenance, the table (each attached step beside its ``before`` figure, if given)
    and every target, met or missed by how much, from the numbers of ``result`` alone."""
    old = {(r["model"], r["variant"]): r for r in (before or {}).get("rows", []) if r.get("status") == "ok"}
    lines = [f"`{result['command']}` at commit `{result['commit']}`, {result['device']}, torch {result['torch']}, "
             f"{result['date']}" + (f"; before: `{before['command']}` at commit `{before['commit']}`, {before['date']}"
                                    if before else ""), ""]
    head = "| model | variant | batch | step ms | x plain | added ms | FLOP floor ms | predict b1 p50 / p99 ms | " \
           "predict b256 p50 ms | epoch s |"
    lines += [head, "|" + "---|" * 10]
    for r in result["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {r['variant']} | | {r['status']} |" + " |" * 6)
            continue
        was = old.get((r["model"], r["variant"]))
        step = f"{r['step_ms']:.1f}" + (f" (before: {was['step_ms']:.1f})" if was and r["variant"] != "plain" else "")
        ratio = (f"{r['step_ratio']:.2f}" + (f" (before: {was['step_ratio']:.2f})" if was and "step_ratio" in was else "")
                 if "step_ratio" in r else "")
        lines.append(f"| {r['model']} | {r['variant']} | {r['batch_size']} | {step} | {ratio} | {r.get('added_ms', '')} | "
                     f"{r.get('floor_ms', '')} | {r['predict_b1']['p50_ms']:.2f} / {r['predict_b1']['p99_ms']:.2f} | "
                     f"{r['predict_b256']['p50_ms']:.1f} | {r.get('epoch_s', '')} |")
    lines += ["", "Targets:", ""]
    for r in result["rows"]:
        if "met" not in r:
            continue
        verdict = "met" if r["met"] else "**missed**"
        if r["model"] in TARGETS:
            lines.append(f"- {r['model']}: attached step {r['step_ratio']:.2f}x plain, target <= {TARGETS[r['model']]}x: "
                         f"{verdict}.")
        else:
            bar = 3 * r["floor_ms"] + 1
            lines.append(f"- {r['model']}: attaching adds {r['added_ms']:.1f} ms per step, target <= 3 x floor "
                         f"{r['floor_ms']:.1f} + 1 = {bar:.1f} ms: {verdict}" +
                         ("." if r["met"] else f" ({r['added_ms'] / bar:.1f}x over)."))
        lines[-1] += (f" Batch-1 prediction adds {r['predict_b1_added_ms']:.2f} ms (target <= 1 ms): "
                      f"{'met' if r['predict_met'] else '**missed**'}.")
    return "\n".join(lines)


def markdown(result: dict, before: dict | None = None) -> str:
    """The table and where the time goes (the profile's top ops), after and, if given, before."""
    parts = []
    for label, res in ([("Before", before)] if before else []) + [("After" if before else "Results", result)]:
        parts.append(f"## {label}\n\n`{res['command']}`, commit {res['commit']}, {res['device']}, "
                     f"torch {res['torch']}, {res['date']}\n\n{table(res)}\n")
        for row in res["rows"]:
            if row.get("profile"):
                ops = "; ".join(f"{p['op'].removeprefix('aten::')} {p['self_ms_per_step']:.1f} ms ({p['calls_per_step']:.0f} calls)"
                                for p in row["profile"][:8])
                parts.append(f"- {row['model']} {row['variant']}, {row['step_ms']:.1f} ms/step, top self time per step: {ops}")
        parts.append("")
    return "\n".join(parts)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {MODELS}")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: torch's)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per row")
    parser.add_argument("--batches", type=int, default=8, help="distinct real training batches the steps cycle over")
    parser.add_argument("--predict-repeats", type=int, default=100)
    parser.add_argument("--no-epoch", dest="epoch", action="store_false", help="skip the one-epoch wall time")
    parser.add_argument("--profile", action="store_true", help="add torch.profiler's top ops of attached models")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/step-cost-<cpu|cuda>.json")
    parser.add_argument("--before", type=Path, default=None,
                        help="an earlier results file to show before this run in the markdown summary (<out>.md)")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite <out>.md from <out> and --before, run nothing")
    parser.add_argument("--readme", type=Path, default=None, help="also rewrite this README's stepcost block")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.models = names(parser, args.models, MODELS, "--models")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch here; run on a machine with a GPU")
    for name in ("steps", "batches", "predict_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    args.out = args.out or results_file("step-cost", args.device)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    if args.worker:
        quiet()
        model_name, variant = args.worker.split(":")
        return reply(measure(model_name, variant, args))
    before = json.loads(args.before.read_text()) if args.before else None
    if args.markdown_only:
        publish(json.loads(args.out.read_text()), before, args)
        return 0
    rows = []
    for name in args.models:
        for variant in (["standalone"] if name == "M2SR" else ["plain", "fusion"]):
            rows.append(run_worker(name, variant, args))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "profile"}), flush=True)
    add_ratios(rows)
    result = {**provenance("benchmarks.step_cost", argv, args.device), "rows": rows}
    atomic_write_bytes(args.out, json.dumps(result, indent=1).encode())
    publish(result, before, args)
    print(table(result))
    return 0


def publish(result: dict, before: dict | None, args) -> None:
    """``<out>.md`` (tables and profiles) and, with ``--readme``, the README's stepcost block."""
    from benchmarks.report import update_readme

    atomic_write_bytes(args.out.with_suffix(".md"), markdown(result, before).encode())
    if args.readme:
        update_readme(args.readme, readme_block(result, before), block="stepcost")


if __name__ == "__main__":
    sys.exit(main())
