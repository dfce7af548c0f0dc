"""The results files and the work queue several benchmark processes share.

Every finished run appends one JSON line to a ``.jsonl`` results file (one write on an O_APPEND
descriptor, then fsync); a re-run skips what is recorded. Several processes may share one file: each
run is claimed first (``<results>.claims/<run>.json``, created with O_EXCL, removed when the run's
line is written), so no two live workers train the same run; a claim left by a process that died on
this host is taken over.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
import warnings
from pathlib import Path

__all__ = ["append_result", "claim_run", "claims_dir", "read_results", "run_key"]

logger = logging.getLogger("fusionlayer.bench.queue")


def read_results(path: Path) -> list[dict]:
    """Parse a results file; a malformed line is skipped with a warning that names it."""
    rows = []
    if not path.is_file():
        return rows
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not {"dataset", "model", "variant", "seed", "test"} <= set(row):
                raise ValueError("missing keys dataset/model/variant/seed/test")
            if isinstance(row["seed"], bool) or not isinstance(row["seed"], int):
                raise ValueError(f"seed must be an integer, got {row['seed']!r}")
        except ValueError as exc:
            warnings.warn(f"{path}:{number}: skipping malformed result line ({exc}): {line[:80]!r}", stacklevel=2)
            continue
        rows.append(row)
    return rows


def run_key(row: dict) -> tuple:
    return row["dataset"], row["model"], row["variant"], int(row["seed"]), bool(row.get("quick", False))


def append_result(path: Path, row: dict) -> None:
    """Append one line with a single write on an O_APPEND descriptor, then fsync.

    A file whose last line was cut short (a run killed mid-write) gets a newline first, so the new
    run is its own line and the fragment stays a separate, skipped line.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(row, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def claims_dir(out: Path) -> Path:
    return out.with_name(out.name + ".claims")


def _claim_holder_alive(path: Path) -> bool:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):  # being written this instant, or unreadable: trust it while it is fresh
        try:
            return time.time() - path.stat().st_mtime < 60
        except OSError:
            return False
    if info.get("host") != platform.node():
        logger.warning("%s is held by a process on host %s; delete the file if that worker is gone", path, info.get("host"))
        return True
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


def claim_run(out: Path, key: tuple) -> Path | None:
    """Claim one run for this process (O_EXCL file); None when a live worker holds it."""
    folder = claims_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("__".join(str(part) for part in key) + ".json")
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            if _claim_holder_alive(path):
                return None
            logger.info("taking over %s: the process that claimed it is gone", path.name)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": platform.node(), "started": time.time()}, f)
        return path
    return None
