"""attach()/detach() on SASRec, GRU4Rec, FPMC and BPR in RecBole's real pipeline."""

from __future__ import annotations

import copy

import pytest
import torch

import fusionlayer
from conftest import backbone_class, fresh, random_features, same_training_loss

pytestmark = pytest.mark.needs_ml100k
BACKBONES = ["SASRec", "GRU4Rec", "FPMC", "BPR"]


def scores(model, data):
    model.eval()
    with torch.no_grad():
        interaction = next(iter(data[3]))[0]
        return model.full_sort_predict(interaction), model.predict(data[4])


def fusion_names(model):
    return {n for n, _ in model.named_parameters() if n.startswith("fusion_adapter.")}


@pytest.mark.parametrize("name", BACKBONES)
def test_identity_at_attach(name, setups):
    model, base, data = fresh(name, setups)
    (full_a, pair_a), (full_b, pair_b) = scores(model, data), scores(base, data)
    assert torch.equal(full_a, full_b) and torch.equal(pair_a, pair_b)
    assert same_training_loss(model, base, data[4])


@pytest.mark.parametrize("name", BACKBONES)
def test_trains_with_recbole_trainer_and_detach_restores(name, setups):
    from recbole.trainer import Trainer

    model, _, (config, train, valid, test, batch) = fresh(name, setups)
    model.eval()
    with torch.no_grad():
        before = float(model.calculate_loss(batch))
    trainer = Trainer(config, model)
    trainer.fit(train, valid, verbose=False, saved=True, show_progress=False)
    model.eval()
    with torch.no_grad():
        after = float(model.calculate_loss(batch))
    assert torch.isfinite(torch.tensor(after)) and after < before
    result = trainer.evaluate(test, load_best_model=True, show_progress=False)  # reloads the attached checkpoint
    assert 0 <= result["ndcg@10"] <= 1
    full, _ = scores(model, (config, train, valid, test, batch))
    assert full.shape[-1] == train.dataset.item_num or full.numel() % train.dataset.item_num == 0
    assert torch.isfinite(full).all()
    assert any(float(p.abs().sum()) > 0 for n, p in model.fusion_adapter.named_parameters() if "_out" in n)

    # detach: the backbone's own modules, state and scores come back, bit for bit
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fusion_adapter.")}
    state = {k.replace(".base_layer.", "."): v for k, v in state.items()}
    fusionlayer.detach(model)
    assert not fusionlayer.is_attached(model) and "forward" not in model.__dict__
    assert set(model.state_dict()) == set(state)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    plain = backbone_class(name)(config, train.dataset)
    plain.load_state_dict(model.state_dict())
    data = (config, train, valid, test, batch)
    assert torch.equal(scores(model, data)[0], scores(plain, data)[0])


@pytest.mark.parametrize("name", BACKBONES)
def test_gradients_reach_fusion_and_freeze_backbone(name, setups):
    model, _, (config, train, valid, test, batch) = fresh(name, setups, freeze_backbone=True)
    counts = fusionlayer.count_parameters(model)
    assert counts["trainable"] == counts["fusion"] < counts["total"]
    for p in model.fusion_adapter.parameters():  # leave the zero start so every weight gets a gradient
        torch.nn.init.normal_(p, std=0.05) if p.dim() > 1 else None
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.train()
    loss = model.calculate_loss(batch)
    loss.backward()
    for n, p in model.fusion_adapter.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= fusion_names(model)
    fusionlayer.detach(model)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", BACKBONES)
def test_mixed_precision_autocast_trains_and_scores(name, setups):
    """RecBole's enable_amp runs the model under torch.autocast: the fusion's inputs then arrive in the autocast
    dtype while its weights stay float32 (it raised a dtype error, then failed inside addmv, before)."""
    model, _, (config, train, valid, test, batch) = fresh(name, setups)
    with torch.no_grad():  # trained-looking gates, so the fusion's outputs count in the scores
        for p in model.fusion_adapter.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.2)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.calculate_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    for n, p in model.fusion_adapter.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    model.eval()
    interaction = next(iter(test))[0]
    with torch.no_grad():
        exact = model.full_sort_predict(interaction).float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model.full_sort_predict(interaction).float()
    assert mixed.shape == exact.shape and torch.isfinite(mixed).all()
    assert (mixed - exact).abs().max() <= 0.05 * exact.abs().max()  # bfloat16 keeps ~3 significant digits


