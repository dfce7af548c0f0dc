"""Tiny fixtures: a 60-user slice of the shared ML-100K, small RecBole configs, random features."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import fusionlayer
from fusionlayer.data import default_data_root, slice_users

warnings.filterwarnings("ignore", category=FutureWarning)
SHARED = default_data_root()
TINY_USERS = 60
SMALL = {"hidden_size": 32, "embedding_size": 32, "n_layers": 1, "n_heads": 2, "inner_size": 64, "num_layers": 1,
         "train_batch_size": 256, "eval_batch_size": 1024, "epochs": 1, "seed": 0, "token_hidden_size": 16,
         "channel_hidden_size": 64}


def pytest_collection_modifyitems(items):
    if not (SHARED / "ml-100k" / "ml-100k.inter").is_file():
        skip = pytest.mark.skip(reason=f"the shared ML-100K copy is not at {SHARED}")
        for item in items:
            if "needs_ml100k" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> tuple[Path, str]:
    """(data_root, dataset name) of the first 60 ML-100K users (about 6,000 interactions)."""
    root = tmp_path_factory.mktemp("data")
    return root, slice_users("ml-100k", TINY_USERS, root, SHARED)


def build(model_class, tiny_root, tmp_path, **overrides):
    """RecBole config and data for ``model_class`` on the tiny slice."""
    from fusionlayer.data.recbole_data import prepare_data, recbole_config
    from recbole.utils import init_seed

    root, name = tiny_root
    config = recbole_config(model_class, name, data_root=root,
                            overrides={**SMALL, "checkpoint_dir": str(tmp_path / "saved"), **overrides})
    init_seed(0, True)
    dataset, train, valid, test = prepare_data(config)
    return config, train, valid, test


def backbone_class(name):
    """The RecBole class of one of the four backbones ``attach()`` supports."""
    fusionlayer.patch_recbole()
    from recbole.model.general_recommender import BPR
    from recbole.model.sequential_recommender import FPMC, GRU4Rec, SASRec

    return {"SASRec": SASRec, "GRU4Rec": GRU4Rec, "FPMC": FPMC, "BPR": BPR}[name]


@pytest.fixture(scope="module")
def setups(tiny_root, tmp_path_factory):
    """``setups(name)`` -> (config, train, valid, test, one fixed training batch), built once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            config, train, valid, test = build(backbone_class(name), tiny_root, tmp_path_factory.mktemp(name))
            cache[name] = (config, train, valid, test, next(iter(train)))
        return cache[name]

    return get


def random_features(n_items: int, dims=(("text", 24), ("image", 40)), seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feats = {name: torch.randn(n_items, d, generator=g) for name, d in dims}
    for t in feats.values():
        t[0] = 0  # padding id
    return feats


@pytest.fixture
def fusion_layer():
    torch.manual_seed(0)
    return fusionlayer.FeatureFusionLayer(modality_dims={"id": 16, "text": 12, "image": 20}, hidden_size=16,
                                          max_seq_length=10, token_hidden_size=8, channel_hidden_size=32, dropout=0.0)


def fresh(name, setups, **attach_kwargs):
    """``(attached model, the same model before attaching, (config, train, valid, test, one batch))``: backbone
    ``name`` on the tiny slice, attached to random features with ``attach_kwargs``."""
    import copy

    config, train, valid, test, batch = setups(name)
    torch.manual_seed(0)
    model = backbone_class(name)(config, train.dataset)
    base = copy.deepcopy(model)
    fusionlayer.attach(model, random_features(train.dataset.item_num), dataset=train.dataset, **attach_kwargs)
    return model, base, (config, train, valid, test, batch)


def same_training_loss(model, other, batch) -> bool:
    """Whether two models give bit-identical training losses on ``batch`` under the same random draws."""
    model.train(), other.train()
    torch.manual_seed(1)
    loss = model.calculate_loss(batch)
    torch.manual_seed(1)
    return torch.equal(loss, other.calculate_loss(batch))
