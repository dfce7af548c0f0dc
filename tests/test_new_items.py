"""New items: cold-item training (DropoutNet-style ID dropout) and growing an attached model's catalogue."""

from __future__ import annotations

import time

import pytest
import torch

import fusionlayer
from recbole.data.interaction import Interaction
from conftest import backbone_class, random_features

pytestmark = pytest.mark.needs_ml100k
BACKBONES = ["SASRec", "GRU4Rec", "FPMC", "BPR"]


def attached(name, setups, **options):
    config, train, _, test, batch = setups(name)
    eval_batch = next(iter(test))[0]
    torch.manual_seed(0)
    model = backbone_class(name)(config, train.dataset)
    fusionlayer.attach(model, random_features(train.dataset.item_num), dataset=train.dataset, **options)
    with torch.no_grad():  # trained-looking gates, so content counts in the scores
        for p in model.fusion_adapter.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.2)
    return model, train, batch, eval_batch


def new_rows(n, seed=1):
    feats = random_features(n + 1, seed=seed)
    return {k: v[1:] for k, v in feats.items()}


@pytest.mark.parametrize("option", [{"cold_dropout": 0.3}, {"cold_regression": 1.0}], ids=["dropout", "regression"])
@pytest.mark.parametrize("name", BACKBONES)
def test_added_items_are_scored_and_old_scores_do_not_change(name, option, setups):
    model, train, batch, eval_batch = attached(name, setups, **option)
    model.eval()
    with torch.no_grad():
        before = model.full_sort_predict(eval_batch).view(len(eval_batch), -1)
    n_old = model.n_items
    start = time.perf_counter()
    ids = fusionlayer.add_items(model, new_rows(100), [f"new{i}" for i in range(100)])
    seconds = time.perf_counter() - start
    assert ids == list(range(n_old, n_old + 100)) and model.n_items == n_old + 100
    with torch.no_grad():
        after = model.full_sort_predict(eval_batch).view(len(eval_batch), -1)
    assert after.shape[1] == n_old + 100
    assert torch.equal(after[:, :n_old], before)  # old items: bit for bit
    assert torch.isfinite(after[:, n_old:]).all() and after[:, n_old:].std() > 0  # new items: scored from content
    more = fusionlayer.add_items(model, new_rows(1000, seed=2), [f"more{i}" for i in range(1000)])
    assert more[0] == n_old + 100
    with torch.no_grad():  # a second, larger addition changes neither the attach-time items nor the first added ones
        assert torch.equal(model.full_sort_predict(eval_batch).view(len(eval_batch), -1)[:, :n_old + 100], after)
    pair = Interaction({key: value.clone() for key, value in batch.interaction.items()})  # the fixture's batch stays as it is
    item_field = model.ITEM_ID if hasattr(model, "ITEM_ID") else "item_id"
    pair[item_field] = torch.full_like(pair[item_field], ids[0])
    with torch.no_grad():
        assert torch.isfinite(model.predict(pair)).all()
    print(f"{name}: added 100 items in {seconds * 1e3:.1f} ms")


@pytest.mark.parametrize("case, features, tokens, words", [
    ("wrong width", {"text": torch.randn(2, 5), "image": torch.randn(2, 40)}, ["a", "b"], "width 5, expected 24"),
    ("NaN", {"text": torch.full((2, 24), float("nan")), "image": torch.randn(2, 40)}, ["a", "b"], "NaN/Inf"),
    ("duplicate tokens", {"text": torch.randn(2, 24), "image": torch.randn(2, 40)}, ["a", "a"], "duplicate tokens"),
    ("existing token", {"text": torch.randn(1, 24), "image": torch.randn(1, 40)}, ["1"], "already exist"),
    ("rows", {"text": torch.randn(3, 24), "image": torch.randn(3, 40)}, ["a", "b"], "one row per new item"),
    ("modality", {"text": torch.randn(2, 24)}, ["a", "b"], r"missing: \['image'\]"),
    ("no token", {"text": torch.randn(2, 24), "image": torch.randn(2, 40)}, ["a", None], r"positions \[1\] are None or blank"),
    ("blank token", {"text": torch.randn(2, 24), "image": torch.randn(2, 40)}, [" ", "b"], "None or blank"),
    ("one vector", {"text": torch.randn(24), "image": torch.randn(40)}, ["a"], r"single vectors.*row\[None\]"),
    ("Inf, by token", {"text": torch.tensor([[0.0] * 24, [float("inf")] * 24]), "image": torch.randn(2, 40)},
     ["a", "b"], r"1 rows with NaN/Inf values \(first tokens: \['b'\]\)"),
    ("huge, by token", {"text": torch.tensor([[1e20] * 24, [0.0] * 24]), "image": torch.randn(2, 40)},
     ["a", "b"], r"beyond \+-1e\+15 .*first tokens: \['a'\]"),
])
def test_add_items_errors(case, features, tokens, words, setups):
    model, *_ = attached("SASRec", setups)
    n = model.n_items
    with pytest.raises(ValueError, match=words):
        fusionlayer.add_items(model, features, tokens)
    assert model.n_items == n