@pytest.mark.parametrize("name", ["SASRec", "BPR"])
def test_fusion_state_dict_round_trip(name, setups):
    model, _, data = fresh(name, setups)
    for p in model.fusion_adapter.parameters():
        torch.nn.init.normal_(p, std=0.05)
    saved = fusionlayer.fusion_state_dict(model)
    assert saved and all(not k.startswith("normed_") for k in saved)
    expected = scores(model, data)[0]
    other, _, _ = fresh(name, setups)
    assert not torch.equal(scores(other, data)[0], expected)
    fusionlayer.load_fusion_state_dict(other, saved)
    assert torch.equal(scores(other, data)[0], expected)


def test_errors_leave_the_model_untouched(setups):
    config, train, valid, test, _ = setups("SASRec")
    SASRec = backbone_class("SASRec")
    model = SASRec(config, train.dataset)
    n = train.dataset.item_num
    reference = copy.deepcopy(model.state_dict())
    cases = [
        ({"text": torch.randn(n - 1, 8)}, ValueError, f"has {n - 1:,} rows but the model's dataset has {n:,} item ids"),
        ({"text": torch.full((n, 8), float("nan"))}, ValueError, "NaN/Inf"),
        ({}, ValueError, "features is empty"),
        ({"id": torch.randn(n, 8)}, ValueError, "reserved"),
        ([torch.randn(n, 8)], TypeError, "must be a dict"),
        ({"text": "not a tensor"}, TypeError, "must be a torch.Tensor"),
        # values whose squares overflow float32 would make every score NaN
        ({"text": torch.randn(n, 8) * 1e30}, ValueError, r"beyond \+-1e\+15 .*divide those rows"),
        ({"text": torch.randn(n, 8, dtype=torch.float64) * 1e300}, ValueError, "would overflow"),
        ({"text": torch.zeros(n, 0)}, ValueError, "width 0"),
    ]
    for features, error, match in cases:
        with pytest.raises(error, match=match):
            fusionlayer.attach(model, features)
        assert not fusionlayer.is_attached(model) and "forward" not in model.__dict__
        assert isinstance(model.item_embedding, torch.nn.Embedding)
    with pytest.raises(ValueError, match="invalid|positive int"):
        fusionlayer.attach(model, {"text": torch.randn(n, 8)}, hidden_size=0)
    assert not fusionlayer.is_attached(model)
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="has no fusion layer attached"):
        fusionlayer.detach(model)
    big = torch.randn(n, 8) * 1e14  # large but safe: attached, and its scores are finite
    fusionlayer.attach(model, {"text": big})
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model.full_sort_predict(next(iter(test))[0])).all()
    fusionlayer.detach(model)
    with pytest.warns(UserWarning, match=r"features \['text'\] are zero for every item"):
        fusionlayer.attach(model, {"text": torch.zeros(n, 8), "image": torch.randn(n, 4)})
    fusionlayer.detach(model)
    fusionlayer.attach(model, {"text": torch.randn(n, 8)})
    with pytest.raises(ValueError, match="already has a fusion layer attached"):
        fusionlayer.attach(model, {"text": torch.randn(n, 8)})
    with pytest.raises(TypeError, match="RecBole recommender.*registered adapters"):
        fusionlayer.attach(torch.nn.Linear(3, 3), {"text": torch.randn(n, 8)})


def test_bpr_needs_the_training_dataset(setups):
    config, train, _, _, _ = setups("BPR")
    model = backbone_class("BPR")(config, train.dataset)
    with pytest.raises(ValueError, match="pass the training dataset"):
        fusionlayer.attach(model, random_features(train.dataset.item_num))
    assert not fusionlayer.is_attached(model)


def test_bpr_history_is_newest_items_in_time_order(setups):
    from fusionlayer.adapters.bpr import user_histories

    _, train, _, _, _ = setups("BPR")
    history, lengths = user_histories(train.dataset, train.dataset.user_num, 5)
    inter = train.dataset.inter_feat
    user = 3
    rows = inter[train.dataset.uid_field] == user
    items = inter[train.dataset.iid_field][rows]
    times = inter[train.dataset.time_field][rows]
    newest = items[torch.argsort(times, stable=True)][-5:]
    assert lengths[user] == min(5, len(items))
    assert torch.equal(history[user, : len(newest)], newest)


def test_unregistered_sequential_model_gets_generic_adapter(setups):
    from recbole.model.sequential_recommender import NARM

    config, train, _, test, _ = setups("GRU4Rec")
    config["n_layers"], config["dropout_probs"] = 1, [0.25, 0.5]
    model = NARM(config, train.dataset)
    with pytest.warns(UserWarning, match="generic sequential adapter"):
        fusionlayer.attach(model, random_features(train.dataset.item_num))
    assert type(model.fusion_adapter).__name__ == "GenericSequentialAdapter"
    model.eval()
    assert torch.isfinite(model.full_sort_predict(next(iter(test))[0])).all()


