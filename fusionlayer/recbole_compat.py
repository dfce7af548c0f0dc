"""Runtime workarounds that let RecBole 1.2.1 run on numpy 2 and torch >= 2.6.

``import fusionlayer`` applies them, so a script that builds RecBole's ``Config``, ``create_dataset``,
``data_preparation`` and ``Trainer`` itself, as RecBole documents, works once it has imported
fusionlayer. The import stays cheap: it adds numpy's old aliases and a finder to ``sys.meta_path``
that patches each RecBole module below right after that module is first imported (modules imported
before fusionlayer are patched at once); RecBole itself is not imported. :func:`patch_recbole`
imports the modules and applies everything (the library calls it before it touches RecBole).
Every workaround names the RecBole line it works around and is idempotent; nothing edits installed
files, and neither numpy nor torch changes for code that is not RecBole's.

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
3. Importing any RecBole sequential model runs ``torch.autograd.set_detect_anomaly(True)`` at import
   time (``recbole/model/sequential_recommender/sine.py`` line 25), which makes every backward pass
   1.5-2x slower. When ``sine.py`` is imported after fusionlayer, the switch is put back to what it
   was just before. When it was imported earlier, ``import fusionlayer`` leaves the switch alone (it
   cannot tell RecBole's from the user's) and :func:`patch_recbole` switches it off once, with a log line.
4. ``Dataset.build`` (``recbole/data/dataset/dataset.py``) returns the train/valid/test splits as
   shallow copies with nothing that tells them from the full dataset. We mark each with its role
   (``_fusionlayer_split``), so ``attach(bpr, ..., dataset=...)`` can refuse a dataset that holds
   validation or test interactions.
5. RecBole's distributed training hard-codes nccl and CUDA devices; without CUDA it runs on gloo
   (:func:`_patch_configurator`, :func:`_patch_trainer`).
"""

from __future__ import annotations

import copy
import enum
import functools
import importlib
import importlib.abc
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


def _patch_trainer(trainer_module: types.ModuleType) -> None:
    """``recbole.trainer.trainer``: checkpoints load through :func:`load_checkpoint` (2), and without CUDA
    ``AbstractTrainer.__init__`` wraps the model in ``DistributedDataParallel`` without ``device_ids`` (5):
    RecBole's (``recbole/trainer/trainer.py`` line 62) passes ``device_ids=[local_rank]``, which a CPU module refuses."""
    if not isinstance(trainer_module.torch, _TorchForRecBoleTrainer):
        trainer_module.torch = _TorchForRecBoleTrainer()
    abstract_init = trainer_module.AbstractTrainer.__init__
    if getattr(abstract_init, "_fusionlayer_gloo", False):
        return

    @functools.wraps(abstract_init)
    def __init__(self, config, model):
        if config["single_spec"] or config["device"].type == "cuda":
            return abstract_init(self, config, model)
        self.config, self.model = config, model
        self.distributed_model = trainer_module.DistributedDataParallel(self.model)  # CPU: no device_ids

    __init__._fusionlayer_gloo = True
    trainer_module.AbstractTrainer.__init__ = __init__


def _patch_configurator(configurator: types.ModuleType) -> None:
    """``recbole.config.configurator``: RecBole's distributed path on machines without CUDA (5).

    ``Config._init_device`` (lines 497-511) calls ``init_process_group(backend="nccl")`` and puts each
    rank on ``cuda:<local_rank>``. Where CUDA is not available it runs with ``backend="gloo"`` and the
    device set to the CPU; on GPUs it is RecBole's own code, nccl included.
    """
    init_device = configurator.Config._init_device
    if getattr(init_device, "_fusionlayer_gloo", False):
        return

    @functools.wraps(init_device)
    def _init_device(self):
        import torch.distributed as dist

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


def _gloo_init(original, backend=None, **kwargs):
    return original(backend="gloo", **kwargs)


SPLIT_ATTR = "_fusionlayer_split"  # "full", "train", "valid" or "test" on datasets built after import fusionlayer


