"""A user's own RecBole script works after ``import fusionlayer`` alone (issue 37).

The script builds RecBole's ``Config``, ``create_dataset``, ``data_preparation`` and ``Trainer`` as
RecBole documents them, with no ``fusionlayer.patch_recbole()`` call, then attaches random feature tables,
trains one epoch and evaluates the best checkpoint (which goes through RecBole's ``torch.load``). It runs
in a fresh interpreter, so nothing this test session imported or patched helps it.
"""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap

import pytest

N_USERS, N_ITEMS, PER_USER = 30, 25, 10

SCRIPT = textwrap.dedent("""
    import sys
    import warnings

    import torch
    import fusionlayer
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.{package} import {model}
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    config = Config(model={model!r}, dataset="tiny", config_dict={{
        "data_path": sys.argv[1], "checkpoint_dir": sys.argv[2], "epochs": 1, "train_batch_size": 64,
        "load_col": {{"inter": ["user_id", "item_id", "timestamp"]}}, "show_progress": False,
        "eval_args": {{"split": {{"LS": "valid_and_test"}}, "order": "TO", "group_by": "user", "mode": "full"}},
        "metrics": ["NDCG"], "topk": [10], "valid_metric": "NDCG@10", {extra}
    }})
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = {model}(config, train_data.dataset).to(config["device"])
    assert not torch.is_anomaly_enabled(), "RecBole's sine.py left anomaly detection on"
    tables = {{"text": torch.randn(train_data.dataset.item_num, 8)}}
    tables["text"][0] = 0  # padding id
    with warnings.catch_warnings():  # BPR's adapter warns when it cannot tell the training split from the others
        warnings.filterwarnings("error", message="cannot tell whether this dataset")
        fusionlayer.attach(model, tables, dataset=train_data.dataset)
    trainer = Trainer(config, model)
    trainer.fit(train_data, valid_data, verbose=False, show_progress=False)
    result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    print("test ndcg@10", result["ndcg@10"])
""")


@pytest.fixture(scope="module")
def tiny_catalogue(tmp_path_factory):
    """A RecBole atomic ``tiny.inter``: 30 users, 25 items, 10 timed interactions each."""
    root = tmp_path_factory.mktemp("data")
    (root / "tiny").mkdir()
    rng = random.Random(0)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(N_USERS):
        lines += [f"u{u}\ti{item}\t{u * 100 + t}" for t, item in enumerate(rng.sample(range(N_ITEMS), PER_USER))]
    (root / "tiny" / "tiny.inter").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("package, model, extra", [
    ("sequential_recommender", "SASRec", '"hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1, '
                                         '"MAX_ITEM_LIST_LENGTH": 10, "train_neg_sample_args": None'),
    ("general_recommender", "BPR", '"embedding_size": 16'),  # BPR's adapter reads the training split's role
])
def test_a_recbole_script_runs_after_import_fusionlayer_alone(tiny_catalogue, tmp_path, package, model, extra):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(package=package, model=model, extra=extra))
    done = subprocess.run([sys.executable, str(script), str(tiny_catalogue),
                           str(tmp_path / "saved")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    score = float(done.stdout.strip().splitlines()[-1].split()[-1])
    assert 0.0 <= score <= 1.0


def test_import_fusionlayer_imports_no_recbole_and_patches_numpy():
    code = ("import sys, numpy as np, fusionlayer; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'recbole'), np.float_ is np.float64)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip().splitlines()[-1] == "[] True"


def test_recbole_imported_before_fusionlayer_is_patched_too():
    code = ("import recbole.trainer.trainer as t, recbole.data.dataset.dataset as d, fusionlayer; "
            "from fusionlayer.recbole_compat import load_checkpoint; "
            "print(t.torch.load is load_checkpoint, d.Dataset.build._fusionlayer_tags_splits)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip().splitlines()[-1] == "True True"
