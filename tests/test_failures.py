"""What a careless or hostile user tries: each case is a clear error, a counted fallback or a correct result.

Every case here was once a silent wrong answer, lost data, code execution or an error from deep inside
torch (issue 13). The attach-contract cases run on a synthetic RecBole-like model and dataset built in
the test (``benchmarks.synthetic``), so a clone without ``../shared/datasets`` still checks them.
"""

from __future__ import annotations

import copy
import io
import json
import warnings

import numpy as np
import pytest
import torch

import fusionlayer
from fusionlayer import FeatureFusionLayer, FusionConfig


# ----------------------------------------------------------------------------------- the layer
def test_nan_and_inf_at_padded_positions_never_reach_real_positions(fusion_layer):
    torch.manual_seed(0)
    B, L = 3, 10
    mask = torch.arange(L) < torch.tensor([[4], [10], [1]])
    features = {"id": torch.randn(B, L, 16), "text": torch.randn(B, L, 12), "image": torch.randn(B, L, 20)}
    clean = fusion_layer(features, mask)
    poisoned = {k: torch.where(mask.unsqueeze(-1), v, torch.tensor(float("nan"))) for k, v in features.items()}
    poisoned["text"][0, 7] = float("inf")
    out = fusion_layer(poisoned, mask)
    assert torch.isfinite(out).all() and torch.allclose(out, clean)
    out.sum().backward()  # gradients stay finite too
    assert all(torch.isfinite(p.grad).all() for p in fusion_layer.parameters() if p.grad is not None)


@pytest.mark.parametrize("kwargs, error, words", [
    ({"layer_norm_eps": 0.0}, ValueError, "layer_norm_eps must be > 0"),
    ({"layer_norm_eps": -1e-6}, ValueError, "layer_norm_eps must be > 0"),
    ({"dropout": "0.5"}, TypeError, "dropout must be a number"),
    ({"modality_dims": {"id": 4, "train": 3}}, ValueError, "modality name 'train' is an attribute"),
    ({"modality_dims": {"id": 4, "keys": 3}}, ValueError, "modality name 'keys'"),
    ({"modality_dims": {"id": 4, "to": 3}}, ValueError, "modality name 'to'"),
])
def test_config_refuses_bad_values(kwargs, error, words):
    with pytest.raises(error, match=words):
        FusionConfig(**{"modality_dims": {"id": 4}, **kwargs})


def test_config_and_keywords_together_are_refused():
    config = FusionConfig(modality_dims={"id": 4}, hidden_size=8)
    with pytest.raises(TypeError, match=r"not both \(got \['hidden_size'\]"):
        FeatureFusionLayer(config=config, hidden_size=128)


@pytest.mark.parametrize("case, error, words", [
    ("id -1", ValueError, r"ids from -1 to .*valid ids 0\.\.29"),
    ("id 30", ValueError, r"ids from 0 to 30"),
    ("float64 table", TypeError, "dtype torch.float64 but the layer's weights are torch.float32"),
    ("int features", TypeError, "dtype torch.int64"),
    ("L = 0", ValueError, "L = 0 positions"),
])
def test_forward_items_errors_say_what_to_do(fusion_layer, case, error, words):
    seq = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    tables = {"id": torch.randn(30, 16), "text": torch.randn(30, 12), "image": torch.randn(30, 20)}
    with pytest.raises(error, match=words):
        if case == "id -1":
            fusion_layer.forward_items(torch.tensor([[1, -1, 3, 0]]), tables)
        elif case == "id 30":
            fusion_layer.forward_items(torch.tensor([[1, 30, 0, 0]]), tables)
        elif case == "float64 table":
            fusion_layer.forward_items(seq, {**tables, "text": tables["text"].double()})
        elif case == "int features":
            mask = seq != 0
            fusion_layer({"id": torch.ones(2, 4, 16, dtype=torch.long), "text": torch.randn(2, 4, 12),
                          "image": torch.randn(2, 4, 20)}, mask)
        else:
            fusion_layer({"id": torch.randn(2, 0, 16), "text": torch.randn(2, 0, 12), "image": torch.randn(2, 0, 20)},
                         torch.zeros(2, 0, dtype=torch.bool))


