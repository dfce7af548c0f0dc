"""Where a result came from: commit, device, date and command, and the one atomic write every script uses."""

from __future__ import annotations

import datetime
import functools
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from fusionlayer.encoders.cache import atomic_write_bytes

__all__ = ["atomic_write_bytes", "atomic_write_json", "command_line", "device_name", "git_commit", "provenance",
           "runs_summary", "utc_now"]

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def git_commit() -> str:
    """The checkout's commit when the process started (code edits after that do not reach it).

    ``-dirty`` marks uncommitted changes to code; results files and markdown do not count.
    """
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)benchmarks/results", ":(exclude)*.md"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(device: str = "cpu") -> str:
    """``NVIDIA H100 ...`` on CUDA, else ``cpu (x86_64, N threads)``: one spelling for every results file."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def command_line(module: str, argv: list[str] | None = None) -> str:
    """``python -m <module> <args>``: how to reproduce the run (``argv`` default: this process's)."""
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python", "-m", module, *args])


def provenance(module: str, argv: list[str] | None = None, device: str = "cpu") -> dict[str, Any]:
    """The fields every results file carries."""
    return {"command": command_line(module, argv), "commit": git_commit(), "device": device_name(device),
            "torch": torch.__version__, "date": utc_now()}


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(Path(path), json.dumps(value, indent=1).encode())


def runs_summary(rows: list[dict]) -> str:
    """``Runs: N; commits ...; device ...; dates first .. last; commands `...``` of results lines (no final period)."""
    dates, commands = sorted(r["date"] for r in rows), sorted({r["command"] for r in rows})
    shown = (", ".join(f"`{c}`" for c in commands) if len(commands) <= 2 else
             f"{len(commands)} commands (each run's is on its line of the results file)")
    return (f"Runs: {len(rows)}; commits {', '.join(sorted({r['commit'] for r in rows}))}; device "
            f"{', '.join(sorted({r['device'] for r in rows}))}; torch {', '.join(sorted({r.get('torch', '?') for r in rows}))}; "
            f"dates {dates[0]} .. {dates[-1]}; " + ("command " if len(commands) == 1 else "commands ") + shown)
