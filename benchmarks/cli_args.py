"""Argument helpers every benchmark script shares: comma-separated choices and default results paths."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["names", "results_file"]

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
