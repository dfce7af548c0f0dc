"""Figures of the benchmark reports: a headless matplotlib figure, written atomically as PNG."""

from __future__ import annotations

import io
from pathlib import Path

from benchmarks.provenance import atomic_write_bytes

__all__ = ["save_png", "subplots"]


def subplots(*args, **kwargs):
    """``matplotlib.pyplot.subplots`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_png(fig, path: Path, dpi: int = 110) -> None:
    """Lay out, render to PNG, close, and write ``path`` atomically."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
