"""The recipe search: a declared space, a pick on validation only, the report."""

from __future__ import annotations

import json

import pytest

from benchmarks import compat, tune


def _run(model, candidate, valid, test, seed=0, variant="fusion"):
    metrics = lambda v: {"full": {"ndcg@10": v, "mrr@10": v / 2, "hit@10": 2 * v}}  # noqa: E731
    row = {"dataset": "ml-100k", "model": model, "variant": variant, "seed": seed, "valid": metrics(valid),
           "test": metrics(test), "epochs_run": 20, "best_epoch": 10, "train_seconds": 5.0, "commit": "abc",
           "device": "cpu", "date": "2026-01-01", "command": "x"}
    if candidate:
        row["candidate"] = candidate
    return row


def test_the_pick_is_the_best_validation_score_never_the_test_score(tmp_path, monkeypatch):
    monkeypatch.setattr(tune, "TUNING", tmp_path)
    monkeypatch.setattr(compat, "RESULTS", tmp_path)
    space = {"seed": 0, "models": ["BPR"], "candidates": [
        {"name": "default", "options": {}}, {"name": "side=history", "options": {"side": "history"}},
        {"name": "modalities=text", "options": {}, "modalities": ["text"]},
        {"name": "modalities=image", "options": {}, "modalities": ["image"]}]}
    rows = [_run("BPR", "default", 0.070, 0.09), _run("BPR", "side=history", 0.075, 0.01),
            _run("BPR", "modalities=text", 0.063, 0.2), _run("BPR", "modalities=image", 0.056, 0.2)]
    (tmp_path / "ml-100k-BPR.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "compat-ml-100k.jsonl").write_text(json.dumps(_run("BPR", None, 0.060, 0.05, variant="plain")) + "\n")
    picks = tune.pick("ml-100k", space)
    assert picks["BPR"]["pick"] == "side=history" and picks["BPR"]["options"] == {"side": "history"}
    assert picks["BPR"]["plain_valid_ndcg@10"] == 0.060 and picks["BPR"]["complete"]
    text = tune.tuning_report("ml-100k", space, picks)
    assert "## BPR: pick `side=history`" in text and "| plain (no fusion) | 0.0600 |" in text
    assert "without image: -10.0 %; without text: -20.0 %" in text


def test_a_modality_candidate_is_reported_never_picked_and_the_pick_does_not_wait_for_it(tmp_path, monkeypatch):
    """modalities=text beats every option on validation: it is reported as the modality's contribution, and the
    pick is the best option candidate; the search is complete for the pick while modalities=image has not run."""
    monkeypatch.setattr(tune, "TUNING", tmp_path)
    monkeypatch.setattr(compat, "RESULTS", tmp_path)
    space = {"seed": 0, "confirm_seeds": [1, 2], "models": ["SASRec"], "candidates": [
        {"name": "default", "options": {}}, {"name": "hidden_size=64", "options": {"hidden_size": 64}},
        {"name": "modalities=text", "options": {}, "modalities": ["text"]},
        {"name": "modalities=image", "options": {}, "modalities": ["image"]}]}
    rows = [_run("SASRec", "default", 0.0711, 0.05), _run("SASRec", "hidden_size=64", 0.0760, 0.05),
            _run("SASRec", "modalities=text", 0.0772, 0.05)]
    (tmp_path / "ml-100k-SASRec.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    picks = tune.pick("ml-100k", space)["SASRec"]
    assert (picks["pick"], picks["options"], picks["complete"]) == ("hidden_size=64", {"hidden_size": 64}, True)
    assert picks["valid_ndcg@10"]["modalities=text"] == 0.0772 and picks["adopted"] == "default"  # not yet confirmed
    text = tune.tuning_report("ml-100k", space, {"SASRec": picks})
    assert "Not yet run: `modalities=image`." in text and "without image: +8.6 %" in text
    rows[1]["valid"]["full"]["ndcg@10"] = 0.0700                                  # no option beats the default
    (tmp_path / "ml-100k-SASRec.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert tune.pick("ml-100k", space)["SASRec"]["pick"] == "default"


def test_a_space_without_default_or_with_a_bad_option_is_refused(tmp_path):
    bad = tmp_path / "space.json"
    bad.write_text(json.dumps({"seed": 0, "models": ["BPR"], "candidates": [{"name": "x", "options": {}}]}))
    with pytest.raises(ValueError, match="include 'default'"):
        tune.load_space(bad)
    bad.write_text(json.dumps({"seed": 0, "models": ["BPR"], "candidates": [
        {"name": "default", "options": {}}, {"name": "y", "options": {"output_scale": -1}}]}))
    with pytest.raises((ValueError, SystemExit)):
        tune.load_space(bad)
    bad.write_text(json.dumps({"seed": 0, "models": ["BPR"], "candidates": [
        {"name": "default", "options": {}}, {"name": "a, b", "options": {}}]}))
    with pytest.raises(ValueError, match="cannot contain ','"):
        tune.load_space(bad)


def test_the_committed_spaces_load():
    for dataset in compat.DATASETS:
        space = tune.load_space(tune.space_path(dataset))
        assert space["candidates"][0]["name"] == "default" and space["metric"].startswith("valid."), dataset


def test_the_default_candidate_reuses_the_grids_identical_run_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.setattr(tune, "TUNING", tmp_path)
    monkeypatch.setattr(compat, "RESULTS", tmp_path)
    hparams = compat.load_hparams()
    recipe = compat.resolved_recipe("FPMC", hparams["fusion"])
    same = {**_run("FPMC", None, 0.058, 0.05), "hparams": {**hparams["common"], **hparams["models"]["FPMC"],
                                                            "fusion": {k: v for k, v in recipe.items() if k != "cold_dropout"}}}
    other_seed = {**same, "seed": 1}
    other_recipe = {**same, "valid": _run("FPMC", None, 0.9, 0.9)["valid"],
                    "hparams": {**same["hparams"], "fusion": {**recipe, "output_scale": 3.0}}}
    (tmp_path / "compat-ml-100k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (other_recipe, other_seed, same)))
    grid = tmp_path / "compat-ml-100k.jsonl"
    row = compat.identical_fusion_run(grid, "FPMC", 0, hparams)
    assert row is not None and row["valid"]["full"]["ndcg@10"] == 0.058 and row["reused_from"] == "compat-ml-100k.jsonl"
    assert compat.identical_fusion_run(grid, "FPMC", 2, hparams) is None
    assert compat.identical_fusion_run(grid, "GRU4Rec", 0, hparams) is None
    changed = {**hparams, "fusion": {**hparams["fusion"], "output_scale": 3.0}}
    assert compat.identical_fusion_run(grid, "FPMC", 0, changed)["valid"]["full"]["ndcg@10"] == 0.9
    assert compat.identical_fusion_run(grid, "FPMC", 0, {**hparams, "modalities": ["text"]}) is None

    # run() records it as the default candidate without training; the other candidates would train
    trained = []
    monkeypatch.setattr(compat, "run_one", lambda *a, **k: trained.append(a) or pytest.fail("should not train"))
    space = {"seed": 0, "models": ["FPMC"], "candidates": [{"name": "default", "options": {}}]}
    args = type("Args", (), {"models": ["FPMC"], "dataset": "ml-100k"})()
    tune.run(args, space)
    lines = compat.read_results(tmp_path / "ml-100k-FPMC.jsonl")
    assert [(r["candidate"], r["commit"], r["reused_from"]) for r in lines] == [("default", "abc", "compat-ml-100k.jsonl")]
    assert not trained


def test_search_runs_only_the_chosen_unrecorded_unclaimed_candidates(tmp_path, monkeypatch):
    monkeypatch.setattr(tune, "TUNING", tmp_path)
    monkeypatch.setattr(compat, "RESULTS", tmp_path)
    trained = []

    def fake_run(model, variant, seed, args, recipe, state_dir=None):
        trained.append(recipe["fusion"].get("output_scale"))
        return _run(model, None, 0.05, 0.05)

    monkeypatch.setattr(compat, "run_one", fake_run)
    space = {"seed": 0, "models": ["FPMC"], "candidates": [
        {"name": "default", "options": {}}, {"name": "a", "options": {"output_scale": 0.5}},
        {"name": "b", "options": {"output_scale": 2.0}}, {"name": "c", "options": {"output_scale": 4.0}}]}
    out = tune.results_path("ml-100k", "FPMC")
    out.write_text(json.dumps(_run("FPMC", "a", 0.06, 0.06)) + "\n")          # recorded: not run again
    held = tune.claim_run(out, ("FPMC", "b", 0))                               # claimed by a live process (this one)
    args = type("Args", (), {"models": ["FPMC"], "dataset": "ml-100k", "candidates": ["a", "b", "c"]})()
    tune.run(args, space)
    assert trained == [4.0]                                                    # not default (not chosen), a, or b
    assert [r["candidate"] for r in compat.read_results(out)] == ["a", "c"]
    assert held.exists() and not (out.with_name(out.name + ".claims") / "FPMC__c__0.json").exists()
    with pytest.raises(SystemExit):
        tune.main(["--candidates", "nope", "--pick"])
    for argv in (["--confirm", "--pick"], ["--confirm", "--candidates", "nope"]):
        with pytest.raises(SystemExit):
            tune.main(argv)


def test_confirm_with_named_candidates_runs_their_seeds_early_and_adopts_only_the_searchs_own_pick(tmp_path, monkeypatch):
    """``tune --confirm --candidates b`` trains b and the default on the confirm seeds while the search is still
    incomplete (plain --confirm waits); the decision still belongs to the search: once it picks c, b's confirmation
    runs do not confirm c, and a winning b is never adopted."""
    monkeypatch.setattr(tune, "TUNING", tmp_path)
    monkeypatch.setattr(compat, "RESULTS", tmp_path)
    trained = []

    def fake_run(model, variant, seed, args, recipe, state_dir=None):
        trained.append((recipe["fusion"].get("output_scale", 1.0), seed))
        return _run(model, None, 0.09 if recipe["fusion"].get("output_scale") == 2.0 else 0.05, 0.05, seed=seed)

    monkeypatch.setattr(compat, "run_one", fake_run)
    space = {"seed": 0, "confirm_seeds": [1, 2], "models": ["FPMC"], "candidates": [
        {"name": "default", "options": {}}, {"name": "b", "options": {"output_scale": 2.0}},
        {"name": "c", "options": {"output_scale": 4.0}}]}
    search = tune.results_path("ml-100k", "FPMC")
    search.write_text("".join(json.dumps(r) + "\n" for r in (_run("FPMC", "default", 0.05, 0.05), _run("FPMC", "b", 0.06, 0.05))))
    args = type("Args", (), {"models": ["FPMC"], "dataset": "ml-100k", "candidates": None})()
    tune.confirm(args, space)
    assert trained == []                                                      # c not run yet: the pick is not final
    args.candidates = ["b"]
    tune.confirm(args, space)
    assert sorted(trained) == [(1.0, 1), (1.0, 2), (2.0, 1), (2.0, 2)]
    with search.open("a") as f:
        f.write(json.dumps(_run("FPMC", "c", 0.07, 0.05)) + "\n")
    picks = tune.pick("ml-100k", space)["FPMC"]
    assert (picks["pick"], picks["complete"], picks["confirmation"], picks["adopted"]) == ("c", True, None, "default")


def test_the_grid_reuses_the_searchs_identical_run_of_a_picked_default(tmp_path, monkeypatch):
    """Once a candidate becomes a backbone's default, the grid's +fusion run on the search's seed is that
    candidate's run, and on a confirmation seed its confirmation run (not the old default's): recorded without
    training, marked where it came from; other seeds still train."""
    monkeypatch.setattr(tune, "TUNING", tmp_path / "tuning")
    monkeypatch.setattr(compat, "RESULTS", tmp_path)
    (tmp_path / "tuning").mkdir()
    hparams = compat.load_hparams()
    picked = {**hparams, "fusion": {**hparams["fusion"], "output_scale": 3.0}}  # as if FPMC's default were this
    recipe = compat.resolved_recipe("FPMC", picked["fusion"])
    searched = {**_run("FPMC", "output_scale=3", 0.059, 0.05), "modalities": ["text", "image"],
                "hparams": {**hparams["common"], **hparams["models"]["FPMC"], "fusion": recipe}}
    text_only = {**searched, "candidate": "modalities=text", "modalities": ["text"], "valid": _run("FPMC", None, 0.9, 0.9)["valid"]}
    (tmp_path / "tuning" / "ml-100k-FPMC.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (text_only, searched)))
    confirmed = {**searched, "seed": 1, "valid": _run("FPMC", None, 0.061, 0.05)["valid"], "commit": "def"}
    old_default = {**confirmed, "candidate": "default", "valid": _run("FPMC", None, 0.8, 0.8)["valid"],
                   "hparams": {**searched["hparams"], "fusion": compat.resolved_recipe("FPMC", hparams["fusion"])}}
    (tmp_path / "tuning" / "confirm-ml-100k-FPMC.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (old_default, confirmed)))
    assert compat.identical_fusion_run(tmp_path / "tuning" / "ml-100k-FPMC.jsonl", "FPMC", 0, hparams) is None
    trained = []

    def fake_run(model, variant, seed, args, recipe, state_dir=None):
        trained.append((model, variant, seed))
        return {**_run(model, None, 0.05, 0.05, seed=seed, variant=variant), "quick": False}

    monkeypatch.setattr(compat, "run_one", fake_run)
    monkeypatch.setattr(compat, "load_hparams", lambda *a, **k: json.loads(json.dumps(picked)))
    out = tmp_path / "compat-ml-100k.jsonl"
    assert compat.main(["--models", "FPMC", "--variants", "fusion", "--seeds", "0,1,2", "--out", str(out)]) == 0
    assert trained == [("FPMC", "fusion", 2)]  # seed 0: the search's run; seed 1: the pick's confirmation run
    rows = {r["seed"]: r for r in compat.read_results(out)}
    assert rows[0]["valid"]["full"]["ndcg@10"] == 0.059 and rows[0]["reused_from"] == "tuning/ml-100k-FPMC.jsonl"
    assert rows[1]["valid"]["full"]["ndcg@10"] == 0.061 and rows[1]["reused_from"] == "tuning/confirm-ml-100k-FPMC.jsonl"
    assert rows[0]["commit"] == "abc" and rows[1]["commit"] == "def" and "reused_from" not in rows[2]


def test_attach_without_options_gets_each_searched_backbones_adopted_recipe():
    """What a finished search adopted on validation is what ``attach(model, features)`` resolves to, per backbone;
    an option the user passes still wins over it."""
    from fusionlayer.config import AdapterOptions

    picks = json.loads((tune.TUNING / "picks.json").read_text())["picks"]
    space = {c["name"]: c for c in tune.load_space()["candidates"]}
    assert any(p["complete"] for p in picks.values())
    for model, p in picks.items():
        assert "modalities" not in space[p["adopted"]], f"{model}: a modality pick is not an attach() option"
        assert p["adopted"] == "default" or (p["complete"] and p["confirmation"]["confirmed"]), model
        assert compat.resolved_recipe(model, {}) == AdapterOptions.from_options(p["adopted_options"]).to_dict(), model
        assert compat.resolved_recipe(model, {"output_scale": 0.5})["output_scale"] == 0.5


def test_a_pick_is_adopted_only_when_its_mean_validation_over_the_confirm_seeds_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(tune, "TUNING", tmp_path)
    monkeypatch.setattr(compat, "RESULTS", tmp_path)
    space = {"seed": 0, "confirm_seeds": [1, 2], "models": ["FPMC"], "candidates": [
        {"name": "default", "options": {}}, {"name": "output_scale=10", "options": {"output_scale": 10.0}}]}
    (tmp_path / "ml-100k-FPMC.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        _run("FPMC", "default", 0.0586, 0.05), _run("FPMC", "output_scale=10", 0.0591, 0.05))))
    picks = tune.pick("ml-100k", space)["FPMC"]
    assert (picks["pick"], picks["confirmation"], picks["adopted"]) == ("output_scale=10", None, "default")
    assert "Not yet confirmed" in tune.tuning_report("ml-100k", space, {"FPMC": picks})
    confirm = tmp_path / "confirm-ml-100k-FPMC.jsonl"
    confirm.write_text("".join(json.dumps(r) + "\n" for r in (
        _run("FPMC", "default", 0.0551, 0.9, seed=1), _run("FPMC", "output_scale=10", 0.0498, 0.9, seed=1))))
    assert tune.pick("ml-100k", space)["FPMC"]["confirmation"] is None            # seed 2 missing: not decided
    with confirm.open("a") as f:
        f.write(json.dumps(_run("FPMC", "default", 0.0591, 0.0, seed=2)) + "\n")
        f.write(json.dumps(_run("FPMC", "output_scale=10", 0.0576, 0.0, seed=2)) + "\n")
    picks = tune.pick("ml-100k", space)["FPMC"]
    assert picks["confirmation"]["confirmed"] is False and picks["adopted"] == "default" and picks["adopted_options"] == {}
    assert picks["confirmation"]["mean_valid_ndcg@10"]["default"] == pytest.approx((0.0586 + 0.0551 + 0.0591) / 3, abs=1e-6)
    assert "**not confirmed**" in tune.tuning_report("ml-100k", space, {"FPMC": picks})
    rows = [json.loads(line) for line in confirm.read_text().splitlines()]
    rows[1]["valid"]["full"]["ndcg@10"] = 0.07                                    # the pick wins seed 1 by enough
    confirm.write_text("".join(json.dumps(r) + "\n" for r in rows))
    picks = tune.pick("ml-100k", space)["FPMC"]
    assert picks["confirmation"]["confirmed"] and picks["adopted"] == "output_scale=10"
    assert picks["adopted_options"] == {"output_scale": 10.0}
    # the report says what attach() does: FPMC's adapter has no such default, so it is "not changed yet"
    assert "attach()'s default for FPMC is not changed yet" in tune.tuning_report("ml-100k", space, {"FPMC": picks})
    assert "attach() defaults to it" not in tune.tuning_report("ml-100k", space, {"FPMC": picks})


def test_confirm_trains_the_pick_and_reuses_the_grids_default_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(tune, "TUNING", tmp_path)
    monkeypatch.setattr(compat, "RESULTS", tmp_path)
    hparams = compat.load_hparams()
    grid_row = lambda seed: {**_run("FPMC", None, 0.05, 0.05, seed=seed), "quick": False, "hparams": {  # noqa: E731
        **hparams["common"], **hparams["models"]["FPMC"], "fusion": compat.resolved_recipe("FPMC", hparams["fusion"])}}
    (tmp_path / "compat-ml-100k.jsonl").write_text("".join(json.dumps(grid_row(s)) + "\n" for s in (0, 1, 2)))
    (tmp_path / "ml-100k-FPMC.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        _run("FPMC", "default", 0.0586, 0.05), _run("FPMC", "output_scale=10", 0.0591, 0.05))))
    trained = []
    monkeypatch.setattr(compat, "run_one", lambda model, variant, seed, args, recipe, state_dir=None: trained.append(
        (seed, recipe["fusion"].get("output_scale"))) or _run(model, None, 0.04, 0.04, seed=seed))
    space = {"seed": 0, "confirm_seeds": [1, 2], "models": ["FPMC"], "candidates": [
        {"name": "default", "options": {}}, {"name": "output_scale=10", "options": {"output_scale": 10.0}}]}
    args = type("Args", (), {"models": ["FPMC"], "dataset": "ml-100k"})()
    tune.confirm(args, {**space, "candidates": [*space["candidates"], {"name": "x", "options": {"output_scale": 2.0}}]})
    assert trained == []                                                           # a search not complete: nothing yet
    tune.confirm(args, space)
    assert trained == [(1, 10.0), (2, 10.0)]                                       # the default's runs are the grid's
    rows = compat.read_results(tune.confirm_path("ml-100k", "FPMC"))
    assert sorted((r["candidate"], r["seed"], "reused_from" in r) for r in rows) == [
        ("default", 1, True), ("default", 2, True), ("output_scale=10", 1, False), ("output_scale=10", 2, False)]
    assert tune.pick("ml-100k", space)["FPMC"]["adopted"] == "default"           # 0.0591, 0.04, 0.04 < 0.0586, 0.05, 0.05


def test_a_space_with_bad_confirm_seeds_is_refused(tmp_path):
    bad = tmp_path / "space.json"
    bad.write_text(json.dumps({"seed": 0, "confirm_seeds": [0, 1], "models": ["BPR"],
                               "candidates": [{"name": "default", "options": {}}]}))
    with pytest.raises(ValueError, match="confirm_seeds"):
        tune.load_space(bad)


def test_a_no_content_control_is_reported_never_picked_and_never_reuses_a_content_run(tmp_path, monkeypatch):
    """A candidate with ``zero_content`` trains its options on zero feature tables: the control that tells a gain
    of the content from one of the objective. It scores best here, yet the pick is the best content candidate;
    the grid's identical run *with* content is not reused for it, and its recipe asks compat for zero tables."""
    monkeypatch.setattr(tune, "TUNING", tmp_path)
    monkeypatch.setattr(compat, "RESULTS", tmp_path)
    control = {"name": "softmax_loss=1.0+no_content", "options": {"softmax_loss": 1.0}, "zero_content": True}
    space = {"seed": 0, "models": ["FPMC"], "candidates": [
        {"name": "default", "options": {}}, {"name": "softmax_loss=1.0", "options": {"softmax_loss": 1.0}}, control]}
    rows = [_run("FPMC", "default", 0.042, 0.03), _run("FPMC", "softmax_loss=1.0", 0.057, 0.04),
            {**_run("FPMC", control["name"], 0.058, 0.04), "zero_content": True}]
    (tmp_path / "ml-100k-FPMC.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    picks = tune.pick("ml-100k", space)["FPMC"]
    assert picks["pick"] == "softmax_loss=1.0" and picks["complete"]
    assert picks["valid_ndcg@10"][control["name"]] == 0.058
    hparams = compat.load_hparams()
    recipe = tune._recipe(hparams, control)
    assert recipe["zero_content"] is True and "zero_content" not in tune._recipe(hparams, space["candidates"][1])
    with_content = {**_run("FPMC", None, 0.06, 0.05), "hparams": {**hparams["common"], **hparams["models"]["FPMC"],
                                                                   "fusion": compat.resolved_recipe("FPMC", recipe["fusion"])}}
    (tmp_path / "grid.jsonl").write_text(json.dumps(with_content) + "\n")
    assert compat.identical_fusion_run(tmp_path / "grid.jsonl", "FPMC", 0, {**recipe, "zero_content": False}) is not None
    assert compat.identical_fusion_run(tmp_path / "grid.jsonl", "FPMC", 0, recipe) is None


def test_zero_content_tables_keep_their_shapes(monkeypatch):
    import torch

    from fusionlayer import encoders

    class Aligned:
        features = torch.ones(5, 3)

    monkeypatch.setattr(encoders, "load_features", lambda *a, **k: {"text": Aligned()})
    args = type("Args", (), {"data_dir": None, "cache_dir": None})()
    hparams = {"modalities": ["text"], "encoders": {"text": "minilm"}, "content": None}
    assert compat.load_tables("x", None, args, hparams)["text"].sum() == 15
    zero = compat.load_tables("x", None, args, {**hparams, "zero_content": True})["text"]
    assert zero.shape == (5, 3) and not zero.any()


def test_compare_reports_a_recipe_against_plain_on_test_from_the_recorded_runs():
    from benchmarks import compare

    lines = "\n".join(compare.compare("amazon-scientific", "SASRec", "content_init"))
    assert "one-sided Wilcoxon" in lines and "| SASRec | plain |" in lines and "| SASRec | fusion |" in lines
    assert "No seed has both" in compare.compare("amazon-scientific", "SASRec", "no-such-candidate")[0]
