"""Attached models under RecBole's own distributed Trainer: two CPU processes on gloo, one short epoch.

RecBole 1.2.1 hard-codes nccl and CUDA devices for distributed training; ``fusionlayer.patch_recbole()``
puts it on gloo and the CPU where CUDA is absent (``recbole_compat._distributed_on_cpu``). Each rank
trains on its half of the batches through RecBole's DistributedDataParallel wrapper, reduce hook and
sync-loss trick; the test checks what DDP promises and what a user needs afterwards.
"""

from __future__ import annotations

import json
import math
import socket

import pytest
import torch
import torch.multiprocessing as mp

import fusionlayer
from conftest import SMALL, random_features

pytestmark = pytest.mark.needs_ml100k

OVERRIDES = {**SMALL, "epochs": 1, "train_batch_size": 128, "gpu_id": "0,1", "metric_decimal_place": 6}


def model_class(name):
    fusionlayer.patch_recbole()
    from recbole.model.general_recommender import BPR
    from recbole.model.sequential_recommender import SASRec

    return {"SASRec": SASRec, "BPR": BPR}[name]


def build(name, root, dataset_name, out, **extra):
    from fusionlayer.data.recbole_data import prepare_data, recbole_config
    from recbole.utils import init_seed

    config = recbole_config(model_class(name), dataset_name, data_root=root,
                            overrides={**OVERRIDES, "checkpoint_dir": str(out), **extra})
    init_seed(0, True)
    _, train, valid, test = prepare_data(config)
    torch.manual_seed(0)
    model = model_class(name)(config, train.dataset)
    fusionlayer.attach(model, random_features(train.dataset.item_num), dataset=train.dataset)
    return config, model, train, valid, test


def worker(rank, name, root, dataset_name, out, port):
    import torch.distributed as dist
    from recbole.trainer import Trainer

    config, model, train, valid, test = build(name, root, dataset_name, out, nproc=2, world_size=2, local_rank=rank,
                                              offset=0, ip="127.0.0.1", port=port)
    trainer = Trainer(config, model)
    trainer.fit(train, valid, verbose=False, saved=True, show_progress=False)
    dist.barrier()  # only rank 0 writes the checkpoint: the others must not read it before it is complete
    metrics = trainer.evaluate(test, load_best_model=True, show_progress=False)
    torch.save(fusionlayer.fusion_state_dict(model), out / f"fusion-{rank}.pt")
    (out / f"rank-{rank}.json").write_text(json.dumps({
        "backend": dist.get_backend(), "loss": list(trainer.train_loss_dict.values()),
        "metrics": {k: float(v) for k, v in metrics.items()}, "checkpoint": trainer.saved_model_file}))
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", ["SASRec", "BPR"])
def test_distributed_training_on_cpu_with_gloo(name, tiny_root, tmp_path):
    from recbole.trainer import Trainer

    from fusionlayer.recbole_compat import load_checkpoint

    root, dataset_name = tiny_root
    mp.spawn(worker, args=(name, root, dataset_name, tmp_path, free_port()), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert all(r["backend"] == "gloo" for r in ranks)
    assert all(math.isfinite(loss) for r in ranks for loss in r["loss"])
    fusion = [torch.load(tmp_path / f"fusion-{r}.pt") for r in (0, 1)]
    assert fusion[0].keys() == fusion[1].keys()
    assert all(torch.equal(fusion[0][k], fusion[1][k]) for k in fusion[0])  # DDP kept the ranks in step
    assert any(fusion[0][k].abs().sum() > 0 for k in fusion[0] if "_out" in k)  # and the fusion trained
    # rank 0's checkpoint in a single-process attached model: the same test metrics
    config, model, train, valid, test = build(name, root, dataset_name, tmp_path / "single")
    model.load_state_dict(load_checkpoint(ranks[0]["checkpoint"])["state_dict"])
    single = Trainer(config, model).evaluate(test, load_best_model=False, show_progress=False)
    for key, value in ranks[0]["metrics"].items():
        assert single[key] == pytest.approx(value, abs=1e-5), key
