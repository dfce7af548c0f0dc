"""Large catalogues: rows-only content for pairwise losses and histories, float16 memory-mapped tables,
``reduce_features`` (issue 16). Synthetic models: no dataset files needed."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import fusionlayer
from fusionlayer.adapters.base import FusionAdapter
from fusionlayer.adapters.content import ItemContent
from benchmarks.synthetic import build_model, synthetic_batch

N = 6000  # items: a batch touches far fewer than half of them


def tables(n=N, dims=(("text", 24), ("image", 40)), seed=0, missing=(5, 17)):
    g = torch.Generator().manual_seed(seed)
    out = {name: torch.randn(n, d, generator=g) for name, d in dims}
    for t in out.values():
        t[0] = 0
        t[list(missing)] = 0  # items without content
    return out


def trained_looking(model):
    with torch.no_grad():
        for p in model.fusion_adapter.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.2)
    return model


def loss_and_grads(model, batch):
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    loss = model.calculate_loss(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["BPR", "SASRec", "FPMC", "GRU4Rec"])
@pytest.mark.parametrize("options", [{}, {"cold_dropout": 0.3}])
def test_rows_only_path_equals_the_whole_catalogue(name, options, monkeypatch):
    torch.manual_seed(0)
    model = trained_looking(build_model(name, "fusion", 8, n_items=N, feature_tables=tables(), **options))
    batch = synthetic_batch(model, 16, 8, "cpu", train=True)
    calls = {"rows": 0}
    original = FusionAdapter.fused_rows

    def counting(self, *args):
        calls["rows"] += 1
        return original(self, *args)

    projections = {"whole": 0}
    full_projection = ItemContent.projected_tables  # every whole-catalogue projection, whoever asks for it

    def counting_projection(self):
        projections["whole"] += 1
        return full_projection(self)

    monkeypatch.setattr(FusionAdapter, "fused_rows", counting)
    monkeypatch.setattr(ItemContent, "projected_tables", counting_projection)
    fast = loss_and_grads(model, batch)
    # pairwise losses never project the whole catalogue; CE losses score every item, once per step
    assert calls["rows"] > 0 and projections["whole"] == (0 if name in ("BPR", "FPMC") else 1)
    monkeypatch.setattr(FusionAdapter, "rows_fraction", 0.0)  # every read: the whole catalogue's content
    slow = loss_and_grads(model, batch)
    assert projections["whole"] > 1
    torch.testing.assert_close(fast[0], slow[0], rtol=1e-5, atol=1e-6)
    assert fast[1].keys() == slow[1].keys()
    for key in fast[1]:
        torch.testing.assert_close(fast[1][key], slow[1][key], rtol=1e-4, atol=1e-6, msg=lambda m: f"{key}: {m}")


def test_a_float16_memory_map_is_reduced_in_chunks_never_copied_whole(tmp_path):
    full = tables(dims=(("text", 24), ("image", 96)))
    maps = {}
    for name, t in full.items():
        np.save(tmp_path / f"{name}.npy", t.numpy().astype(np.float16))
        maps[name] = np.load(tmp_path / f"{name}.npy", mmap_mode="r")
    model = build_model("SASRec", "fusion", 8, n_items=N, feature_tables=maps, reduce_features=32)
    adapter = model.fusion_adapter
    assert adapter.normalized_tables()["image"].shape == (N, 32)  # reduced: (N, r) float32, not (N, 96)
    assert adapter.normalized_tables()["text"].shape == (N, 24)  # no wider than r: kept exact
    assert adapter.feature_dims == {"text": 24, "image": 96}
    assert not adapter.item_present[[0, 5, 17]].any() and adapter.item_present[1:5].all()
    assert torch.count_nonzero(adapter.normalized_tables()["image"][[5, 17]]) == 0  # no content stays zero
    twin = build_model("SASRec", "fusion", 8, n_items=N, feature_tables=maps, reduce_features=32)
    assert torch.equal(twin.fusion_adapter.normed_image, adapter.normed_image)  # the same basis every time
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(synthetic_batch(model, 4, 8, "cpu", train=False))
    assert scores.shape == (4, N) and torch.isfinite(scores).all()
    loss = model.calculate_loss(synthetic_batch(model, 4, 8, "cpu", train=True))
    assert torch.isfinite(loss)


def _resident_bytes(table: torch.Tensor) -> int:
    """Resident bytes of the /proc/self/smaps mapping that holds ``table``."""
    start, found = table.data_ptr(), None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and all(c in "0123456789abcdef-" for c in head):
                low, high = (int(x, 16) for x in head.split("-"))
                found = low <= start < high
            elif found and line.startswith("Rss:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("mapping not found")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/maps and madvise: Linux")
def test_one_pass_over_a_memory_mapped_table_releases_its_pages_and_keeps_its_data(tmp_path):
    from fusionlayer.reduction import is_read_only_file_mapping, normalize_rows, row_chunks

    data = np.random.default_rng(0).standard_normal((4096, 512)).astype(np.float16)  # 4 MiB
    np.save(tmp_path / "t.npy", data)
    mapped = torch.from_numpy(np.load(tmp_path / "t.npy", mmap_mode="r"))
    assert is_read_only_file_mapping(mapped)
    assert not is_read_only_file_mapping(torch.from_numpy(data))  # anonymous memory: never released
    assert not is_read_only_file_mapping(torch.from_numpy(np.load(tmp_path / "t.npy", mmap_mode="c")))  # private
    assert not is_read_only_file_mapping(torch.from_numpy(np.load(tmp_path / "t.npy", mmap_mode="r+")))  # writable
    float(mapped.float().sum())  # every page resident
    assert _resident_bytes(mapped) >= data.nbytes
    sums = [float(rows.sum()) for _, rows in row_chunks(mapped, elements=512 * 1024)]  # 4 chunks of 1 MiB
    assert _resident_bytes(mapped) < data.nbytes // 4  # released chunk by chunk
    assert sums == [float(torch.from_numpy(data[i:i + 1024]).float().sum()) for i in range(0, 4096, 1024)]
    assert torch.equal(mapped, torch.from_numpy(data))  # read back from the file, unchanged
    owned = torch.from_numpy(data.astype(np.float32))
    normalize_rows(owned, 1e-12, in_place=True)  # anonymous float32 written in place: the rows standardised
    assert torch.allclose(owned, normalize_rows(mapped, 1e-12), atol=1e-5)
    assert torch.allclose(owned.mean(dim=1), torch.zeros(4096), atol=1e-4)


def test_reduction_keeps_the_leading_directions_of_a_low_rank_table():
    from fusionlayer.reduction import principal_basis, reduce_table

    g = torch.Generator().manual_seed(0)
    table = torch.randn(3000, 4, generator=g) @ torch.randn(4, 64, generator=g)  # rank 4
    basis = principal_basis(table, 4, 1e-6)
    x = torch.nn.functional.layer_norm(table, (64,), eps=1e-6)
    kept = reduce_table(table, basis, 1e-6) @ basis.T
    assert torch.allclose(kept, x, atol=1e-3)  # rank-4 rows survive a 4-column reduction
    small = principal_basis(table[:100], 4, 1e-6, sample_rows=50)  # sampled rows: still orthonormal
    torch.testing.assert_close(small.T @ small, torch.eye(4), atol=1e-5, rtol=0)


def test_add_items_on_a_reduced_model_takes_the_original_width():
    model = build_model("BPR", "fusion", 8, n_items=N, feature_tables=tables(), reduce_features=16)
    trained_looking(model).eval()
    before_rows = model.fusion_adapter.normed_image.shape[0]
    new = {name: t[1:3] for name, t in tables(n=3, seed=1, missing=()).items()}
    ids = fusionlayer.add_items(model, new, ["x1", "x2"])
    assert ids == [N, N + 1] and model.fusion_adapter.normed_image.shape == (before_rows + 2, 16)
    with pytest.raises(ValueError, match="width"):
        fusionlayer.add_items(model, {"text": torch.randn(1, 24), "image": torch.randn(1, 16)}, ["x3"])


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "64"])
def test_reduce_features_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="reduce_features must be a positive int"):
        fusionlayer.AdapterOptions(reduce_features=bad)


@pytest.mark.slow
def test_catalogue_benchmark_quick_writes_every_point(tmp_path):
    import json

    from benchmarks import catalogue

    out = tmp_path / "catalogue.json"
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- catalogue:begin -->\nold\n<!-- catalogue:end -->\n")
    assert catalogue.main(["--quick", "--models", "SASRec", "--sizes", "300,600", "--out", str(out),
                           "--work", str(tmp_path / "tables"), "--reduce", "16", "--readme", str(readme)]) == 0
    result = json.loads(out.read_text())
    assert {"command", "commit", "device", "date"} <= set(result)
    assert [(p["variant"], p["n_items"]) for p in result["points"]] == [("plain", 300), ("fusion", 300),
                                                                      ("plain", 600), ("fusion", 600)]
    for point in result["points"]:
        assert point["status"] == "ok", point
        assert {"model", "variant", "n_items", "table_bytes", "peak_rss_bytes", "attach_s", "step_ms", "predict_b1_ms",
                "predict_b256_ms"} <= set(point)
        assert point["table_bytes"] == point["n_items"] * (384 + 1280) * 2  # float16
    assert "slope_fusion" in result["targets"]["SASRec"] and out.with_suffix(".png").is_file()
    assert "old" not in readme.read_text() and "| SASRec | fusion | 600 |" in readme.read_text()