@pytest.mark.parametrize("name", ["SASRec", "FPMC"])
def test_inference_cache_reuses_projections_until_a_parameter_changes(name, setups, monkeypatch):
    model, _, data = fresh(name, setups)
    adapter = model.fusion_adapter
    with torch.no_grad():  # give the zero-initialised outputs some weight so the content matters
        for p in [adapter.user_out.weight, *(m.weight for m in adapter.item_out.values())]:
            p.normal_(0, 0.1)
    calls = []
    project = adapter.fusion.project_normalized_tables
    monkeypatch.setattr(adapter.fusion, "project_normalized_tables", lambda tables: calls.append(1) or project(tables))
    first, _ = scores(model, data)
    n_first = len(calls)
    again, _ = scores(model, data)
    assert again.equal(first) and len(calls) == n_first == 1  # computed once, then reused
    with torch.no_grad():
        next(adapter.fusion.projections["text"].parameters()).mul_(2)  # in place, as an optimiser step would
    changed, _ = scores(model, data)
    assert len(calls) == 2 and not changed.equal(first)
    adapter.clear_cache()
    assert scores(model, data)[0].equal(changed)  # the cached value equals a fresh computation
    model.train()
    batch = data[4]
    model.calculate_loss(batch)
    model.calculate_loss(batch)
    assert len(calls) == 5 and not adapter._memo  # with autograd on nothing is kept across calls, one per loss
    # A fused optimiser step does not bump version counters; the grad-enabled forward before it drops the cache.
    before, _ = scores(model, data)  # eval mode, cache filled; stay in eval mode for the step below
    opt = torch.optim.Adam(adapter.parameters(), lr=0.1, fused=True)
    model.calculate_loss(batch).backward()
    opt.step()
    after, _ = scores(model, data)
    adapter.clear_cache()
    assert not after.equal(before) and scores(model, data)[0].equal(after)


def test_list_adapters_names_the_four_backbones():
    assert fusionlayer.list_adapters() == {"SASRec": "SASRecAdapter", "GRU4Rec": "GRU4RecAdapter",
                                           "FPMC": "FPMCAdapter", "BPR": "BPRAdapter"}


def test_features_follow_the_model_device_and_dtype(setups):
    config, train, _, test, _ = setups("SASRec")
    model = backbone_class("SASRec")(config, train.dataset).double()
    fusionlayer.attach(model, random_features(train.dataset.item_num))
    assert model.fusion_adapter.normed_text.dtype == torch.float64
    model.float()
    assert model.fusion_adapter.normed_text.dtype == torch.float32
    assert "fusion_adapter.normed_text" not in model.state_dict()  # buffers, not checkpoint state


def test_readme_snippet_runs(setups, tmp_path):
    """attach, RecBole's own Trainer, detach: the usage the README describes."""
    config, train_data, valid_data, _, _ = setups("SASRec")
    n = train_data.dataset.item_num
    T, I = torch.randn(n, 16), torch.randn(n, 24)
    T[0] = I[0] = 0
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer

    model = SASRec(config, train_data.dataset)
    fusionlayer.attach(model, features={"text": T, "image": I})
    trainer = Trainer(config, model); trainer.fit(train_data, valid_data, verbose=False)  # noqa: E702
    fusionlayer.detach(model)
    assert isinstance(model.item_embedding, torch.nn.Embedding)


def test_bpr_refuses_a_dataset_with_evaluation_interactions(tiny_root, tmp_path):
    from fusionlayer.data.recbole_data import prepare_data, recbole_config
    from recbole.model.general_recommender import BPR

    root, name = tiny_root
    config = recbole_config(BPR, name, data_root=root, overrides={"embedding_size": 8, "checkpoint_dir": str(tmp_path)})
    full, train, valid, test = prepare_data(config)
    model = BPR(config, train.dataset)
    feats = random_features(train.dataset.item_num)
    for leaky in (full, valid.dataset, test.dataset):
        with pytest.raises(ValueError, match="holds validation/test interactions"):
            fusionlayer.attach(model, feats, dataset=leaky)
        assert not fusionlayer.is_attached(model)
    fusionlayer.attach(model, feats, dataset=train.dataset)
    assert fusionlayer.is_attached(model)