def test_items_added_without_content_are_counted_in_a_warning(setups):
    model, *_ = attached("BPR", setups)
    rows = new_rows(3)
    for table in rows.values():
        table[1] = 0  # the second item: no content in any modality
    with pytest.warns(UserWarning, match=r"1 of 3 added items have all-zero features .*\['w2'\].*score the same"):
        ids = fusionlayer.add_items(model, rows, ["w1", "w2", "w3"])
    assert len(ids) == 3  # added all the same: a documented fallback, not an error


@pytest.mark.parametrize("name", ["SASRec", "BPR"])
def test_training_goes_on_after_adding_items(name, setups):
    """An optimizer passed to add_items keeps training (Adam's moments gain zero rows); one that was not
    refuses its next step with a clear error instead of a shape error inside torch."""
    def trained_one_step(model):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        model.calculate_loss(batch).backward()
        optimizer.step()
        optimizer.zero_grad()
        return optimizer

    model, _, batch, _ = attached(name, setups)
    stale = trained_one_step(model)
    fusionlayer.add_items(model, new_rows(3), ["x1", "x2", "x3"])
    model.calculate_loss(batch).backward()
    with pytest.raises(ValueError, match="grew to .* pass the optimizer to add_items"):
        stale.step()

    model, _, batch, _ = attached(name, setups)
    optimizer = trained_one_step(model)
    fusionlayer.add_items(model, new_rows(3), ["x1", "x2", "x3"], optimizer=optimizer)
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[0] == model.n_items:
                assert torch.equal(value[-3:], torch.zeros_like(value[-3:]))  # new rows: no history
    loss = model.calculate_loss(batch)
    loss.backward()
    optimizer.step()  # trains on
    fusionlayer.add_items(model, new_rows(2), ["x5", "x6"], optimizer=optimizer)  # while last step's graph (loss) lives,
    model.calculate_loss(batch).backward()  # with gradients not yet zeroed: they gain zero rows, accumulation goes on
    optimizer.step()
    del loss
    assert any(isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape[0] == model.n_items
               for state in optimizer.state.values() for v in state.values())
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        fusionlayer.add_items(model, new_rows(1), ["x4"], optimizer="adam")

def test_cold_dropout_hides_ids_in_training_only_for_a_share_and_cold_items_always(setups):
    model, train, batch, _ = attached("SASRec", setups, cold_dropout=0.5)
    adapter = model.fusion_adapter
    base = model.item_embedding.base_layer.weight
    seen = adapter.training_items(train.dataset, model.n_items)
    assert torch.equal(adapter.cold_items.squeeze(1)[1:], ~seen[1:])  # never-seen items are flagged cold
    model.eval()
    with torch.no_grad():
        id_part = model.item_embedding.weight - adapter.item_delta("item_embedding")
    cold = adapter.cold_items.squeeze(1).clone()
    assert torch.equal(id_part[cold], torch.zeros_like(id_part[cold]))
    torch.testing.assert_close(id_part[~cold], base[~cold].detach())  # (x + d) - d: float rounding only
    fusionlayer.add_items(model, new_rows(3), ["n1", "n2", "n3"])  # added items are cold: content alone
    assert adapter.cold_items[-3:].all() and not adapter.cold_items[:-3].squeeze(1).ne(cold).any()
    model.train()
    hidden = []
    for _ in range(5):
        weight = model.item_embedding.weight
        hidden.append(((weight - adapter.item_delta("item_embedding")) == 0).all(dim=1).float().mean().item())
    assert all(0.3 < h < 0.7 for h in hidden)  # about half the items lose their ID part per training call
    loss = model.calculate_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("name", ["SASRec", "GRU4Rec"])