def _patch_dataset(dataset_module: types.ModuleType) -> None:
    """``recbole.data.dataset.dataset``: ``Dataset.build`` marks the datasets it returns (train, valid, test)
    and itself (full), so an adapter that reads interactions (BPR's histories) can refuse anything but the
    training split (4)."""
    original = dataset_module.Dataset.build
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
    dataset_module.Dataset.build = build


_SINE = "recbole.model.sequential_recommender.sine"
_PATCHES = {  # RecBole module -> what to change right after it is imported
    "recbole.config.configurator": _patch_configurator,
    "recbole.data.dataset.dataset": _patch_dataset,
    "recbole.trainer.trainer": _patch_trainer,
}
_state = {"sine_imported_after_us": False, "anomaly_checked": False}


def _sine_without_anomaly_switch(exec_module, module: types.ModuleType) -> None:
    """Run ``sine.py`` and put autograd anomaly detection back to what it was just before (3)."""
    enabled_before = torch.is_anomaly_enabled()
    try:
        exec_module(module)
    finally:
        torch.autograd.set_detect_anomaly(enabled_before)
        _state["sine_imported_after_us"] = True


class _RecBoleImportHook(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for the modules in ``_PATCHES`` (and ``sine.py``) it asks the other finders and
    wraps the loader's ``exec_module`` so the workaround runs right after the module's own code."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _PATCHES and fullname != _SINE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = copy.copy(spec.loader)  # this module's own loader (a zip importer serves many), of the same type
        exec_module = loader.exec_module
        if fullname == _SINE:
            loader.exec_module = functools.partial(_sine_without_anomaly_switch, exec_module)
        else:
            def exec_then_patch(module, _exec=exec_module, _patch=_PATCHES[fullname]):
                _exec(module)
                _patch(module)

            loader.exec_module = exec_then_patch
        spec.loader = loader
        return spec


def install_hooks() -> None:
    """What ``import fusionlayer`` runs: numpy's aliases, the import hook, and the patches of RecBole modules
    already imported. Cheap (imports nothing) and idempotent."""
    _patch_numpy()
    if not any(isinstance(finder, _RecBoleImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RecBoleImportHook())
    for name, patch in _PATCHES.items():
        module = sys.modules.get(name)
        if module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False):
            patch(module)  # imported before fusionlayer (and not still being imported)


def _anomaly_switched_on_before_us() -> None:
    """``sine.py`` ran before fusionlayer was imported: we cannot tell its switch from the user's, so switch
    it off once and say so."""
    if _state["anomaly_checked"] or _state["sine_imported_after_us"] or _SINE not in sys.modules:
        return
    _state["anomaly_checked"] = True
    if torch.is_anomaly_enabled():
        logger.info(
            "switching autograd anomaly detection off: RecBole's sine.py switched it on at import "
            "(it slows training 1.5-2x); call torch.autograd.set_detect_anomaly(True) after "
            "fusionlayer.patch_recbole() if you want it"
        )
        torch.autograd.set_detect_anomaly(False)


def patch_recbole() -> None:
    """Import the RecBole modules the workarounds touch and apply them all (see the module docstring).

    ``import fusionlayer`` already applies them as RecBole is imported; calling this as well does no harm,
    and it also covers an environment where another import hook bypassed ours. Idempotent and cheap after
    the first call.
    """
    install_hooks()
    for name, patch in _PATCHES.items():
        module = sys.modules.get(name) or importlib.import_module(name)
        patch(module)
    enabled_before = torch.is_anomaly_enabled()
    imported_before = _SINE in sys.modules
    import recbole.model.sequential_recommender  # noqa: F401  (sine.py's set_detect_anomaly(True), if not yet run)

    if not imported_before:
        torch.autograd.set_detect_anomaly(enabled_before)  # in case another import hook bypassed ours
        _state["sine_imported_after_us"] = True
    _anomaly_switched_on_before_us()


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
