"""``attach(..., cold_regression=w)``: cold items' candidate rows regressed from their content onto the warm items'
embeddings (DeepMusic / DropoutNet's regression), on all four backbones: which rows change, what learns, checkpoints,
and bad values."""

from __future__ import annotations

import pytest
import torch

import fusionlayer
from conftest import backbone_class, random_features
from fusionlayer.config import AdapterOptions
from test_new_items import attached, new_rows

pytestmark = pytest.mark.needs_ml100k
BACKBONES = ["SASRec", "GRU4Rec", "FPMC", "BPR"]
WRAPPED = {"SASRec": ["item_embedding"], "GRU4Rec": ["item_embedding"], "FPMC": ["IU_emb", "IL_emb"],
           "BPR": ["item_embedding"]}


@pytest.mark.parametrize("name", BACKBONES)
def test_cold_rows_are_regressed_and_only_the_regression_learns_from_its_loss(name, setups, tmp_path):
    model, train, batch, eval_batch = attached(name, setups, cold_regression=1.0)
    adapter = model.fusion_adapter
    fusionlayer.add_items(model, new_rows(3), ["r1", "r2", "r3"])  # cold: content alone
    cold = adapter.cold_items.squeeze(1)
    ids = torch.nonzero(cold).flatten()
    assert ids.numel() >= 3 and set(adapter.cold_out) == set(WRAPPED[name])
    model.eval()
    with torch.no_grad():
        before = {table: getattr(model, table).weight.clone() for table in WRAPPED[name]}
        for table in WRAPPED[name]:
            torch.testing.assert_close(before[table][ids], adapter.regressed_rows(table, ids))
            rows = getattr(model, table)(ids)  # the row path, here through the whole weight (eval)
            torch.testing.assert_close(rows, adapter.regressed_rows(table, ids))
        for linear in adapter.cold_out.values():  # the regression moves cold rows only
            linear.bias.add_(1.0)
        for table in WRAPPED[name]:
            after = getattr(model, table).weight
            assert torch.equal(after[~cold], before[table][~cold])
            assert not torch.equal(after[cold], before[table][cold])
    model.train()  # training: the row path computes a batch's rows alone; cold rows are the regressed ones there too
    for table in WRAPPED[name]:
        torch.testing.assert_close(getattr(model, table)(ids[:2]), adapter.regressed_rows(table, ids[:2]))
    model.zero_grad()
    adapter.regression_loss().backward()  # its gradient stops at the regression's own weights
    learnt = {n for n, p in model.named_parameters() if p.grad is not None and bool(p.grad.any())}
    assert learnt and all(".cold_out." in n for n in learnt), learnt
    model.zero_grad()
    loss = model.calculate_loss(batch)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(linear.weight.grad is not None and bool(linear.weight.grad.any()) for linear in adapter.cold_out.values())
    # checkpoints: the regression's weights are saved and loaded with the model; strict loading into a model
    # attached without the option names them
    path = tmp_path / "m.pth"
    torch.save(model.state_dict(), path)
    state = torch.load(path)
    assert any(".cold_out." in key for key in state)
    twin, *_ = attached(name, setups, cold_regression=1.0)
    fusionlayer.add_items(twin, new_rows(3), ["r1", "r2", "r3"])
    twin.load_state_dict(state, strict=True)
    model.eval(), twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(twin.full_sort_predict(eval_batch), model.full_sort_predict(eval_batch))
    without, *_ = attached(name, setups, cold_dropout=0.3)
    fusionlayer.add_items(without, new_rows(3), ["r1", "r2", "r3"])
    with pytest.raises(RuntimeError, match="cold_out"):
        without.load_state_dict(state, strict=True)