def test_cold_items_are_left_out_of_the_training_softmax_only(name, setups):
    model, train, batch, _ = attached(name, setups, cold_dropout=0.3)
    fusionlayer.add_items(model, new_rows(4), ["c1", "c2", "c3", "c4"])  # cold: never seen in training
    cold = model.fusion_adapter.cold_items.squeeze(1)
    seen = []
    original = model.loss_fct.base.forward
    model.loss_fct.base.forward = lambda logits, target: seen.append(logits.detach().clone()) or original(logits, target)
    model.train()
    loss = model.calculate_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    logits = seen[-1]
    assert logits.shape[1] == model.n_items and cold[-4:].all()
    assert torch.isinf(logits[:, cold]).all() and torch.isfinite(logits[:, ~cold]).all()
    model.eval()
    with torch.no_grad():  # evaluation (and a validation loss) ranks every item
        model.calculate_loss(batch)
    assert torch.isfinite(seen[-1]).all()
    with pytest.warns(UserWarning, match="4 items added with fusionlayer.add_items"):
        fusionlayer.detach(model)
    assert type(model.loss_fct) is torch.nn.CrossEntropyLoss


def test_cold_softmax_mask_keeps_targets_and_follows_label_smoothing(setups):
    from fusionlayer.adapters.base import _ColdMaskedLoss

    model, *_ = attached("SASRec", setups, cold_dropout=0.3)
    adapter = model.fusion_adapter
    n = model.n_items
    adapter.cold_items = torch.zeros(n, 1, dtype=torch.bool)
    adapter.cold_items[[3, 5]] = True
    logits, target = torch.randn(4, n), torch.tensor([1, 5, 2, -100])
    adapter._scope = {"training_loss": True}
    try:
        for smoothing in (0.0, 0.1):
            loss = _ColdMaskedLoss(torch.nn.CrossEntropyLoss(label_smoothing=smoothing), adapter.excluded_negatives)(
                logits, target)
            keep = torch.ones(n, dtype=torch.bool)
            keep[3] = False  # 5 is a target: kept
            column = keep.cumsum(0) - 1
            expected = torch.nn.functional.cross_entropy(logits[:3, keep], column[target[:3]], label_smoothing=smoothing)
            torch.testing.assert_close(loss, expected)
    finally:
        adapter._scope = None


@pytest.mark.parametrize("name", ["BPR", "FPMC"])
def test_sampled_negatives_that_are_cold_are_redrawn_in_training(name, setups):
    model, train, batch, _ = attached(name, setups, cold_dropout=0.3)
    new = fusionlayer.add_items(model, new_rows(4), ["c1", "c2", "c3", "c4"])
    cold = model.fusion_adapter.cold_items.squeeze(1)
    field = model.NEG_ITEM_ID
    given = batch[field].clone()
    given[::2] = torch.tensor(new).repeat(len(given))[: len(given[::2])]  # half the negatives are cold
    batch = Interaction({**batch.interaction, field: given})
    used = []
    adapter = model.fusion_adapter
    original = adapter.redraw_cold_negatives

    def spy(interaction):
        used.append(original(interaction))
        return used[-1]

    adapter.redraw_cold_negatives = spy
    model.train()
    torch.manual_seed(0)
    loss = model.calculate_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    redrawn = used[-1][field]
    assert torch.equal(batch[field], given)  # the caller's batch is untouched
    assert not cold[redrawn].any() and (redrawn != 0).all()
    assert torch.equal(redrawn[1::2], given[1::2])  # warm negatives as sampled
    plain = attached(name, setups)[0]  # without cold_dropout: negatives as sampled
    assert plain.fusion_adapter.redraw_cold_negatives(batch) is batch