@pytest.mark.parametrize("path", ["forward", "forward_items"])
def test_an_empty_sequence_says_length(fusion_layer, path):
    with pytest.raises(ValueError, match=r"sequence length L = 0: the mask \(2, 0\) has L = 0 positions"):
        if path == "forward":
            fusion_layer({"id": torch.randn(2, 0, 16), "text": torch.randn(2, 0, 12), "image": torch.randn(2, 0, 20)},
                         torch.zeros(2, 0, dtype=torch.bool))
        else:
            fusion_layer.forward_items(torch.zeros(2, 0, dtype=torch.long),
                                       {"id": torch.randn(30, 16), "text": torch.randn(30, 12), "image": torch.randn(30, 20)})


@pytest.mark.parametrize("on_meta, what", [
    ("tables", r"tables\['id'\]"),
    ("item_seq", "item_seq"),
    ("mask", "mask"),
    ("features", r"features\['id'\]"),
    ("project_tables", r"tables\['id'\]"),
    ("project_normalized_tables", r"normalized\['id'\]"),
])
def test_inputs_on_another_device_name_both_devices(fusion_layer, on_meta, what):
    """Tables, ids, mask or features on the meta device (or any device but the layer's): our error, naming both."""
    seq = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    tables = {"id": torch.randn(30, 16), "text": torch.randn(30, 12), "image": torch.randn(30, 20)}
    meta = {k: v.to("meta") for k, v in tables.items()}
    with pytest.raises(ValueError, match=rf"{what} is on device meta but the layer is on device cpu .*\.to\(device\)"):
        if on_meta == "tables":
            fusion_layer.forward_items(seq, meta)
        elif on_meta == "item_seq":
            fusion_layer.forward_items(seq.to("meta"), tables, mask=seq != 0)
        elif on_meta == "mask":
            fusion_layer.forward_items(seq, tables, mask=(seq != 0).to("meta"))
        elif on_meta == "features":
            fusion_layer({k: torch.randn(2, 4, v.shape[1], device="meta") for k, v in tables.items()}, seq != 0)
        elif on_meta == "project_tables":
            fusion_layer.project_tables(meta)
        else:
            fusion_layer.project_normalized_tables(meta)


# ----------------------------------------------------------------------------------- attach() on a synthetic model
def synthetic(name="SASRec", **attach_kwargs):
    from benchmarks.synthetic import SyntheticDataset, build_model, features

    model = build_model(name, "plain", 8)
    fusionlayer.attach(model, features(), dataset=SyntheticDataset(), **attach_kwargs)
    return model


def batch_for(model, B=4):
    from benchmarks.synthetic import synthetic_batch

    return synthetic_batch(model, B, 8, "cpu", train=False)


@pytest.mark.parametrize("options, error, words", [
    ({"hiden_size": 16}, ValueError, r"unknown attach\(\) option\(s\) \['hiden_size'\]; valid options: \[.*'hidden_size'"),
    ({"output_dropout": 1.5}, ValueError, r"output_dropout must be in \[0, 1\)"),
    ({"side": "left"}, ValueError, "side must be one of"),
    ({"output_scale": 0}, ValueError, "output_scale must be > 0"),
    ({"dropout": "0.5"}, TypeError, "dropout must be a number"),
    ({"max_seq_length": 5}, ValueError, "max_seq_length=5 is shorter than the model's histories"),
])
def test_attach_options_are_checked_before_any_change(options, error, words):
    from benchmarks.synthetic import SyntheticDataset, build_model, features

    model = build_model("SASRec", "plain", 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=words):
        fusionlayer.attach(model, features(), dataset=SyntheticDataset(), **options)
    assert not fusionlayer.is_attached(model) and isinstance(model.item_embedding, torch.nn.Embedding)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_attach_in_eval_mode_stays_in_eval_mode():
    from benchmarks.synthetic import SyntheticDataset, build_model, features

    model = build_model("SASRec", "plain", 8).eval()
    fusionlayer.attach(model, features(), dataset=SyntheticDataset())
    assert not model.fusion_adapter.training
    with torch.no_grad():  # open the gates: dropout on the fused vector would now show
        model.fusion_adapter.user_out.weight.normal_()
    batch = batch_for(model)
    with torch.no_grad():
        assert torch.equal(model.full_sort_predict(batch), model.full_sort_predict(batch))


