"""FeatureFusionLayer: shapes, gradients, padding safety, linear FLOPs, parameter count, errors."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import fusionlayer
from fusionlayer import FeatureFusionLayer, FusionConfig


def inputs(B, L, seed=0, dims=(("id", 16), ("text", 12), ("image", 20))):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(B, L, d, generator=g) for name, d in dims}


def right_padded(lengths, L):
    return torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]


@pytest.mark.parametrize("B,L", [(1, 1), (1, 10), (3, 7), (4, 10)])
def test_shapes(fusion_layer, B, L):
    mask = right_padded([L] * B, L)
    assert fusion_layer(inputs(B, L), mask).shape == (B, L, 16)
    assert fusion_layer(inputs(B, L), mask, last_only=True).shape == (B, 16)


def test_an_empty_batch_gives_an_empty_output(fusion_layer):
    """A batch of zero histories (the last shard of a split, a filtered batch) is not an error."""
    mask = torch.ones(0, 10, dtype=torch.bool)
    assert fusion_layer(inputs(0, 10), mask).shape == (0, 10, 16)
    assert fusion_layer(inputs(0, 10), mask, last_only=True).shape == (0, 16)
    tables = {name: x[0] for name, x in inputs(5, 3).items()}
    out = fusion_layer.forward_items(torch.zeros(0, 10, dtype=torch.long), tables)
    assert out.shape == (0, 10, 16)


def test_every_parameter_gets_a_gradient(fusion_layer):
    out = fusion_layer(inputs(4, 10), right_padded([10, 6, 3, 1], 10))
    out.square().sum().backward()
    for name, p in fusion_layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


@pytest.mark.parametrize("layout", ["right", "left", "scattered"])
def test_padding_content_never_reaches_real_positions(fusion_layer, layout):
    B, L = 4, 10
    if layout == "right":
        mask = right_padded([10, 6, 3, 1], L)
    elif layout == "left":
        mask = right_padded([10, 6, 3, 1], L).flip(1)
    else:
        mask = torch.rand(B, L, generator=torch.Generator().manual_seed(1)) > 0.4
    x = inputs(B, L)
    y = {k: torch.where(mask.unsqueeze(-1), v, torch.randn_like(v) * 100) for k, v in x.items()}
    out_x, out_y = fusion_layer(x, mask), fusion_layer(y, mask)
    assert torch.equal(out_x[mask], out_y[mask])
    assert torch.equal(out_x[~mask], torch.zeros_like(out_x[~mask]))


def test_newest_item_sees_the_same_weights_whatever_the_padding(fusion_layer):
    """A right-padded history and the same history left-padded give the same last output."""
    x = inputs(1, 4)
    padded = {k: torch.cat([v, torch.zeros(1, 6, v.shape[-1])], 1) for k, v in x.items()}
    a = fusion_layer(padded, right_padded([4], 10), last_only=True)
    b = fusion_layer(x, torch.ones(1, 4, dtype=torch.bool), last_only=True)
    torch.testing.assert_close(a, b)


def test_forward_items_equals_forward_on_gathered_rows(fusion_layer):
    """Projecting the tables once and indexing them equals gathering rows first."""
    g = torch.Generator().manual_seed(0)
    tables = {"id": torch.randn(30, 16, generator=g), "text": torch.randn(30, 12, generator=g),
              "image": torch.randn(30, 20, generator=g)}
    item_seq = torch.randint(1, 30, (3, 10), generator=g)
    item_seq[1, 5:] = 0
    item_seq[2, 1:] = 0
    mask = item_seq != 0
    gathered = {k: t[item_seq] for k, t in tables.items()}
    torch.testing.assert_close(fusion_layer.forward_items(item_seq, tables), fusion_layer(gathered, mask))
    seq = {"id": gathered["id"]}
    rest = {k: v for k, v in tables.items() if k != "id"}
    torch.testing.assert_close(fusion_layer.forward_items(item_seq, rest, sequences=seq, last_only=True),
                               fusion_layer(gathered, mask, last_only=True))
    projected = fusion_layer.project_tables(rest)  # reusing one projection gives the same result
    assert fusion_layer.forward_items(item_seq, {}, sequences=seq, projected_tables=projected, last_only=True).equal(
        fusion_layer.forward_items(item_seq, rest, sequences=seq, last_only=True))


def flops(layer, L, B=2):
    mask = torch.ones(B, L, dtype=torch.bool)
    with FlopCounterMode(display=False) as counter:
        layer(inputs(B, L), mask)
    return counter.get_total_flops()


def test_flops_grow_linearly_in_length():
    layer = FeatureFusionLayer(modality_dims={"id": 16, "text": 12, "image": 20}, hidden_size=16, max_seq_length=512,
                               token_hidden_size=8, channel_hidden_size=32)
    f128, f256, f512 = flops(layer, 128), flops(layer, 256), flops(layer, 512)
    assert f256 == 2 * f128 and f512 == 2 * f256  # exactly linear: no L x L term anywhere


def test_parameter_count_matches_formula():
    dims, H, Lmax, Ht, Hc, n, nf = {"id": 16, "text": 12, "image": 20}, 16, 10, 8, 32, 2, 1
    layer = FeatureFusionLayer(modality_dims=dims, hidden_size=H, max_seq_length=Lmax, token_hidden_size=Ht,
                               channel_hidden_size=Hc, num_layers=n, num_fusion_layers=nf)
    block = 2 * H + (Lmax * Ht + Ht + Ht * Lmax + Lmax) + 2 * H + (H * Hc + Hc + Hc * H + H)
    per_modality = {m: 2 * d + d * H + H + n * block + 2 * H for m, d in dims.items()}
    expected = sum(per_modality.values()) + (len(dims) * H * H + H) + nf * block + 2 * H
    assert sum(p.numel() for p in layer.parameters()) == expected


def test_deterministic_under_a_fixed_seed():
    def make():
        torch.manual_seed(123)
        return FeatureFusionLayer(modality_dims={"id": 8, "text": 6}, hidden_size=8, max_seq_length=5, dropout=0.2)

    a, b = make(), make()
    x, mask = inputs(2, 5, dims=(("id", 8), ("text", 6))), right_padded([5, 2], 5)
    torch.manual_seed(7)
    out_a = a(x, mask)
    torch.manual_seed(7)
    out_b = b(x, mask)
    assert torch.equal(out_a, out_b)


def test_config_object_and_round_trip():
    config = FusionConfig(modality_dims={"id": 8, "text": 6}, hidden_size=8, max_seq_length=5)
    assert FusionConfig.from_dict(config.to_dict()) == config
    assert FeatureFusionLayer(config=config).config is config
    with pytest.raises(TypeError, match="either config"):
        FeatureFusionLayer({"id": 8}, config=config)
    with pytest.raises(KeyError, match="unknown FusionConfig fields"):
        FusionConfig.from_dict({"modality_dims": {"id": 8}, "hidden": 3})


@pytest.mark.parametrize("kwargs,error,match", [
    ({"modality_dims": {}}, ValueError, "non-empty dict"),
    ({"modality_dims": {"id": 0}}, ValueError, "positive int"),
    ({"modality_dims": {"a.b": 3}}, ValueError, "no '.'"),
    ({"modality_dims": {1: 3}}, TypeError, "must be strings"),
    ({"modality_dims": {"id": 3}, "hidden_size": -1}, ValueError, "hidden_size must be a positive int"),
    ({"modality_dims": {"id": 3}, "dropout": 1.5}, ValueError, "dropout must be in"),
    ({"modality_dims": {"id": 3}, "num_fusion_layers": -1}, ValueError, "num_fusion_layers"),
])
def test_config_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        FusionConfig(**kwargs)


def test_bad_inputs_raise_clear_errors(fusion_layer):
    x, mask = inputs(2, 5), right_padded([5, 3], 5)
    with pytest.raises(ValueError, match=r"missing: \['image'\]"):
        fusion_layer({k: v for k, v in x.items() if k != "image"}, mask)
    with pytest.raises(ValueError, match=r"unexpected: \['audio'\]"):
        fusion_layer({**x, "audio": x["id"]}, mask)
    with pytest.raises(ValueError, match=r"features\['text'\] has 11 features .* modality_dims\['text'\]=12"):
        fusion_layer({**x, "text": torch.randn(2, 5, 11)}, mask)
    with pytest.raises(ValueError, match=r"must have shape \(B=2, L=5, D\), got \(3, 5, 12\)"):
        fusion_layer({**x, "text": torch.randn(3, 5, 12)}, mask)
    with pytest.raises(TypeError, match="dtype torch.bool"):
        fusion_layer(x, mask.float())
    with pytest.raises(ValueError, match=r"mask must have shape \(B, L\)"):
        fusion_layer(x, mask[0])
    with pytest.raises(TypeError, match="mask must be a torch.Tensor"):
        fusion_layer(x, [[True] * 5] * 2)
    long_x = inputs(1, 11)
    with pytest.raises(ValueError, match="exceeds max_seq_length=10"):
        fusion_layer(long_x, torch.ones(1, 11, dtype=torch.bool))
    with pytest.raises(TypeError, match="item_seq must be an integer tensor"):
        fusion_layer.forward_items(torch.zeros(2, 5), {})
    with pytest.raises(ValueError, match="both in tables and in sequences"):
        fusion_layer.forward_items(torch.ones(2, 5, dtype=torch.long), {"id": torch.randn(3, 16)},
                                   sequences={"id": torch.randn(2, 5, 16)})
    with pytest.raises(ValueError, match=r"projected_tables\['image'\] must be an \(N, hidden_size="):
        fusion_layer.forward_items(torch.ones(2, 5, dtype=torch.long), {"text": torch.randn(3, 12)},
                                   sequences={"id": torch.randn(2, 5, 16)}, projected_tables={"image": torch.randn(3, 20)})


def test_public_api_exports():
    for name in fusionlayer.__all__:
        assert getattr(fusionlayer, name) is not None
    assert callable(fusionlayer.attach)  # the function, not the module of the same name
