"""Latency, memory and FLOPs of the fusion layer against attention, swept over sequence length.

Contenders at equal width and depth, fed the same modality inputs (id 64-d, text 384-d, image 1280-d):

* ``fusion``: :class:`fusionlayer.FeatureFusionLayer` (Mixer blocks, fixed token-mixing width);
* ``attention``: the same layout with self-attention blocks (``scaled_dot_product_attention``)
  per modality and an attention fusion block;
* ``sasrec``: RecBole's own SASRec ``TransformerEncoder`` on the ID stream alone.

Each point runs in a fresh subprocess, so its peak RSS is that point's own (CPU memory); on CUDA
``torch.cuda.max_memory_allocated``. A contender whose point exceeds the time or memory budget is
marked and not run at larger L. Log-log slopes are fitted over the upper half of the sweep.

    python -m benchmarks.scaling                                   # 64..8192, CPU
    python -m benchmarks.scaling --quick                           # three short lengths, seconds
    python -m benchmarks.scaling --device cuda --out benchmarks/results/scaling-cuda.json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

HERE = Path(__file__).resolve().parent
from benchmarks.cli_args import names, reply, results_file, set_threads
from benchmarks.figures import save_png, subplots
from benchmarks.provenance import atomic_write_json, device_name, provenance
from fusionlayer import FeatureFusionLayer

CONTENDERS = ["fusion", "attention", "sasrec"]
MODALITY_DIMS = {"id": 64, "text": 384, "image": 1280}

# ----------------------------------------------------------------------------------- FLOP formulas
_REGISTERED = []


def register_sdpa_cpu_flops() -> None:
    """Count SDPA's CPU flash kernel, which FlopCounterMode otherwise counts as 0 FLOPs.

    Forward: ``4 * B * heads * L_q * L_k * d`` (QK^T and AV), torch's own formula for the GPU kernels.
    """
    if _REGISTERED:
        return
    aten = torch.ops.aten

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _sdpa_cpu_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    _REGISTERED.append(True)


# ----------------------------------------------------------------------------------- contenders
class AttentionBlock(nn.Module):
    """Pre-LN self-attention + MLP block on ``scaled_dot_product_attention`` (padding masked)."""

    def __init__(self, hidden: int, heads: int = 2, inner: int = 256) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv, self.proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(), nn.Linear(inner, hidden))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape  # (batch, positions, features)
        q, k, v = self.qkv(self.norm1(x)).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        x = x + self.proj(attn.transpose(1, 2).reshape(B, L, D))
        return x + self.mlp(self.norm2(x))


class AttentionFusion(nn.Module):
    """FeatureFusionLayer's layout with attention instead of Mixer blocks (the quadratic baseline)."""

    def __init__(self, modality_dims: dict[str, int], hidden: int = 64, layers: int = 2, fusion_layers: int = 1) -> None:
        super().__init__()
        self.proj = nn.ModuleDict({m: nn.Linear(d, hidden) for m, d in modality_dims.items()})
        self.blocks = nn.ModuleDict({m: nn.ModuleList(AttentionBlock(hidden) for _ in range(layers)) for m in modality_dims})
        self.fuse = nn.Linear(len(modality_dims) * hidden, hidden)
        self.fusion_blocks = nn.ModuleList(AttentionBlock(hidden) for _ in range(fusion_layers))

    def forward(self, features: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        streams = []
        for name, x in features.items():
            x = self.proj[name](x)
            for block in self.blocks[name]:
                x = block(x, mask)
            streams.append(x)
        x = self.fuse(torch.cat(streams, -1))
        for block in self.fusion_blocks:
            x = block(x, mask)
        return x


class SASRecEncoder(nn.Module):
    """RecBole's SASRec TransformerEncoder on the ID stream (its own attention mask construction)."""

    def __init__(self, hidden: int = 64, layers: int = 2) -> None:
        super().__init__()
        import fusionlayer

        fusionlayer.patch_recbole()
        from recbole.model.layers import TransformerEncoder

        self.encoder = TransformerEncoder(n_layers=layers, n_heads=2, hidden_size=hidden, inner_size=256,
                                          hidden_dropout_prob=0.0, attn_dropout_prob=0.0, hidden_act="gelu")

    def forward(self, features: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        extended = torch.where(torch.tril(mask[:, None, None, :].expand(-1, -1, mask.shape[1], -1)), 0.0, -10000.0)
        return self.encoder(features["id"], extended, output_all_encoded_layers=False)[-1]


def build(contender: str, L: int, hidden: int = 64) -> nn.Module:
    if contender == "fusion":
        return FeatureFusionLayer(modality_dims=MODALITY_DIMS, hidden_size=hidden, max_seq_length=L, dropout=0.0)
    if contender == "attention":
        return AttentionFusion(MODALITY_DIMS, hidden)
    if contender == "sasrec":
        return SASRecEncoder(hidden)
    raise KeyError(f"unknown contender {contender!r}; choose from {CONTENDERS}")


def make_inputs(B: int, L: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(B, L, d, generator=g).to(device) for m, d in MODALITY_DIMS.items()}
    lengths = torch.randint(L // 2, L + 1, (B,), generator=g)
    lengths[0] = L  # the longest history is L: the layer computes only as many positions as the longest one holds
    mask = (torch.arange(L)[None, :] < lengths[:, None]).to(device)
    return features, mask


# ----------------------------------------------------------------------------------- measuring
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)  # inside the timed region
        times.append((time.perf_counter() - start) * 1000)
    return times


def count_flops(fn) -> int:
    register_sdpa_cpu_flops()
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def measure_point(contender: str, L: int, B: int, device: str, repeats: int, budget_s: float) -> dict:
    """One (contender, L) point, measured in this process."""
    torch.manual_seed(0)
    if contender == "sasrec":  # import RecBole before the baseline, so its import is not counted as the point's memory
        import fusionlayer

        fusionlayer.patch_recbole()
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model = build(contender, L).to(device)
    features, mask = make_inputs(B, L, device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def fwd():
        with torch.no_grad():
            model(features, mask)

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        model(features, mask).float().square().mean().backward()

    first = timed(fwd_bwd, device, 1, warmup=0)[0]
    if first > budget_s * 1000:
        status = "over budget"
        fwd_ms, fwd_bwd_ms = None, first
    else:
        n = repeats if first * repeats < budget_s * 1000 else max(1, int(budget_s * 1000 // max(first, 1)))
        fwd_ms = statistics.median(timed(fwd, device, n))
        fwd_bwd_ms = statistics.median(timed(fwd_bwd, device, n, warmup=0) + [first])
        status = "ok"
    flops = count_flops(fwd)
    flops_fwd_bwd = count_flops(fwd_bwd)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline_rss
    return {"contender": contender, "L": L, "B": B, "fwd_ms": fwd_ms, "fwd_bwd_ms": fwd_bwd_ms, "peak_mem_bytes": int(peak),
            "flops": flops, "flops_fwd_bwd": flops_fwd_bwd, "params": sum(p.numel() for p in model.parameters()),
            "status": status}


def run_point_subprocess(contender: str, L: int, args) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.scaling", "--_point", contender, str(L), "--batch", str(args.batch),
           "--device", args.device, "--repeats", str(args.repeats), "--budget-s", str(args.budget_s)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=max(60.0, args.budget_s * 6), cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        return {"contender": contender, "L": L, "status": "over budget (timeout)"}
    if out.returncode != 0:
        status = "OOM" if out.returncode in (-9, 137) or "out of memory" in out.stderr.lower() else f"error: {out.stderr.strip().splitlines()[-1][:200] if out.stderr.strip() else out.returncode}"
        return {"contender": contender, "L": L, "status": status}
    return json.loads(out.stdout.strip().splitlines()[-1])


def fit_slope(lengths: list[float], values: list[float]) -> float | None:
    """Least-squares slope of log(value) on log(L) over the upper half of the points (>= 2 points)."""
    pairs = sorted((L, v) for L, v in zip(lengths, values) if v is not None and v > 0)
    pairs = pairs[len(pairs) // 2:] if len(pairs) >= 4 else pairs
    if len(pairs) < 2:
        return None
    xs, ys = [math.log(L) for L, _ in pairs], [math.log(v) for _, v in pairs]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den, 3) if den else None


def gemm_gflops(device: str, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    ms = statistics.median(timed(lambda: torch.mm(a, b), device, repeats, warmup=2))
    return round(2 * n**3 / (ms / 1000) / 1e9, 1)


def sweep(args) -> dict:
    points, stopped = [], {}
    for L in args.lengths:
        for contender in args.contenders:
            if contender in stopped:
                points.append({"contender": contender, "L": L, "status": f"skipped: {stopped[contender]} at smaller L"})
                continue
            if args.in_process:
                point = measure_point(contender, L, args.batch, args.device, args.repeats, args.budget_s)
            else:
                point = run_point_subprocess(contender, L, args)
            points.append(point)
            over_mem = point.get("peak_mem_bytes", 0) > args.mem_budget_gb * 2**30
            if point["status"] != "ok" or over_mem:
                if over_mem and point["status"] == "ok":
                    point["status"] = "over memory budget"
                stopped[contender] = point["status"]
            print(json.dumps(point), flush=True)
    slopes = {}
    for contender in args.contenders:
        ok = [p for p in points if p["contender"] == contender and p["status"] == "ok"]
        Ls = [p["L"] for p in ok]
        slopes[contender] = {"time": fit_slope(Ls, [p["fwd_bwd_ms"] for p in ok]),
                             "memory": fit_slope(Ls, [p["peak_mem_bytes"] for p in ok]),
                             "flops": fit_slope(Ls, [p["flops"] for p in ok])}
    return {"points": points, "slopes": slopes}


# ----------------------------------------------------------------------------------- end to end
def end_to_end(args) -> list[dict]:
    """Each backbone plain vs attached (and M2SR vs SASRec): train step and full_sort_predict latency.

    A model whose training step passes ``--budget-s`` (or fails to allocate) is marked and skipped at larger L.
    """
    rows, stopped = [], set()
    for L in args.e2e_lengths:
        for name in args.e2e_models:
            variants = ["standalone"] if name == "M2SR" else ["plain", "fusion"]
            for variant in variants:
                if (name, variant) in stopped:
                    rows.append({"model": name, "variant": variant, "L": L, "status": "skipped: over budget at smaller L"})
                    continue
                try:
                    rows.append(_e2e_row(name, variant, L, args))
                except RuntimeError as exc:  # CPU/GPU allocation failure: mark, never crash
                    rows.append({"model": name, "variant": variant, "L": L, "status": f"OOM: {str(exc).splitlines()[0][:120]}"})
                if rows[-1].get("status") != "ok":
                    stopped.add((name, variant))
                print(json.dumps(rows[-1]), flush=True)
    return rows


def _e2e_row(name: str, variant: str, L: int, args) -> dict:
    from benchmarks.synthetic import build_model, synthetic_batch, training_step

    torch.manual_seed(0)
    model = build_model(name, variant, L).to(args.device)
    step = training_step(model, synthetic_batch(model, 256, L, args.device, train=True))

    model.train()
    first = timed(step, args.device, 1)[0]
    if first > args.budget_s * 1000:
        return {"model": name, "variant": variant, "L": L, "train_step_ms": round(first, 1), "status": "over budget"}
    step_ms = statistics.median(timed(step, args.device, args.repeats, warmup=0) + [first])
    model.eval()
    latency = {}
    for users in (1, 256):
        batch = synthetic_batch(model, users, L, args.device, train=False)
        with torch.no_grad():
            samples = timed(lambda: model.full_sort_predict(batch), args.device, args.predict_repeats)
        samples.sort()
        latency[f"predict_b{users}_p50_ms"] = round(samples[len(samples) // 2], 3)
        latency[f"predict_b{users}_p99_ms"] = round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 3)
    return {"model": name, "variant": variant, "L": L, "train_step_ms": round(step_ms, 2), **latency,
            "status": "ok"}


# ----------------------------------------------------------------------------------- output
def write_outputs(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        keys = ["contender", "L", "B", "fwd_ms", "fwd_bwd_ms", "peak_mem_bytes", "flops", "flops_fwd_bwd", "params", "status"]
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result["points"])
    plot(result, out.with_suffix(".png"))


def plot(result: dict, path: Path) -> None:
    fig, axes = subplots(1, 2, figsize=(10, 4))
    for contender in {p["contender"] for p in result["points"]}:
        ok = sorted((p for p in result["points"] if p["contender"] == contender and p["status"] == "ok"), key=lambda p: p["L"])
        if not ok:
            continue
        slope = result["slopes"].get(contender, {})
        axes[0].plot([p["L"] for p in ok], [p["fwd_bwd_ms"] for p in ok], "o-", label=f"{contender} (slope {slope.get('time')})")
        axes[1].plot([p["L"] for p in ok], [p["peak_mem_bytes"] / 2**20 for p in ok], "o-",
                     label=f"{contender} (slope {slope.get('memory')})")
    for ax, title in zip(axes, ["forward+backward time (ms)", "peak memory (MiB)"]):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"{result['device']}, B={result['batch']}, {result['date'][:10]}, commit {result['commit']}", fontsize=9)
    save_png(fig, path)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="64,128,256,512,1024,2048,4096,8192")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=20.0, help="per-point forward+backward time budget (s)")
    parser.add_argument("--mem-budget-gb", type=float, default=12.0)
    parser.add_argument("--e2e-lengths", default="50,200,1000", help="end-to-end lengths ('' to skip)")
    parser.add_argument("--e2e-models", default="SASRec,GRU4Rec,FPMC,BPR,M2SR")
    parser.add_argument("--predict-repeats", type=int, default=50, help="full_sort_predict timings per point (p50/p99)")
    parser.add_argument("--quick", action="store_true",
                        help="lengths 64,128,256, no end-to-end table, 2 repeats, points measured in-process")
    parser.add_argument("--in-process", action="store_true",
                        help="measure every point in this process (fast; CPU peak memory is then a running high-water mark)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--_point", nargs=2, metavar=("CONTENDER", "L"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.e2e_lengths, args.repeats, args.in_process = "", 2, True
        if args.lengths == parser.get_default("lengths"):
            args.lengths = "64,128,256"
    args.lengths = [int(x) for x in args.lengths.split(",") if x]
    args.e2e_lengths = [int(x) for x in args.e2e_lengths.split(",") if x]
    args.contenders = names(parser, args.contenders, CONTENDERS, "--contenders")
    args.e2e_models = [m for m in args.e2e_models.split(",") if m]
    args.out = args.out or results_file("scaling", args.device, args.quick)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    if args._point:
        contender, L = args._point
        return reply(measure_point(contender, int(L), args.batch, args.device, args.repeats, args.budget_s))
    device = device_name(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}", flush=True)
    gemm = gemm_gflops(args.device)
    result = {**provenance("benchmarks.scaling", argv, args.device), "threads": torch.get_num_threads(),
              "batch": args.batch, "hidden": 64, "modality_dims": MODALITY_DIMS, "gemm_gflops": gemm}
    result.update(sweep(args))
    achieved = {p["L"]: round(p["flops_fwd_bwd"] / (p["fwd_bwd_ms"] / 1000) / 1e9, 1)
                for p in result["points"] if p["contender"] == "fusion" and p["status"] == "ok"}
    result["fusion_gflops"] = achieved
    result["fusion_fraction_of_gemm"] = {L: round(g / gemm, 3) for L, g in achieved.items()}
    ratios = {}
    for L in args.lengths:
        by = {p["contender"]: p for p in result["points"] if p["L"] == L and p["status"] == "ok"}
        if "fusion" in by and "attention" in by:
            ratios[L] = round(by["attention"]["fwd_bwd_ms"] / by["fusion"]["fwd_bwd_ms"], 2)
    result["attention_over_fusion_time"] = ratios
    write_outputs(result, args.out)  # the sweep is kept even if the end-to-end part is interrupted
    if args.e2e_lengths:
        result["end_to_end"] = end_to_end(args)
        write_outputs(result, args.out)
    print(json.dumps({"slopes": result["slopes"], "gemm_gflops": gemm, "fusion_fraction_of_gemm": result["fusion_fraction_of_gemm"],
                      "attention_over_fusion_time": ratios}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
