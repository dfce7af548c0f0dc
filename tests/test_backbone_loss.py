"""attach(..., backbone_loss=w): each training loss adds w times the backbone's own loss (the fusion off)."""

from __future__ import annotations

import pytest
import torch

import fusionlayer
from conftest import fresh

pytestmark = pytest.mark.needs_ml100k
BACKBONES = ["SASRec", "GRU4Rec", "FPMC", "BPR"]


def moved(model):
    with torch.no_grad():  # the fusion's outputs away from zero, so fused and backbone losses differ
        for p in model.fusion_adapter.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name", ["FPMC", "BPR"])  # no dropout inside these backbones: each pass is deterministic
def test_the_loss_is_the_fused_loss_plus_the_weighted_backbone_loss(name, setups):
    model, base, (*_, batch) = fresh(name, setups, backbone_loss=0.5, output_dropout=0.0)
    moved(model)
    plain, _, _ = fresh(name, setups, output_dropout=0.0)
    plain.load_state_dict(model.state_dict())
    model.train(), plain.train(), base.train()
    base.load_state_dict(fusionlayer.backbone_state_dict(model))
    expected = plain.calculate_loss(batch) + 0.5 * base.calculate_loss(batch)
    torch.testing.assert_close(model.calculate_loss(batch), expected)


@pytest.mark.parametrize("name", BACKBONES)
def test_gradients_reach_both_parts_and_scores_are_unchanged(name, setups):
    model, base, (*_, batch) = fresh(name, setups, backbone_loss=1.0)
    other, _, _ = fresh(name, setups)
    moved(model)
    other.load_state_dict(model.state_dict())
    model.train()
    model.calculate_loss(batch).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert any(float(g.abs().sum()) > 0 for n, g in grads.items() if n.startswith("fusion_adapter."))
    model.eval(), other.eval()
    with torch.no_grad():
        assert torch.equal(model.predict(batch), other.predict(batch))  # evaluation always fuses


@pytest.mark.parametrize("name", BACKBONES)
def test_identity_at_attach_is_kept(name, setups):
    """At attach the fusion adds nothing, so the loss is (1 + w) times the plain loss (up to the backbone's own
    dropout draws, which differ between the two passes: compared in eval mode with autograd on)."""
    model, base, (*_, batch) = fresh(name, setups, backbone_loss=2.0)
    model.eval(), base.eval()
    adapter = model.fusion_adapter
    adapter.train()  # the adapter's training scope, the backbone's layers without dropout
    loss = model.calculate_loss(batch)
    torch.testing.assert_close(loss, 3.0 * base.calculate_loss(batch))


@pytest.mark.parametrize("option", ["backbone_loss", "softmax_loss"])
@pytest.mark.parametrize("bad, error", [(-0.1, ValueError), ("1", TypeError), (True, TypeError)])
def test_bad_values_are_refused(option, bad, error):
    with pytest.raises(error, match=option):
        fusionlayer.AdapterOptions(**{option: bad})


@pytest.mark.parametrize("name", ["FPMC", "BPR"])
def test_softmax_loss_adds_the_cross_entropy_of_the_fused_scores(name, setups):
    model, _, (*_, batch) = fresh(name, setups, softmax_loss=0.5, output_dropout=0.0)
    moved(model)
    plain, _, _ = fresh(name, setups, output_dropout=0.0)
    plain.load_state_dict(model.state_dict())
    model.train(), plain.train()
    target = batch[plain.ITEM_ID]
    scores = plain.full_sort_predict(batch).view(target.shape[0], -1)
    expected = plain.calculate_loss(batch) + 0.5 * torch.nn.functional.cross_entropy(scores, target)
    loss = model.calculate_loss(batch)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert float(model.fusion_adapter.item_out[next(iter(model.fusion_adapter.item_out))].weight.grad.abs().sum()) > 0


@pytest.mark.parametrize("name", ["SASRec", "GRU4Rec"])
def test_softmax_loss_changes_nothing_for_a_cross_entropy_backbone(name, setups):
    model, _, (*_, batch) = fresh(name, setups, softmax_loss=1.0)
    other, _, _ = fresh(name, setups)
    moved(model)
    other.load_state_dict(model.state_dict())
    model.train(), other.train()
    torch.manual_seed(3)
    loss = model.calculate_loss(batch)
    torch.manual_seed(3)
    assert torch.equal(loss, other.calculate_loss(batch))
