"""Runtime workarounds that let RecBole 1.2.1 run on numpy 2 and torch >= 2.6.

Every workaround lives here, names the RecBole line it works around, and is idempotent.
Nothing edits installed files. :func:`patch_recbole` applies all of them; the library calls it
before it touches RecBole, and users who build RecBole objects themselves can call it first.

1. numpy 2 removed ``np.float_``, ``np.complex_`` and ``np.unicode_``; RecBole's
   ``recbole/config/configurator.py`` (``Config.compatibility_settings``, lines 630-635) reads them
   in every ``Config(...)``. ray 2.6.3 (imported by ``recbole.quick_start``) reads ``np.bool8`` in
   ``ray/tune/logger/tensorboardx.py``. We add the old aliases back when they are missing.
2. torch >= 2.6 defaults ``torch.load(weights_only=True)``; RecBole's ``recbole/trainer/trainer.py``
   (``Trainer.resume_checkpoint`` line 323, ``Trainer.evaluate(model_file=...)`` line 583) loads
   checkpoints that pickle the whole ``Config`` (with protocol 4, whose FRAME opcode torch's
   weights-only unpickler rejects), and fails. We give that one module a ``torch`` namespace whose
   ``load`` is :func:`load_checkpoint`: a restricted unpickler that accepts exactly the types
   RecBole's checkpoints hold (``Config``, RecBole's enums, model classes as values, tensors,
   numpy scalars, ``torch.device``) and refuses anything else, so a checkpoint someone hands you
   cannot run code. torch itself is left alone.
5. RecBole's distributed training hard-codes nccl and CUDA devices; without CUDA it runs on gloo
   (:func:`_distributed_on_cpu`).
4. ``Dataset.build`` (``recbole/data/dataset/dataset.py``) returns the train/valid/test splits as
   shallow copies with nothing that tells them from the full dataset. We mark each with its role
   (``_fusionlayer_split``), so ``attach(bpr, ..., dataset=...)`` can refuse a dataset that holds
   validation or test interactions.
3. Importing any RecBole sequential model runs ``torch.autograd.set_detect_anomaly(True)`` at import
   time (``recbole/model/sequential_recommender/sine.py`` line 25), which makes every backward pass
   1.5-2x slower. We switch it back off after the import.
"""

from __future__ import annotations

import enum
import functools
import logging
import pickle
import sys
import types

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["patch_recbole", "NUMPY_ALIASES", "load_checkpoint", "load_data_and_model", "UnsafeCheckpointError", "CHECKPOINT_GLOBALS"]

# Old numpy names that RecBole 1.2.1 / ray 2.6.3 read, and what they meant.
NUMPY_ALIASES = {
    "float_": np.float64,
    "complex_": np.complex128,
    "unicode_": np.str_,
    "bool8": np.bool_,
}


def _patch_numpy() -> None:
    for name, value in NUMPY_ALIASES.items():
        if name not in np.__dict__:
            setattr(np, name, value)


