"""Each RecBole 1.2.1 workaround, tested on its own."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from fusionlayer import patch_recbole
from fusionlayer.recbole_compat import NUMPY_ALIASES


@pytest.mark.needs_ml100k
def test_numpy_aliases_restored_and_config_builds(tiny_root):
    patch_recbole()
    for name, value in NUMPY_ALIASES.items():
        assert getattr(np, name) is value
    from recbole.config import Config  # Config.compatibility_settings reads np.float_ etc.

    root, name = tiny_root
    config = Config(model="BPR", dataset=name, config_dict={"data_path": str(root)})
    assert config["model"] == "BPR"


class Payload:  # stands for RecBole's Config, which its checkpoints pickle
    pass


def test_trainer_loads_checkpoints_but_refuses_foreign_types(tmp_path):
    import collections

    from fusionlayer.recbole_compat import UnsafeCheckpointError

    patch_recbole()
    import recbole.trainer.trainer as trainer_module

    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": collections.OrderedDict(w=torch.ones(2)), "epoch": 3, "device": torch.device("cpu")}, path)
    assert trainer_module.torch.load(path)["epoch"] == 3  # RecBole's own checkpoint types load
    torch.save({"config": Payload(), "epoch": 3}, tmp_path / "foreign.pth")
    with pytest.raises(UnsafeCheckpointError, match="Payload"):  # anything else is refused, never run
        trainer_module.torch.load(tmp_path / "foreign.pth")
    assert trainer_module.torch.save is torch.save  # everything else is torch itself
    try:
        torch.load(tmp_path / "foreign.pth")  # torch's own default is untouched
    except Exception as exc:  # noqa: BLE001
        assert "weights_only" in str(exc) or "Weights only" in str(exc)
    else:
        raise AssertionError("torch.load's own default was changed")


def test_anomaly_detection_is_switched_back_off():
    code = ("import torch, fusionlayer; fusionlayer.patch_recbole(); "
            "import recbole.model.sequential_recommender.sine; print(torch.is_anomaly_enabled())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
    code = "import torch, recbole.model.sequential_recommender as s; print(torch.is_anomaly_enabled())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "True"  # proves the workaround is needed
