"""Argument helpers every benchmark script shares: comma-separated choices and default results paths."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["names", "quiet", "reply", "results_file", "set_threads"]

RESULTS = Path(__file__).resolve().parent / "results"


def names(parser: argparse.ArgumentParser, text: str, allowed: list[str], flag: str) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]``; a name outside ``allowed`` is a usage error that lists the choices."""
    chosen = [item.strip() for item in text.split(",") if item.strip()]
    unknown = sorted(set(chosen) - set(allowed))
    if unknown or not chosen:
        parser.error(f"{flag}: unknown or no names {unknown}; choose from {allowed}")
    return chosen


def results_file(stem: str, device: str, quick: bool = False) -> Path:
    """``benchmarks/results/<stem>-<cpu|cuda>[-quick].json``."""
    return RESULTS / f"{stem}-{'cuda' if device.startswith('cuda') else 'cpu'}{'-quick' if quick else ''}.json"


def set_threads(threads: int | None) -> None:
    """``--threads``: torch's intra-op threads for this process (None keeps torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def reply(row: dict) -> int:
    """A worker subprocess's answer to its parent: one JSON line on stdout; the exit status."""
    print(json.dumps(row), flush=True)
    return 0


def quiet() -> None:
    """A worker subprocess: no log lines below errors (its stdout is one JSON answer)."""
    import logging

    logging.disable(logging.WARNING)
