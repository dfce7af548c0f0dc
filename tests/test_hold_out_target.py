"""attach(..., hold_out_target=True): a training step's fused history leaves out the positive being scored."""

from __future__ import annotations

import pytest
import torch

import fusionlayer
from conftest import fresh, same_training_loss

pytestmark = pytest.mark.needs_ml100k
BACKBONES = ["SASRec", "GRU4Rec", "FPMC", "BPR"]


def attached(name, setups, **options):
    model, _, (*_, batch) = fresh(name, setups, output_dropout=0.0, **options)
    with torch.no_grad():  # outputs away from zero, so the history's content reaches the scores
        for p in model.fusion_adapter.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model, batch


def bpr_loss_by_hand(model, batch, *, leave_out: bool) -> torch.Tensor:
    """BPR's loss with each case's history built explicitly (the positive removed, or not)."""
    adapter = model.fusion_adapter
    user, pos, neg = batch[model.USER_ID], batch[model.ITEM_ID], batch[model.NEG_ITEM_ID]
    history = adapter.history[user]
    if leave_out:
        history = history.masked_fill(history == pos.unsqueeze(1), 0)
    embedding = model.item_embedding
    user_e = model.user_embedding(user) + adapter.fuse_history(history, id_sequence=embedding(history))
    pos_s, neg_s = (user_e * embedding(pos)).sum(1), (user_e * embedding(neg)).sum(1)
    return model.loss(pos_s, neg_s)


def test_bpr_training_loss_leaves_each_positive_out_of_its_history(setups):
    model, batch = attached("BPR", setups, hold_out_target=True)
    adapter = model.fusion_adapter
    user, pos = batch[model.USER_ID], batch[model.ITEM_ID]
    # the leak: a positive among its user's newest max_seq_length training items is in its own history
    assert bool((adapter.history[user] == pos.unsqueeze(1)).any(1).any())
    model.train()
    loss = model.calculate_loss(batch)
    adapter._scope = {"training_loss": True}
    try:
        expected, leaky = bpr_loss_by_hand(model, batch, leave_out=True), bpr_loss_by_hand(model, batch, leave_out=False)
    finally:
        adapter._scope = None
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, leaky)
    loss.backward()
    assert model.fusion_adapter.user_out.weight.grad.abs().sum() > 0


def test_bpr_without_the_option_keeps_the_whole_history(setups):
    model, batch = attached("BPR", setups)
    model.train()
    loss = model.calculate_loss(batch)
    model.fusion_adapter._scope = {"training_loss": True}
    try:
        torch.testing.assert_close(loss, bpr_loss_by_hand(model, batch, leave_out=False))
    finally:
        model.fusion_adapter._scope = None


@pytest.mark.parametrize("name", BACKBONES)
def test_evaluation_is_unchanged_by_the_option(name, setups):
    """Scores (evaluation) never leave anything out; sequential backbones' training is unchanged too."""
    on, batch = attached(name, setups, hold_out_target=True)
    off, _ = attached(name, setups)
    on.eval(), off.eval()
    with torch.no_grad():
        assert torch.equal(on.predict(batch), off.predict(batch))
    if name != "BPR":
        assert same_training_loss(on, off, batch)


@pytest.mark.parametrize("name", BACKBONES)
def test_identity_at_attach_and_detach_with_the_option(name, setups):
    model, base, (config, train, valid, test, batch) = fresh(name, setups, hold_out_target=True)
    assert same_training_loss(model, base, batch)
    state = fusionlayer.fusion_state_dict(model)
    fusionlayer.detach(model)
    assert "calculate_loss" not in model.__dict__ and not fusionlayer.is_attached(model)
    again, _, _ = fresh(name, setups, hold_out_target=True)
    fusionlayer.load_fusion_state_dict(again, state)
    assert again.fusion_adapter.options.hold_out_target is True


@pytest.mark.parametrize("bad, error", [("yes", TypeError), (1, TypeError), (None, TypeError)])
def test_bad_values_are_refused(bad, error):
    with pytest.raises(error, match="hold_out_target must be True or False"):
        fusionlayer.AdapterOptions(hold_out_target=bad)


def test_bpr_inference_reuses_every_users_fused_history_until_a_parameter_changes(setups):
    """Full-sort evaluation of BPR scores one user per call: the fused users are computed once, and again after
    an optimiser step; the scores equal those computed with autograd on (no cache)."""
    model, batch = attached("BPR", setups)
    users = batch[model.USER_ID][:5]
    model.eval()
    with torch.no_grad():
        cached = model.get_user_embedding(users)
        assert "fused_users" in model.fusion_adapter._memo
        table = model.fusion_adapter._memo["fused_users"][1]
        assert torch.equal(model.get_user_embedding(users), cached) and model.fusion_adapter._memo["fused_users"][1] is table
    fresh = model.get_user_embedding(users)  # autograd on: computed, not cached
    torch.testing.assert_close(cached, fresh.detach())
    with torch.no_grad():
        model.fusion_adapter.user_out.weight.add_(1.0)  # an in-place step: the cache must not serve stale users
        moved = model.get_user_embedding(users)
    assert not torch.allclose(moved, cached)
    torch.testing.assert_close(moved, model.get_user_embedding(users).detach())