@pytest.mark.parametrize("name", ["SASRec", "GRU4Rec", "FPMC", "BPR"])
def test_deep_copy_and_pickle_of_an_attached_model(name):
    model = synthetic(name).eval()
    with torch.no_grad():
        for p in model.fusion_adapter.parameters():
            p.normal_(0, 0.1)
    batch = batch_for(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        expected = model.full_sort_predict(batch)
        assert torch.allclose(twin.full_sort_predict(batch), expected)
        twin.fusion_adapter.user_out.weight.zero_()  # the copy's adapter is its own
        assert torch.allclose(model.full_sort_predict(batch), expected)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)  # a file this test just wrote
    with torch.no_grad():
        assert torch.allclose(loaded.full_sort_predict(batch), expected)
    fusionlayer.detach(twin)
    assert isinstance(twin.item_embedding if name != "FPMC" else twin.IU_emb, torch.nn.Embedding)


@pytest.mark.parametrize("side", ["history", "candidate"])
def test_one_side_only(side):
    model = synthetic("SASRec", side=side)
    adapter = model.fusion_adapter
    assert (adapter.user_out is not None) == (side == "history")
    assert isinstance(model.item_embedding, torch.nn.Embedding) == (side == "history")
    model.train()
    loss = model.calculate_loss(batch_for(model))
    loss.backward()
    assert torch.isfinite(loss)


def test_output_scale_multiplies_the_fusion_outputs():
    a, b = synthetic("BPR"), synthetic("BPR", output_scale=10.0)
    b.load_state_dict(a.state_dict())
    b.fusion_adapter.load_state_dict(a.fusion_adapter.state_dict())
    with torch.no_grad():
        for m in (a, b):
            m.fusion_adapter.item_out["item_embedding"].weight.copy_(torch.full_like(m.fusion_adapter.item_out["item_embedding"].weight, 0.01))
    base = a.item_embedding.base_layer.weight
    delta_a, delta_b = a.item_embedding.weight - base, b.item_embedding.weight - base
    assert torch.allclose(delta_b, 10 * delta_a, atol=1e-6) and delta_a.abs().sum() > 0


def test_trainer_built_before_attach_is_warned_about():
    model = synthetic("SASRec")
    model.train()
    batch = batch_for(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            model.calculate_loss(batch)  # no optimiser step: the outputs stay zero
    assert any("Build RecBole's Trainer" in str(w.message) for w in caught)


# ----------------------------------------------------------------------------------- the generic adapter

def test_generic_adapter_refuses_models_whose_forward_is_not_b_by_h():
    fusionlayer.patch_recbole()
    from benchmarks.synthetic import SyntheticDataset, config_for, features
    from recbole.model.abstract_recommender import SequentialRecommender

    class PerPosition(SequentialRecommender):  # unregistered; forward returns every position, like GRU4RecCPR
        def __init__(self, config, dataset):
            super().__init__(config, dataset)
            self.item_embedding = torch.nn.Embedding(self.n_items, 16, padding_idx=0)

        def forward(self, item_seq, item_seq_len):
            return self.item_embedding(item_seq)

    model = PerPosition(config_for("GRU4Rec", 8), SyntheticDataset())
    with pytest.raises(TypeError, match=r"returned \(3, 8, 16\) for a probe batch of 3 histories, not \(3, 16\)"):
        fusionlayer.attach(model, features())
    assert not fusionlayer.is_attached(model)


# ----------------------------------------------------------------------------------- checkpoints
def test_a_malicious_checkpoint_is_refused_without_running_it(tmp_path):
    from fusionlayer.recbole_compat import UnsafeCheckpointError, load_checkpoint

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"state_dict": {}, "config": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeCheckpointError, match=r"refers to (builtins|io)\.open"):
        load_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()


def test_trainer_loads_checkpoints_through_the_restricted_loader():
    fusionlayer.patch_recbole()
    import recbole.trainer.trainer as trainer_module

    from fusionlayer.recbole_compat import load_checkpoint

    assert trainer_module.torch.load is load_checkpoint