@pytest.mark.parametrize("name", BACKBONES)
def test_plain_state_dict_loaded_non_strict_keeps_the_item_embeddings(name, setups):
    """``load_state_dict(plain, strict=False)`` into an attached model: only fusion keys are missing, and the
    plain model's item embeddings land in the wrapped embedding (not silently dropped as 'unexpected')."""
    config, train, valid, test, batch = setups(name)
    torch.manual_seed(1)
    plain = backbone_class(name)(config, train.dataset)
    torch.manual_seed(2)
    model = fusionlayer.attach(backbone_class(name)(config, train.dataset), random_features(train.dataset.item_num),
                               dataset=train.dataset)
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith("fusion_adapter.") for k in missing)
    data = (config, train, valid, test, batch)
    assert torch.equal(scores(model, data)[0], scores(plain, data)[0])  # fusion outputs start at zero


@pytest.mark.slow
def test_checkpoint_paths_plain_to_attached_and_back(setups, tmp_path):
    """Fine-tune fusion on a plain checkpoint, save the attached model, load it back, export a detached one."""
    from recbole.trainer import Trainer

    from fusionlayer.recbole_compat import load_checkpoint, load_data_and_model

    config, train, valid, test, batch = setups("SASRec")
    config["checkpoint_dir"] = str(tmp_path)
    torch.manual_seed(0)
    plain = backbone_class("SASRec")(config, train.dataset)
    trainer = Trainer(config, plain)
    trainer.fit(train, valid, verbose=False, saved=True, show_progress=False)
    plain_file = trainer.saved_model_file
    state = load_checkpoint(plain_file)["state_dict"]
    feats = random_features(train.dataset.item_num)
    model = fusionlayer.attach(backbone_class("SASRec")(config, train.dataset), feats)
    with pytest.raises(RuntimeError):  # the plain keys do not fit an attached model as they are ...
        model.load_state_dict(state)
    fusionlayer.load_backbone_state_dict(model, state)  # ... this maps them
    plain.load_state_dict(state)
    assert torch.equal(scores(model, (config, train, valid, test, batch))[0], scores(plain, (config, train, valid, test, batch))[0])
    trainer = Trainer(config, model)  # fine-tune, RecBole saves the attached checkpoint
    trainer.fit(train, valid, verbose=False, saved=True, show_progress=False)
    with pytest.raises(ValueError, match="checkpoint of an attached model: pass the features"):
        load_data_and_model(trainer.saved_model_file)
    _, loaded, *_ = load_data_and_model(trainer.saved_model_file, features=feats)
    model.load_state_dict(load_checkpoint(trainer.saved_model_file)["state_dict"])
    data = (config, train, valid, test, batch)
    assert torch.allclose(scores(loaded, data)[0], scores(model, data)[0])
    exported = backbone_class("SASRec")(config, train.dataset)
    exported.load_state_dict(fusionlayer.backbone_state_dict(model))  # a detached export loads into a plain model
    assert torch.equal(scores(exported, data)[0], scores(fusionlayer.detach(model), data)[0])
    _, plain_loaded, *_ = load_data_and_model(plain_file)  # plain checkpoints load under torch >= 2.6 too
    assert torch.equal(scores(plain_loaded, data)[0], scores(plain, data)[0])


def test_cache_stamp_sees_replaced_modules_and_tensors(setups):
    """The inference cache's stamp lists tensors from a kept list of submodules: a replaced submodule, a tensor
    swapped in by ``load_state_dict(assign=True)`` and one moved by ``.double()`` are all seen (BPR's fused users)."""
    from fusionlayer.adapters.content import module_tensors

    model, _, data = fresh("BPR", setups)
    adapter = model.fusion_adapter
    expected = {id(t) for t in [*adapter.parameters(), *adapter.buffers()]}
    assert {id(t) for t in module_tensors(adapter)} == expected
    with torch.no_grad():
        adapter.user_out.weight.normal_(0, 0.1)
    first, _ = scores(model, data)
    replaced = torch.nn.Linear(adapter.user_out.in_features, adapter.user_out.out_features, bias=False)
    adapter.user_out = replaced  # a new submodule: its weight must be in the stamp
    assert any(t is replaced.weight for t in module_tensors(adapter))
    second, _ = scores(model, data)
    assert not second.equal(first)
    state = {k: torch.randn_like(v) if k.endswith("user_out.weight") else v for k, v in model.state_dict().items()}
    model.load_state_dict(state, assign=True)
    third, _ = scores(model, data)
    assert not third.equal(second)
    adapter.clear_cache()
    assert scores(model, data)[0].equal(third)  # what the cache returned is a fresh computation
    model.double()
    assert scores(model, data)[0].dtype == torch.float64