def test_the_cold_lookup_follows_cold_items_when_they_grow_or_change_in_place(setups):
    """The mask and the redraw pool are cached per state of ``cold_items``: adding items, replacing the buffer or
    editing it in place is seen at the next step; an id outside the catalogue passes through for the host to report."""
    model, train, batch, _ = attached("BPR", setups, cold_dropout=0.3)
    adapter, field = model.fusion_adapter, model.NEG_ITEM_ID
    n = model.n_items
    adapter.cold_items = torch.zeros(n, 1, dtype=torch.bool)
    assert adapter._cold_lookup() == (None, None)
    given = torch.full_like(batch[field], 7)
    probe = Interaction({**batch.interaction, field: given})
    assert adapter.redraw_cold_negatives(probe) is probe                      # nothing cold: untouched
    adapter.cold_items[7] = True                                              # in place
    redrawn = adapter.redraw_cold_negatives(probe)[field]
    assert not (redrawn == 7).any() and (redrawn != 0).all()
    new = fusionlayer.add_items(model, new_rows(2), ["n1", "n2"])             # grown
    mask, allowed = adapter._cold_lookup()
    assert mask.shape == (n + 2,) and mask[new].all() and mask[7] and not torch.isin(allowed, torch.tensor([0, 7, *new])).any()
    outside = given.clone()
    outside[0] = n + 50
    out = adapter.redraw_cold_negatives(Interaction({**batch.interaction, field: outside}))[field]
    assert out[0] == n + 50 and not (out[1:] == 7).any()


def test_items_seen_only_in_training_histories_are_not_cold():
    from types import SimpleNamespace

    from fusionlayer.adapters.base import FusionAdapter

    # item 1 is every user's first item: in training it is never a target, only in histories
    inter = Interaction({"item_id": torch.tensor([2, 3]), "item_id_list": torch.tensor([[1, 0], [1, 2]])})
    dataset = SimpleNamespace(inter_feat=inter, iid_field="item_id", item_id_list_field="item_id_list")
    assert FusionAdapter.training_items(dataset, 6)[1:].tolist() == [True, True, True, False, False]
    general = SimpleNamespace(inter_feat=Interaction({"item_id": torch.tensor([2, 3])}), iid_field="item_id")
    assert FusionAdapter.training_items(general, 6)[1:].tolist() == [False, True, True, False, False]


def test_cold_dropout_needs_the_candidate_side(setups):
    config, train, *_ = setups("SASRec")
    model = backbone_class("SASRec")(config, train.dataset)
    with pytest.warns(UserWarning, match=r"no dataset, so no item is known to be unseen.*dataset=train_data.dataset"):
        fusionlayer.attach(model, random_features(train.dataset.item_num), cold_dropout=0.2)
    assert not model.fusion_adapter.cold_items.any()  # nothing flagged: what the warning says
    fusionlayer.detach(model)
    with pytest.raises(ValueError, match="cold_dropout scores items from their content on the candidate side"):
        fusionlayer.attach(model, random_features(train.dataset.item_num), side="history", cold_dropout=0.2)
    fusionlayer.attach(model, random_features(train.dataset.item_num), side="history")
    n = model.n_items
    with pytest.raises(ValueError, match="side='history'.*would all score the same"):  # nothing to score them with
        fusionlayer.add_items(model, new_rows(2), ["a", "b"])
    assert model.n_items == n


def test_add_items_takes_feature_cache_entries_and_looks_rows_up_by_token(setups):
    import copy

    import numpy as np

    from fusionlayer.encoders import CachedFeatures

    model, train, batch, eval_batch = attached("SASRec", setups)
    twin = copy.deepcopy(model)
    rows = new_rows(3)
    cache = {m: CachedFeatures(["c1", "c2", "c3"], t.numpy().astype(np.float32), np.ones(3, bool), {}) for m, t in rows.items()}
    with pytest.raises(ValueError, match=r"1 of 2 tokens have no row .*\['c9'\].*encode again"):
        fusionlayer.add_items(model, cache, ["c2", "c9"])
    ids = fusionlayer.add_items(model, cache, ["c3", "c1"])                        # looked up by token, in this order
    assert ids == fusionlayer.add_items(twin, {m: t[[2, 0]] for m, t in rows.items()}, ["c3", "c1"])
    model.eval(), twin.eval()
    with torch.no_grad():
        assert torch.equal(model.full_sort_predict(eval_batch), twin.full_sort_predict(eval_batch))
    numeric = CachedFeatures(["1", "2", "3"], rows["text"].numpy(), np.ones(3, bool), {})
    assert torch.equal(numeric.rows([1, "3"]), rows["text"][[0, 2]])                # tokens compared as strings


