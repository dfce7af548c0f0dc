"""pytest-benchmark grid: fusion vs attention vs SASRec's encoder, forward+backward, grouped by L.

    pytest benchmarks/ --benchmark-only
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.scaling import build, count_flops, make_inputs

pytest.importorskip("pytest_benchmark")


@pytest.mark.parametrize("L", [64, 256, 1024])
@pytest.mark.parametrize("contender", ["fusion", "attention", "sasrec"])
def test_fwd_bwd(benchmark, contender, L):
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build(contender, L).to(device)
    features, mask = make_inputs(4, L, device)

    def step():
        model.zero_grad(set_to_none=True)
        model(features, mask).square().mean().backward()
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"L={L}"
    benchmark.extra_info.update(contender=contender, L=L, device=device,
                                flops_fwd=count_flops(lambda: model(features, mask)),
                                params=sum(p.numel() for p in model.parameters()))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)
    if device == "cuda":
        benchmark.extra_info["peak_mem_bytes"] = torch.cuda.max_memory_allocated()
