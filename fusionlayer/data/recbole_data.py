"""RecBole Config / dataset / dataloaders under the benchmark protocol, in one call.

Protocol (the paper's, made explicit): 5-core filtering of users and items, histories of at most 50
items, leave-one-out by timestamp (last item test, second-last validation), full ranking.
Pairwise models (FPMC, BPR) train with one uniformly sampled negative per positive; the others
with cross-entropy over all items.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from fusionlayer.data.movielens import default_data_root, ensure_dataset
from fusionlayer.recbole_compat import patch_recbole

__all__ = ["PROTOCOL", "recbole_config", "prepare_data"]

PROTOCOL: dict[str, Any] = {
    "user_inter_num_interval": "[5,inf)",
    "item_inter_num_interval": "[5,inf)",
    "MAX_ITEM_LIST_LENGTH": 50,
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
    "metrics": ["MRR", "NDCG", "Hit"],
    "topk": [10],
    "valid_metric": "MRR@10",
    "show_progress": False,
    "log_wandb": False,
}


def recbole_config(model: Any, dataset: str = "ml-100k", *, data_root: str | Path | None = None,
                   overrides: dict[str, Any] | None = None):
    """A RecBole ``Config`` for ``model`` (a class or registered name) under :data:`PROTOCOL`.

    ``data_root`` holds ``<dataset>/<dataset>.inter`` (default ``../shared/datasets``; downloaded
    from GroupLens where absent). ``overrides`` win over the protocol.
    """
    patch_recbole()
    from recbole.config import Config
    from recbole.utils import InputType

    root = Path(data_root) if data_root is not None else default_data_root()
    if dataset in ("ml-100k", "ml-1m"):
        ensure_dataset(dataset, root)
    values = {**PROTOCOL, "data_path": str(root), "checkpoint_dir": str(Path.cwd() / "saved")}
    model_class = model if isinstance(model, type) else None
    pairwise = model_class is not None and getattr(model_class, "input_type", None) == InputType.PAIRWISE
    values["train_neg_sample_args"] = {"distribution": "uniform", "sample_num": 1} if pairwise else None
    values["loss_type"] = "BPR" if pairwise else "CE"
    values.update(overrides or {})
    argv, sys.argv = sys.argv, sys.argv[:1]  # RecBole's Config parses the process's command line: hide it
    try:
        return Config(model=model, dataset=dataset, config_dict=values)
    finally:
        sys.argv = argv


def prepare_data(config):
    """``(dataset, train_data, valid_data, test_data)`` for a RecBole ``Config``."""
    patch_recbole()
    from recbole.data import create_dataset, data_preparation

    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    return dataset, train_data, valid_data, test_data
