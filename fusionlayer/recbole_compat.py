"""Runtime workarounds that let RecBole 1.2.1 run on numpy 2 and torch >= 2.6.

Every workaround lives here, names the RecBole line it works around, and is idempotent.
Nothing edits installed files. :func:`patch_recbole` applies all of them; the library calls it
before it touches RecBole, and users who build RecBole objects themselves can call it first.

1. numpy 2 removed ``np.float_``, ``np.complex_`` and ``np.unicode_``; RecBole's
   ``recbole/config/configurator.py`` (``Config.compatibility_settings``, lines 630-635) reads them
   in every ``Config(...)``. ray 2.6.3 (imported by ``recbole.quick_start``) reads ``np.bool8`` in
   ``ray/tune/logger/tensorboardx.py``. We add the old aliases back when they are missing.
2. torch >= 2.6 defaults ``torch.load(weights_only=True)``; RecBole's ``recbole/trainer/trainer.py``
   (``Trainer.resume_checkpoint`` line 323 and ``Trainer.evaluate(load_best_model=True)`` line 583)
   loads its own checkpoints, which pickle the whole ``Config``, and fails. We give that one module
   a ``torch`` namespace whose ``load`` defaults to ``weights_only=False`` (the Trainer loads only
   the files it wrote itself); torch itself is left alone.
3. Importing any RecBole sequential model runs ``torch.autograd.set_detect_anomaly(True)`` at import
   time (``recbole/model/sequential_recommender/sine.py`` line 25), which makes every backward pass
   1.5-2x slower. We switch it back off after the import.
"""

from __future__ import annotations

import functools
import logging
import sys
import types

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["patch_recbole", "NUMPY_ALIASES"]

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


class _TorchForRecBoleTrainer(types.ModuleType):
    """``torch`` as seen by ``recbole.trainer.trainer``: identical except ``load``'s default."""

    def __init__(self) -> None:
        super().__init__("torch")
        self.load = functools.partial(torch.load, weights_only=False)

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


@functools.cache
def _patch_once() -> None:
    _patch_numpy()
    _patch_trainer_load()
    _import_sequential_models_without_anomaly_detection()


def patch_recbole() -> None:
    """Apply the RecBole 1.2.1 workarounds (numpy 2 aliases, checkpoint loading, anomaly detection).

    Idempotent and cheap after the first call.
    """
    _patch_once()