def test_the_regression_fits_warm_embeddings_and_needs_no_id_dropout(setups):
    model, train, batch, _ = attached("SASRec", setups, cold_regression=1.0)  # no cold_dropout
    adapter = model.fusion_adapter
    fusionlayer.add_items(model, new_rows(2), ["a", "b"])
    cold = adapter.cold_items.squeeze(1)
    model.train()
    weight = model.item_embedding.weight  # no share of warm items hidden: cold_dropout is 0
    warm_id_part = weight - adapter.item_delta("item_embedding")
    torch.testing.assert_close(warm_id_part[~cold], model.item_embedding.base_layer.weight[~cold])
    logits = []
    original = model.loss_fct.base.forward
    model.loss_fct.base.forward = lambda x, target: logits.append(x.detach()) or original(x, target)
    model.calculate_loss(batch)
    assert torch.isinf(logits[-1][:, cold]).all()  # the cold-item policy is on: cold items are not negatives
    optimizer = torch.optim.Adam(adapter.cold_out.parameters(), lr=1e-2)
    with torch.no_grad():
        first = float(adapter.regression_loss())
    for _ in range(150):
        optimizer.zero_grad()
        adapter.regression_loss().backward()
        optimizer.step()
    with torch.no_grad():
        assert float(adapter.regression_loss()) < 0.8 * first  # it learns to place items among the warm ones


def test_a_large_catalogue_regresses_onto_a_sample_of_warm_items(setups, monkeypatch):
    model, *_ = attached("BPR", setups, cold_regression=0.5)
    adapter = model.fusion_adapter
    seen = []
    original = adapter.cold_features
    monkeypatch.setattr(adapter, "cold_features", lambda ids: seen.append(ids) or original(ids))
    monkeypatch.setattr(adapter, "regression_rows", 7)
    assert torch.isfinite(adapter.regression_loss())
    assert seen[-1].numel() == 7 and not adapter.cold_items.squeeze(1)[seen[-1]].any() and (seen[-1] != 0).all()


@pytest.mark.parametrize("bad, error, words", [
    (-0.5, ValueError, "cold_regression must be >= 0"), ("1", TypeError, "cold_regression must be a number"),
    (True, TypeError, "cold_regression must be a number"), (float("nan"), ValueError, "cold_regression must be >= 0"),
    (float("inf"), ValueError, "cold_regression must be a finite number")])
def test_cold_regression_bad_values(bad, error, words):
    with pytest.raises(error, match=words):
        AdapterOptions(cold_regression=bad)


def test_cold_regression_needs_the_candidate_side(setups):
    config, train, *_ = setups("FPMC")
    model = backbone_class("FPMC")(config, train.dataset)
    with pytest.raises(ValueError, match="cold_regression scores items from their content on the candidate side"):
        fusionlayer.attach(model, random_features(train.dataset.item_num), side="history", cold_regression=1.0)
    assert not fusionlayer.is_attached(model)
    fusionlayer.attach(model, random_features(train.dataset.item_num), dataset=train.dataset)  # off: nothing added
    assert len(model.fusion_adapter.cold_out) == 0 and not any(".cold_out." in k for k in model.state_dict())


def test_softmax_loss_leaves_cold_items_out_and_items_without_content_get_a_zero_row(setups, monkeypatch):
    model, train, batch, _ = attached("BPR", setups, cold_regression=1.0, softmax_loss=1.0)
    adapter = model.fusion_adapter
    rows = new_rows(2)
    rows = {m: torch.cat([t[:1], torch.zeros_like(t[:1])]) for m, t in rows.items()}  # the second: no content
    with pytest.warns(UserWarning, match="1 of 2 added items have all-zero features"):
        ids = fusionlayer.add_items(model, rows, ["full", "empty"])
    with torch.no_grad():
        regressed = adapter.regressed_rows("item_embedding", torch.tensor(ids))
    assert regressed[0].abs().sum() > 0 and torch.equal(regressed[1], torch.zeros_like(regressed[1]))
    # the pairwise loss's added cross-entropy ranks the warm items only: with the regression's own loss off, no
    # gradient reaches the cold rows' regression
    monkeypatch.setattr(adapter, "regression_loss", lambda: 0.0)
    model.train()
    model.zero_grad()
    model.calculate_loss(batch).backward()
    assert all(p.grad is None or not p.grad.any() for p in adapter.cold_out.parameters())
    assert adapter.item_out["item_embedding"].weight.grad.any()