# ----------------------------------------------------------------------------------- the feature cache
class _ToyEncoder:
    name, modality, fingerprint, dim = "toy", "text", "v1", 3

    def __init__(self, nan=False):
        self.failures, self.nan = [], nan

    def input_key(self, value):
        return str(value)

    def encode(self, values):
        self.failures = []
        out = np.ones((len(values), 3), np.float32)
        if self.nan and len(values):
            out[0] = np.nan
        return out, np.ones(len(values), bool)


@pytest.mark.parametrize("meta", ["[]", "{}", '{"format": 1}', "not json"])
def test_a_broken_meta_json_means_re_encode(tmp_path, meta):
    from fusionlayer.encoders.cache import FeatureStore

    store = FeatureStore(tmp_path)
    store.get("d", "text", _ToyEncoder(), ["a", "b"], ["x", "y"])
    (store.entry_dir("d", "text", _ToyEncoder()) / "meta.json").write_text(meta)
    result = store.get("d", "text", _ToyEncoder(), ["a", "b"], ["x", "y"])
    assert not result.stats["hit"] and result.stats["encoded"] == 2


def test_meta_json_cannot_point_outside_the_cache(tmp_path):
    from fusionlayer.encoders.cache import FeatureStore

    store = FeatureStore(tmp_path / "cache")
    store.get("d", "text", _ToyEncoder(), ["a"], ["x"])
    folder = store.entry_dir("d", "text", _ToyEncoder())
    outside = tmp_path / "outside.npy"
    np.save(outside, np.full((1, 3), 7, np.float32))
    meta = json.loads((folder / "meta.json").read_text())
    meta["files"]["features"] = "../../../../outside.npy"
    (folder / "meta.json").write_text(json.dumps(meta))
    result = store.get("d", "text", _ToyEncoder(), ["a"], ["x"])
    assert not result.stats["hit"] and float(result.features[0, 0]) == 1.0


def test_nan_rows_are_never_cached(tmp_path):
    from fusionlayer.encoders.cache import FeatureStore

    result = FeatureStore(tmp_path).get("d", "text", _ToyEncoder(nan=True), ["a", "b"], ["x", "y"])
    assert np.isfinite(result.features).all() and not result.present[0] and result.present[1]
    assert ("a", "encoder output has NaN/Inf values") in result.stats["failures"]


def test_read_only_cache_folder_fails_before_encoding(tmp_path):
    import os

    from fusionlayer.encoders.cache import FeatureStore

    if os.geteuid() == 0:  # root writes anywhere: use a path under a file instead
        blocker = tmp_path / "file"
        blocker.write_text("")
        store = FeatureStore(blocker / "cache")
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        store = FeatureStore(tmp_path / "ro")
    encoder = _ToyEncoder()
    encoder.encode = lambda values: pytest.fail("encoded before the cache folder was checked")
    with pytest.raises(PermissionError, match="not writable"):
        store.get("d", "text", encoder, ["a"], ["x"])


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True])
def test_encoder_batch_size_must_be_positive(batch_size):
    from fusionlayer.encoders.base import check_batch_size

    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        check_batch_size(batch_size)


def test_a_decompression_bomb_is_one_counted_failure(tmp_path):
    from PIL import Image

    from fusionlayer.encoders.image import ImageEncoder

    bomb, good = tmp_path / "bomb.png", tmp_path / "good.png"
    Image.new("RGB", (8, 8)).save(good)
    Image.new("1", (15000, 15000)).save(bomb)  # declares 225 M pixels: PIL's bomb check refuses it
    encoder = ImageEncoder.__new__(ImageEncoder)
    encoder.failures = []
    encoder._transform = lambda img: torch.zeros(3, 4, 4)
    assert encoder._decode(0, bomb) is None and encoder._decode(1, good) is not None
    assert len(encoder.failures) == 1 and "bomb" in encoder.failures[0][1].lower()