def test_detach_after_adding_items_keeps_them_and_says_so(setups):
    import warnings

    model, train, batch, eval_batch = attached("SASRec", setups)
    n = model.n_items
    fusionlayer.add_items(model, new_rows(3), ["d1", "d2", "d3"])
    with torch.no_grad():
        model.item_embedding.base_layer.weight[n:] = 0.5   # as if trained since: these rows must survive detach
    with pytest.warns(UserWarning, match=rf"3 items added with fusionlayer.add_items \(ids {n}..{n + 2}\)"):
        fusionlayer.detach(model)
    assert model.n_items == n + 3 and model.item_embedding.weight.shape[0] == n + 3
    assert torch.all(model.item_embedding.weight[n:] == 0.5)
    other, *_ = attached("SASRec", setups)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fusionlayer.detach(other)                    # nothing added: no warning


def test_a_checkpoint_with_added_items_says_to_add_them_again(setups):
    model, *_ = attached("SASRec", setups)
    rows = new_rows(2)
    fusionlayer.add_items(model, rows, ["k1", "k2"])
    state = model.state_dict()
    other, *_ = attached("SASRec", setups)
    with pytest.raises(RuntimeError, match="holds 2 more items than this model .* add the same items again"):
        other.load_state_dict(state)
    fusionlayer.add_items(other, rows, ["k1", "k2"])
    other.load_state_dict(state)  # then it loads
    assert torch.equal(other.item_embedding.base_layer.weight, model.item_embedding.base_layer.weight)


@pytest.mark.parametrize("name", BACKBONES)
def test_the_cold_offset_moves_only_cold_items_in_both_scoring_paths(name, setups):
    model, train, batch, eval_batch = attached(name, setups, cold_dropout=0.3)
    n = model.n_items
    fusionlayer.add_items(model, new_rows(5), [f"o{i}" for i in range(5)])   # cold: scored from content alone
    cold = model.fusion_adapter.cold_items.squeeze(1)
    model.eval()
    item_field = model.ITEM_ID if hasattr(model, "ITEM_ID") else "item_id"
    pair = Interaction({key: value.clone() for key, value in batch.interaction.items()})
    pair[item_field] = torch.where(torch.arange(len(pair)) % 2 == 0, torch.tensor(n + 1), pair[item_field])
    with torch.no_grad():
        full, single = model.full_sort_predict(eval_batch).view(len(eval_batch), -1), model.predict(pair)
        model.fusion_adapter.cold_score_offset.fill_(2.5)
        full_on, single_on = model.full_sort_predict(eval_batch).view(len(eval_batch), -1), model.predict(pair)
    assert torch.equal(full_on[:, ~cold], full[:, ~cold])                       # warm items: bit for bit
    torch.testing.assert_close(full_on[:, cold], full[:, cold] + 2.5)
    is_cold = cold[pair[item_field]]
    assert is_cold.any() and torch.equal(single_on[~is_cold], single[~is_cold])
    torch.testing.assert_close(single_on[is_cold], single[is_cold] + 2.5)


def _cases(eval_batch, targets):
    """One full-sort validation batch of ``eval_batch``'s users with the given held-out items (no history mask)."""
    return [(eval_batch, None, torch.arange(len(targets)), torch.as_tensor(targets))]


