"""The grouped Feature Mixer (every modality stream in one stack of batched blocks) computes what one Mixer stack per
stream computed, and checkpoints written in the per-stream layout load into it.

``fixtures/per_stream_v1.pt`` was written by ``fixtures/make_per_stream_v1.py`` at commit 1f06838, the last
per-stream layout: a standalone layer's state dict with inputs and outputs, and an attached SASRec's state dict with
a batch and its full-sort scores.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import fusionlayer
from fusionlayer.layers import GroupedMixerBlock, MixerBlock

FIXTURE = Path(__file__).parent / "fixtures" / "per_stream_v1.pt"


@pytest.fixture(scope="module")
def saved():
    return torch.load(FIXTURE, weights_only=False)


def per_stream_layer(saved_case):
    config = fusionlayer.FusionConfig.from_dict(saved_case["config"])
    return fusionlayer.FeatureFusionLayer(config=config).eval()


def test_fixture_is_in_the_per_stream_layout(saved):
    keys = saved["layer"]["state_dict"].keys()
    assert "mixers.text.1.mlp_tokens.fc1.weight" in keys and "norms.image.bias" in keys
    assert not any(k.startswith("stream_") for k in keys)


def test_per_stream_checkpoint_loads_and_computes_the_same(saved):
    case = saved["layer"]
    layer = per_stream_layer(case)
    result = layer.load_state_dict(case["state_dict"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        torch.testing.assert_close(layer(case["features"], case["mask"]), case["output"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer(case["features"], case["mask"], last_only=True), case["output_last"],
                                   rtol=1e-5, atol=1e-5)
    # stream order is the config's: the image stream's block-1 token weights are the saved image ones
    torch.testing.assert_close(layer.stream_mixers[1].mlp_tokens.fc1.weight[2],
                               case["state_dict"]["mixers.image.1.mlp_tokens.fc1.weight"])


def test_per_stream_checkpoint_loads_under_a_prefix(saved):
    """Inside a host model (an adapter's ``fusion``, M2SR's ``fusion``) the keys carry a prefix."""
    case = saved["layer"]
    host = nn.Module()
    host.inner = nn.Module()
    host.inner.fusion = per_stream_layer(case)
    host.load_state_dict({f"inner.fusion.{k}": v for k, v in case["state_dict"].items()}, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(host.inner.fusion(case["features"], case["mask"]), case["output"],
                                   rtol=1e-5, atol=1e-5)


def test_incomplete_per_stream_checkpoint_is_named_not_guessed(saved):
    state = dict(saved["layer"]["state_dict"])
    del state["mixers.text.0.norm2.weight"]
    layer = per_stream_layer(saved["layer"])
    with pytest.raises(RuntimeError, match=r"stream_mixers\.0\.norm2\.weight"):
        layer.load_state_dict(state, strict=True)


@pytest.mark.needs_ml100k
def test_attached_model_checkpoint_from_the_per_stream_layout(saved, tiny_root, tmp_path):
    """An attached SASRec saved by the per-stream code loads with strict=True and scores as it scored then."""
    from conftest import backbone_class, build, random_features
    from recbole.data.interaction import Interaction

    cls = backbone_class("SASRec")
    config, train, _, _ = build(cls, tiny_root, tmp_path)
    model = cls(config, train.dataset)
    fusionlayer.attach(model, random_features(train.dataset.item_num), dataset=train.dataset)
    case = saved["sasrec"]
    assert any(".mixers." in k for k in case["state_dict"])
    model.load_state_dict(case["state_dict"], strict=True)
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(Interaction(case["interaction"]))
    torch.testing.assert_close(scores, case["scores"], rtol=1e-4, atol=1e-5)


def test_grouped_block_equals_its_blocks_in_values_and_gradients():
    torch.manual_seed(0)
    blocks = [MixerBlock(8, 7, token_hidden_size=5, channel_hidden_size=12) for _ in range(3)]
    for block in blocks:  # non-trivial LayerNorm affines
        for name, p in block.named_parameters():
            if "norm" in name:
                p.data.add_(0.2 * torch.randn_like(p))
    grouped = GroupedMixerBlock.from_blocks(blocks)
    x = torch.randn(3, 6, 4, 8)  # (M, L, B, D): L = 6 < L_max = 7
    mask = (torch.rand(6, 4, 1) > 0.3).float()
    out = grouped(x, mask)
    per = torch.stack([block(x[m], mask, positions_first=True) for m, block in enumerate(blocks)])
    torch.testing.assert_close(out, per, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (per * g).sum().backward()
    for name, param in grouped.named_parameters():
        expected = torch.stack([block.get_parameter(name).grad for block in blocks])
        torch.testing.assert_close(param.grad, expected, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_a_seed_initialises_as_the_per_stream_layer_did(saved):
    """Built per stream and stacked: the same seed gives the per-stream layer's initial weights (runs reproduce)."""
    case = saved["layer"]
    torch.manual_seed(0)
    layer = per_stream_layer(case)
    state = case["state_dict"]  # written from a layer seeded with 0 (its LayerNorms perturbed after init)
    for i in range(2):
        for s, name in enumerate(["id", "text", "image"]):
            for param in ("mlp_tokens.fc1.weight", "mlp_channels.fc2.bias"):
                assert torch.equal(layer.stream_mixers[i].get_parameter(param)[s], state[f"mixers.{name}.{i}.{param}"])
    assert torch.equal(layer.fuse.weight, state["fuse.weight"])


def test_fewer_operations_than_one_stack_per_stream():
    """What grouping is for: the Feature Mixer's operator count no longer grows with the number of modalities."""
    from torch.profiler import ProfilerActivity, profile

    def count(n_modalities):
        dims = {f"m{i}": 6 for i in range(n_modalities)}
        layer = fusionlayer.FeatureFusionLayer(modality_dims=dims, hidden_size=8, max_seq_length=5, num_layers=2,
                                               token_hidden_size=4, channel_hidden_size=8).eval()
        feats = {k: torch.randn(2, 5, 6) for k in dims}
        mask = torch.ones(2, 5, dtype=torch.bool)
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
            layer(feats, mask, last_only=True)
        return sum(1 for e in prof.events() if e.name in ("aten::baddbmm", "aten::addmm", "aten::bmm", "aten::mm",
                                                            "aten::layer_norm", "aten::gelu"))

    one, three = count(1), count(3)
    # per-modality input projections (LayerNorm + Linear) still grow with M; the Mixer blocks do not
    assert three - one == 2 * 2


def test_training_on_cpu_runs_stream_by_stream_and_agrees_with_the_stacked_path(saved):
    """A CPU training step takes the per-stream path (weight slices, 2-D matmuls: less memory traffic than the stack);
    inference takes the stacked one. Both compute the same function."""
    from torch.profiler import ProfilerActivity, profile

    case = saved["layer"]
    layer = per_stream_layer(case)
    layer.load_state_dict(case["state_dict"])
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as stacked_prof:
        stacked = layer(case["features"], case["mask"])
    with profile(activities=[ProfilerActivity.CPU]) as apart_prof:
        apart = layer(case["features"], case["mask"])
    torch.testing.assert_close(apart.detach(), stacked, rtol=1e-5, atol=1e-5)
    names = lambda prof: {e.name for e in prof.events()}  # noqa: E731
    assert "aten::baddbmm" in names(stacked_prof) and "aten::baddbmm" not in names(apart_prof)
    apart.sum().backward()
    assert all(p.grad is not None for p in layer.stream_mixers.parameters())