# ----------------------------------------------------------------------------------- results files
def test_append_after_a_truncated_line_keeps_the_new_run(tmp_path):
    from benchmarks import compat

    path = tmp_path / "r.jsonl"
    row = {"dataset": "ml-100k", "model": "BPR", "variant": "plain", "seed": 0, "test": {}}
    path.write_text(json.dumps(row) + "\n" + json.dumps(row)[:25])  # a run killed mid-write
    compat.append_result(path, {**row, "seed": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert [r["seed"] for r in compat.read_results(path)] == [0, 1]


@pytest.mark.parametrize("bad", [{"seed": "0"}, {"seed": 0.0}, {"test": None, "drop_test": True}])
def test_results_lines_with_a_string_seed_or_no_test_are_skipped(tmp_path, bad):
    from benchmarks import compat

    row = {"dataset": "ml-100k", "model": "BPR", "variant": "plain", "seed": 0, "test": {}}
    broken = {**row, **bad}
    if bad.get("drop_test"):
        broken.pop("test"), broken.pop("drop_test")
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(broken) + "\n")
    with pytest.warns(UserWarning, match="skipping malformed result line"):
        assert compat.read_results(path) == []


def _run(model, variant, seed, ndcg):
    users = list(range(20))
    return {"dataset": "ml-100k", "model": model, "variant": variant, "seed": seed,
            "test": {"full": {"mrr@10": ndcg, "ndcg@10": ndcg, "hit@10": ndcg}},
            "per_user": {"user": users, "ndcg@10": [ndcg + 0.01 * (u % 3) for u in users], "target_pop": [5] * 20}}


def test_report_counts_a_duplicated_run_once_and_never_calls_nan_improved():
    from benchmarks import report

    rows = [_run("BPR", "plain", s, 0.05) for s in (0, 1, 2)] + [_run("BPR", "fusion", s, 0.06) for s in (0, 1, 2)]
    with pytest.warns(UserWarning, match="duplicate run"):
        groups = report.group(rows + [_run("BPR", "plain", 0, 0.5)], "ml-100k")
    assert [r["seed"] for r in groups[("BPR", "plain")]] == [0, 1, 2]
    nan_rows = rows[:3] + [_run("BPR", "fusion", s, float("nan")) for s in (0, 1, 2)]
    verdict = next(line for line in report.verdicts(report.group(nan_rows, "ml-100k")) if "**BPR**" in line)
    assert "no verdict" in verdict and "improved" not in verdict


# ----------------------------------------------------------------------------------- item content files
def test_an_unterminated_quote_in_items_csv_costs_one_plot_not_the_following_ones(tmp_path):
    from fusionlayer.data.movielens import _read_plots

    path = tmp_path / "items.csv"
    path.write_text('movie_id,title,overview\n1,A,"broken plot\n2,B,second plot\n3,C,"third, quoted"\n')
    plots, counts = _read_plots(path)
    assert plots["2"] == "second plot" and plots["3"] == "third, quoted" and plots["1"] == "broken plot"
    assert counts["malformed_csv_lines"] == 1


def test_non_utf8_plots_are_counted_not_garbled(tmp_path):
    from fusionlayer.data.movielens import _read_plots

    path = tmp_path / "items.csv"
    path.write_bytes(b"movie_id,title,overview\n1,A,caf\xe9 plot\n2,B,fine\n")
    plots, counts = _read_plots(path)
    assert plots == {"1": "", "2": "fine"} and counts["non_utf8_csv_rows"] == 1


@pytest.mark.parametrize("reader", ["catalogue_content", "load_item_content"])
def test_a_header_only_item_file_is_a_clear_error_not_an_empty_encode(tmp_path, reader):
    from fusionlayer.data.content import ContentSpec, catalogue_content
    from fusionlayer.data.movielens import load_item_content

    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t1\t5\t1\n")
    (folder / "ml-100k.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n")
    (folder / "items.csv").write_text("movie_id,title,overview\n")
    with pytest.raises(ValueError, match="header but no item rows"):
        if reader == "catalogue_content":
            catalogue_content("ml-100k", tmp_path, ContentSpec(text_fields=("movie_title",)))
        else:
            load_item_content("ml-100k", tmp_path)


def test_attach_refuses_tables_on_the_meta_device():
    from benchmarks.synthetic import SyntheticDataset, build_model, features

    model = build_model("SASRec", "plain", 10)
    with pytest.raises(ValueError, match=r"features\['text'\] is on device meta"):
        fusionlayer.attach(model, {k: v.to("meta") for k, v in features().items()}, dataset=SyntheticDataset())
    assert not fusionlayer.is_attached(model)