def test_calibrate_cold_offset_chooses_on_validation_sets_and_saves_the_offset(setups):
    model, train, batch, eval_batch = attached("SASRec", setups, cold_dropout=0.3)
    n = model.n_items
    new = fusionlayer.add_items(model, new_rows(6), [f"v{i}" for i in range(6)])
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(eval_batch).view(len(eval_batch), -1)
    users = len(eval_batch)
    # a quarter of the cases: the added item the user's content scores rank first among the new ones; the rest:
    # the warm item the model ranks first (warm NDCG@10 1.0 without an offset, which any lift above it would cost)
    targets = [new[int(scores[u, n:].argmax())] if u % 4 == 0 else int(scores[u, 1:n].argmax()) + 1
               for u in range(users)]
    before_offset = model.fusion_adapter.cold_score_offset.clone()
    model.train()
    out = fusionlayer.calibrate_cold_offset(model, _cases(eval_batch, targets))
    assert model.training and float(before_offset) == 0.0  # train mode restored
    assert out["before"]["warm"]["ndcg@10"] == 1.0 and out["after"]["warm"]["ndcg@10"] >= 0.98
    assert out["after"]["cold"]["ndcg@10"] > out["before"]["cold"]["ndcg@10"] and out["offset"] > 0
    assert float(model.fusion_adapter.cold_score_offset) == pytest.approx(out["offset"])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.full_sort_predict(eval_batch).view(users, -1)[:, n:], scores[:, n:] + out["offset"])

    state = model.state_dict()  # saved with the model; a checkpoint from before the offset loads as uncalibrated
    assert "fusion_adapter.cold_score_offset" in state and "cold_score_offset" in fusionlayer.fusion_state_dict(model)
    twin, *_ = attached("SASRec", setups, cold_dropout=0.3)
    fusionlayer.add_items(twin, new_rows(6), [f"v{i}" for i in range(6)])
    twin.load_state_dict(state)
    assert float(twin.fusion_adapter.cold_score_offset) == pytest.approx(out["offset"])
    twin.load_state_dict({k: v for k, v in state.items() if k != "fusion_adapter.cold_score_offset"})
    assert float(twin.fusion_adapter.cold_score_offset) == 0.0

    again = fusionlayer.calibrate_cold_offset(model, _cases(eval_batch, targets))  # re-chosen from no offset
    assert again["before"] == out["before"] and again["offset"] == pytest.approx(out["offset"])


def test_calibrate_cold_offset_errors_leave_the_offset_as_it_was(setups):
    model, train, batch, eval_batch = attached("SASRec", setups, cold_dropout=0.3)
    plain, *_ = attached("SASRec", setups)
    warm_only = _cases(eval_batch, [1] * len(eval_batch))
    with pytest.raises(ValueError, match="cold_dropout > 0"):
        fusionlayer.calibrate_cold_offset(plain, warm_only)
    with pytest.raises(ValueError, match="no fusion layer attached"):
        fusionlayer.calibrate_cold_offset(torch.nn.Linear(2, 2), warm_only)
    with pytest.raises(ValueError, match=r"max_warm_loss must be a number in \[0, 1\)"):
        fusionlayer.calibrate_cold_offset(model, warm_only, max_warm_loss=2)
    adapter = model.fusion_adapter
    adapter.cold_score_offset.fill_(0.7)
    flags = adapter.cold_items
    adapter.cold_items = torch.zeros_like(flags)
    with pytest.raises(ValueError, match="no item is scored from content alone"):
        fusionlayer.calibrate_cold_offset(model, warm_only)
    adapter.cold_items = flags
    fusionlayer.add_items(model, new_rows(2), ["e1", "e2"])
    with pytest.raises(ValueError, match="none of valid_data's"):
        fusionlayer.calibrate_cold_offset(model, [(eval_batch, None, torch.tensor([0]), torch.tensor([1]))])
    with pytest.raises(TypeError, match="full-sort evaluation dataloader"):
        fusionlayer.calibrate_cold_offset(model, [eval_batch])
    with pytest.raises(ValueError, match=r"target items run from id 1 to 99999, but this model scores ids 1\.\."):
        fusionlayer.calibrate_cold_offset(model, [(eval_batch, None, torch.tensor([0, 1]), torch.tensor([1, 99999]))])
    for grid in ([], [0.5, float("nan")], ["1"]):
        with pytest.raises(ValueError, match="grid must hold finite numbers"):
            fusionlayer.calibrate_cold_offset(model, warm_only, grid=grid)
    assert float(model.fusion_adapter.cold_score_offset) == pytest.approx(0.7)