# Exactly the globals a RecBole 1.2.1 checkpoint refers to (seen in SASRec, BPR and attached models'
# checkpoints), besides RecBole model classes and enums, which are checked by type below.
CHECKPOINT_GLOBALS = frozenset({
    "collections.OrderedDict", "numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar", "numpy.dtype",
    "recbole.config.configurator.Config", "torch.device", "torch.Size", "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter", "yaml.loader.FullLoader",
})


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint refers to a type outside :data:`CHECKPOINT_GLOBALS`; nothing of it was run."""


class _CheckpointUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        qualified = f"{module}.{name}"
        if qualified in CHECKPOINT_GLOBALS or module.startswith("numpy.dtypes"):
            return super().find_class(module, name)
        if module.startswith(("recbole.", "fusionlayer.")):
            obj = super().find_class(module, name)
            from recbole.model.abstract_recommender import AbstractRecommender

            if isinstance(obj, type) and (issubclass(obj, AbstractRecommender) or issubclass(obj, enum.Enum)):
                return obj
        raise UnsafeCheckpointError(
            f"refusing to load this checkpoint: it refers to {qualified}, which RecBole checkpoints never hold "
            "(it could run code while loading). Load only checkpoints you trust; if you wrote this file "
            "yourself with other objects in it, load it with torch.load(path, weights_only=False) knowingly")


_CHECKPOINT_PICKLE = types.ModuleType("fusionlayer_checkpoint_pickle")
_CHECKPOINT_PICKLE.Unpickler = _CheckpointUnpickler
_CHECKPOINT_PICKLE.load = pickle.load
_CHECKPOINT_PICKLE.__name__ = "fusionlayer_checkpoint_pickle"


def load_checkpoint(f, map_location=None, **kwargs):
    """``torch.load`` for RecBole checkpoints: restricted to the types they hold (see the module docstring).

    Raises:
        UnsafeCheckpointError: the file refers to any other type (nothing of it was run).
    """
    kwargs.pop("weights_only", None)
    kwargs.pop("pickle_module", None)
    return torch.load(f, map_location=map_location, pickle_module=_CHECKPOINT_PICKLE, weights_only=False, **kwargs)


class _TorchForRecBoleTrainer(types.ModuleType):
    """``torch`` as seen by ``recbole.trainer.trainer``: identical except ``load`` (:func:`load_checkpoint`)."""

    def __init__(self) -> None:
        super().__init__("torch")
        self.load = load_checkpoint

    def __getattr__(self, name: str):
        return getattr(torch, name)


def _patch_trainer_load() -> None:
    trainer_module = sys.modules.get("recbole.trainer.trainer")
    if trainer_module is None:
        import recbole.trainer.trainer as trainer_module
    if not isinstance(trainer_module.torch, _TorchForRecBoleTrainer):
        trainer_module.torch = _TorchForRecBoleTrainer()


def _import_sequential_models_without_anomaly_detection() -> None:
    imported_before = "recbole.model.sequential_recommender.sine" in sys.modules
    enabled_before = torch.is_anomaly_enabled()
    import recbole.model.sequential_recommender  # noqa: F401  (runs sine.py's set_detect_anomaly(True))

    if not imported_before:
        torch.autograd.set_detect_anomaly(enabled_before)  # undo exactly what the import did
    elif torch.is_anomaly_enabled():
        # sine.py ran before us, so we cannot tell its switch from the user's: switch off and say so.
        logger.info(
            "switching autograd anomaly detection off: RecBole's sine.py switched it on at import "
            "(it slows training 1.5-2x); call torch.autograd.set_detect_anomaly(True) after "
            "fusionlayer.patch_recbole() if you want it"
        )
        torch.autograd.set_detect_anomaly(False)


SPLIT_ATTR = "_fusionlayer_split"  # "full", "train", "valid" or "test" on datasets built after patch_recbole()


def _tag_split_roles() -> None:
    """``Dataset.build`` marks the datasets it returns (train, valid, test) and itself (full), so an adapter
    that reads interactions (BPR's histories) can refuse anything but the training split."""
    from recbole.data.dataset import Dataset

    original = Dataset.build
    if getattr(original, "_fusionlayer_tags_splits", False):
        return

    @functools.wraps(original)
    def build(self):
        datasets = original(self)
        setattr(self, SPLIT_ATTR, "full")
        roles = ("train", "valid", "test") if len(datasets) == 3 else ("train", "test") if len(datasets) == 2 else ()
        for role, dataset in zip(roles, datasets):
            setattr(dataset, SPLIT_ATTR, role)
        return datasets

    build._fusionlayer_tags_splits = True
    Dataset.build = build


def _distributed_on_cpu() -> None:
    """RecBole's distributed path on machines without CUDA: gloo instead of its hard-coded nccl.

    ``Config._init_device`` (``recbole/config/configurator.py`` lines 497-511) calls
    ``init_process_group(backend="nccl")`` and puts each rank on ``cuda:<local_rank>``, and
    ``AbstractTrainer.__init__`` (``recbole/trainer/trainer.py`` line 62) wraps the model in
    ``DistributedDataParallel(device_ids=[local_rank])``, which refuses a CPU module. Where CUDA is
    not available, the first runs with ``backend="gloo"`` and the device set to the CPU, and the second
    without ``device_ids``. On GPUs both are RecBole's own code, nccl included.
    """
    import torch.distributed as dist
    from recbole.config import configurator
    from recbole.trainer import trainer as trainer_module

    if getattr(configurator.Config._init_device, "_fusionlayer_gloo", False):
        return
    init_device = configurator.Config._init_device

    @functools.wraps(init_device)
    def _init_device(self):
        if torch.cuda.is_available() or "local_rank" not in self.final_config_dict:
            return init_device(self)
        original_init, original_set_device = dist.init_process_group, torch.cuda.set_device
        dist.init_process_group = functools.partial(_gloo_init, original_init)
        torch.cuda.set_device = lambda device: None
        try:
            init_device(self)
        finally:
            dist.init_process_group, torch.cuda.set_device = original_init, original_set_device
        self.final_config_dict["device"] = torch.device("cpu")

    _init_device._fusionlayer_gloo = True
    configurator.Config._init_device = _init_device

    abstract_init = trainer_module.AbstractTrainer.__init__

    @functools.wraps(abstract_init)
    def __init__(self, config, model):
        if config["single_spec"] or config["device"].type == "cuda":
            return abstract_init(self, config, model)
        self.config, self.model = config, model
        self.distributed_model = trainer_module.DistributedDataParallel(self.model)  # CPU: no device_ids

    trainer_module.AbstractTrainer.__init__ = __init__


def _gloo_init(original, backend=None, **kwargs):
    return original(backend="gloo", **kwargs)


@functools.cache
def _patch_once() -> None:
    _patch_numpy()
    _patch_trainer_load()
    _import_sequential_models_without_anomaly_detection()
    _tag_split_roles()
    _distributed_on_cpu()


def patch_recbole() -> None:
    """Apply the RecBole 1.2.1 workarounds (numpy 2 aliases, checkpoint loading, anomaly detection).

    Idempotent and cheap after the first call.
    """
    _patch_once()


def load_data_and_model(model_file, features=None, **attach_options):
    """RecBole's ``recbole.quick_start.load_data_and_model`` for torch >= 2.6, plain and attached checkpoints.

    Loads the checkpoint with :func:`load_checkpoint` (restricted to the types RecBole's checkpoints
    hold), rebuilds the dataset and dataloaders from its config, builds the model and loads the
    weights. A checkpoint of an attached model (``fusion_adapter.*`` keys) needs the same
    ``features`` (and options) it was trained with: the model is attached before its weights load.

    Returns:
        ``(config, model, dataset, train_data, valid_data, test_data)``, as RecBole's does.
    """
    patch_recbole()
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_seed

    checkpoint = load_checkpoint(model_file)
    config = checkpoint["config"]
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    state = checkpoint["state_dict"]
    if any(key.startswith("fusion_adapter.") for key in state):
        if features is None:
            raise ValueError(f"{model_file} is a checkpoint of an attached model: pass the features it was trained "
                             "with, load_data_and_model(path, features=...), or save a detached one with "
                             "fusionlayer.backbone_state_dict(model)")
        import fusionlayer

        fusionlayer.attach(model, features, dataset=train_data.dataset, **attach_options)
    model.load_state_dict(state)
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data
