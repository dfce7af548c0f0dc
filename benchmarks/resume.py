"""Training runs that survive a stop: RecBole's own Trainer, snapshotted at every epoch boundary.

A converged SASRec run takes hours on two CPU cores, longer than one sitting. ``ResumableTrainer`` is
RecBole's :class:`~recbole.trainer.Trainer` (same ``fit``, early stopping and checkpoint of the best
epoch) that, before each training epoch, writes everything the rest of the run depends on to
``<state_dir>/state.pth``: the model and optimizer, the epoch to start from, the early-stopping counters,
the loss history, the wall time spent so far, and every random state the next epochs draw from (torch,
NumPy, ``random``, and the training loader's own generator, which RecBole seeds once and shuffles with).
A run started again with the same ``state_dir`` and the same ``fingerprint`` (model, variant, seed,
hyper-parameters) continues from the last finished epoch and, on the same machine and thread count,
trains exactly as the uninterrupted run would (tested). A state whose fingerprint differs is never
resumed: it is discarded with a warning and the run starts over. The best epoch's checkpoint lives in
the same folder, so evaluation after a resumed run reloads the right weights.
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from recbole.trainer import Trainer

__all__ = ["ResumableTrainer"]

logger = logging.getLogger("fusionlayer.bench.resume")
STATE = "state.pth"


def _rng_state(train_data) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}
    if getattr(train_data, "generator", None) is not None:
        state["loader"] = train_data.generator.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, train_data) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if "loader" in state and getattr(train_data, "generator", None) is not None:
        train_data.generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumableTrainer(Trainer):
    """RecBole's Trainer, resumable from ``state_dir`` (see the module docstring).

    Args:
        config, model: as for :class:`recbole.trainer.Trainer`.
        state_dir: the run's own folder: the snapshot and the best epoch's checkpoint.
        fingerprint: what identifies the run (JSON-like); a snapshot is resumed only under the same one.

    After ``fit``: ``train_seconds`` (wall time of training over every sitting), ``resumed_at`` (the
    epochs at which a sitting started from a snapshot; empty for a run trained in one go) and
    ``valid_curve`` (``[{"epoch": e, <metric>: value, ...}]``, one entry per validation; a run resumed from
    a snapshot written before curves were kept starts its curve at the resumed epoch).
    """

    def __init__(self, config, model, state_dir: Path | str, fingerprint: dict) -> None:
        super().__init__(config, model)
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.saved_model_file = str(self.state_dir / "best.pth")
        self.fingerprint = fingerprint
        self.resumed_at: list[int] = []
        self._seconds_before = 0.0
        self._started: float | None = None
        self._pending_rng: dict | None = None
        self.valid_curve: list[dict] = []
        self._epoch = 0
        if (self.state_dir / STATE).is_file():
            self._restore()

    @property
    def train_seconds(self) -> float:
        now = 0.0 if self._started is None else time.perf_counter() - self._started
        return self._seconds_before + now

    def _restore(self) -> None:
        path = self.state_dir / STATE
        try:
            state = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as exc:  # a snapshot cut short by a kill mid-write cannot exist (atomic), but a foreign file can
            logger.warning("cannot read %s (%s): starting the run over", path, exc)
            return
        if state.get("fingerprint") != self.fingerprint:
            logger.warning("%s belongs to another configuration (%s); starting the run over", path,
                           state.get("fingerprint"))
            return
        try:  # first, before the model is touched: a snapshot of the same configuration written by code whose
            # parameters were laid out differently (the per-stream Mixer before the grouped one) has an optimizer
            # state that does not fit (torch refuses it unchanged); its run starts over
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:
            logger.warning("%s was written for other parameters (%s); starting the run over", path, exc)
            return
        self.model.load_state_dict(state["model"])
        self.start_epoch, self.cur_step = state["start_epoch"], state["cur_step"]
        self.best_valid_score, self.best_valid_result = state["best_valid_score"], state["best_valid_result"]
        self.train_loss_dict = dict(state["train_loss_dict"])
        self._seconds_before = state["train_seconds"]
        self.resumed_at = [*state["resumed_at"], self.start_epoch]
        self.valid_curve = list(state.get("valid_curve", []))
        self._pending_rng = state["rng"]
        logger.info("resuming %s from epoch %d (%.0f s trained before)", self.state_dir.name, self.start_epoch,
                    self._seconds_before)

    def _snapshot(self, epoch: int, train_data) -> None:
        state = {"fingerprint": self.fingerprint, "model": self.model.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "start_epoch": epoch, "cur_step": self.cur_step,
                 "best_valid_score": self.best_valid_score, "best_valid_result": self.best_valid_result,
                 "train_loss_dict": dict(self.train_loss_dict), "train_seconds": self.train_seconds,
                 "resumed_at": list(self.resumed_at), "valid_curve": list(self.valid_curve),
                 "rng": _rng_state(train_data)}
        tmp = self.state_dir / f".{STATE}.{os.getpid()}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.state_dir / STATE)  # a kill mid-write leaves the previous snapshot intact

    def fit(self, train_data, valid_data=None, **kwargs):
        if self._pending_rng is not None:
            _set_rng_state(self._pending_rng, train_data)
            self._pending_rng = None
        self._started = time.perf_counter()
        try:
            return super().fit(train_data, valid_data, **kwargs)
        finally:
            self._seconds_before, self._started = self.train_seconds, None

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        if epoch_idx > self.start_epoch:  # epoch_idx - 1 is finished, its validation and checkpoint included
            self._snapshot(epoch_idx, train_data)
        self._epoch = epoch_idx
        return super()._train_epoch(train_data, epoch_idx, *args, **kwargs)

    def _valid_epoch(self, valid_data, *args, **kwargs):
        score, result = super()._valid_epoch(valid_data, *args, **kwargs)
        self.valid_curve.append({"epoch": self._epoch, **{k: round(float(v), 5) for k, v in result.items()}})
        return score, result
