"""Positions that are padding in every row of a batch are not computed, and nothing changes for it."""

from __future__ import annotations

import pytest
import torch

import fusionlayer


def layer():
    torch.manual_seed(0)
    return fusionlayer.FeatureFusionLayer(modality_dims={"id": 8, "text": 12}, hidden_size=8, max_seq_length=10,
                                          token_hidden_size=6, channel_hidden_size=16, dropout=0.0).double()


def histories(layout: str) -> torch.Tensor:
    """(5, 10) item ids: four short histories (1-3 items) in ``layout``, then one full-length history."""
    short = [[3, 5], [7], [2, 9, 4], [6, 1]]
    rows = []
    for items in short:
        pad = [0] * (10 - len(items))
        rows.append({"right": items + pad, "left": pad + items, "holes": [items[0], 0, 0, *items[1:], *pad[2:]]}[layout])
    rows.append(list(range(1, 11)))
    return torch.tensor(rows)


@pytest.mark.parametrize("layout", ["right", "left", "holes"])
@pytest.mark.parametrize("last_only", [True, False])
def test_a_short_batch_gives_what_it_gives_beside_a_full_length_history(layout, last_only):
    fusion = layer()
    table = {"text": torch.randn(12, 12, dtype=torch.float64)}
    ids = torch.randn(5, 10, 8, dtype=torch.float64, requires_grad=True)
    seq = histories(layout)
    full = fusion.forward_items(seq, table, sequences={"id": ids}, last_only=last_only)  # K = L: nothing cropped
    short = fusion.forward_items(seq[:4], table, sequences={"id": ids[:4]}, last_only=last_only)  # K = 3 of 10
    torch.testing.assert_close(short, full[:4], rtol=1e-12, atol=1e-12)
    if not last_only:
        assert torch.equal(short[seq[:4] == 0], torch.zeros_like(short[seq[:4] == 0]))  # padded positions stay zero
    grad_full, = torch.autograd.grad(full[:4].sum(), ids)
    grad_short, = torch.autograd.grad(short.sum(), ids)
    torch.testing.assert_close(grad_short, grad_full, rtol=1e-12, atol=1e-12)


def test_forward_on_features_crops_the_same_way():
    fusion = layer()
    seq = histories("right")
    mask = seq != 0
    feats = {"id": torch.randn(5, 10, 8, dtype=torch.float64), "text": torch.randn(5, 10, 12, dtype=torch.float64)}
    full = fusion(feats, mask)
    short = fusion({k: v[:4] for k, v in feats.items()}, mask[:4])
    torch.testing.assert_close(short, full[:4], rtol=1e-12, atol=1e-12)
    assert short.shape == (4, 10, 8)


def test_a_batch_of_empty_histories_gives_zeros():
    fusion = layer()
    seq = torch.zeros(3, 10, dtype=torch.long)
    out = fusion.forward_items(seq, {"text": torch.randn(12, 12, dtype=torch.float64)},
                               sequences={"id": torch.randn(3, 10, 8, dtype=torch.float64)}, last_only=True)
    assert torch.equal(out, torch.zeros(3, 8, dtype=torch.float64))


@pytest.mark.parametrize("sequences", [True, False])
def test_length_groups_change_no_value(sequences, monkeypatch):
    """A batch of mostly short histories and a few long ones runs as groups by length, row for row the same."""
    import fusionlayer.fusion as fusion_module

    fusion = layer()
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([1, 2, 3, 9, 10] * 16)  # 80 rows: groups <= 8 and <= 16
    seq = (torch.randint(1, 12, (80, 10), generator=g) * (torch.arange(10) < lengths[:, None]))
    table = {"text": torch.randn(12, 12, generator=g, dtype=torch.float64)}
    ids = torch.randn(80, 10, 8, generator=g, dtype=torch.float64, requires_grad=True)
    given = {"sequences": {"id": ids}} if sequences else {"projected_tables": {"id": torch.randn(12, 8, generator=g, dtype=torch.float64)}}
    assert [len(rows) for rows in fusion_module._length_buckets(seq != 0)] == [48, 32]
    grouped = fusion.forward_items(seq, table, last_only=True, **given)
    monkeypatch.setattr(fusion_module, "BUCKET_MIN_ROWS", 10**9)
    assert fusion_module._length_buckets(seq != 0) is None
    whole = fusion.forward_items(seq, table, last_only=True, **given)
    torch.testing.assert_close(grouped, whole, rtol=1e-12, atol=1e-12)
    if sequences:
        a, = torch.autograd.grad(grouped.square().sum(), ids)
        b, = torch.autograd.grad(whole.square().sum(), ids)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
