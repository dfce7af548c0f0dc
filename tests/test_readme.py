"""The README's quick start runs as written: a user's own RecBole script with ``import fusionlayer`` and ``attach``.

Run in a fresh interpreter (nothing this test session imported or patched helps it), on the first 60 users of
the shared ML-100K, one epoch; only the data path, the dataset name and the epoch count are replaced."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_USERS

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.needs_ml100k, pytest.mark.slow]


def quickstart() -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- quickstart:begin -->")[1].split("<!-- quickstart:end -->")[0]
    return re.search(r"```python\n(.*?)```", block, re.S).group(1)


def test_the_quick_start_is_a_recbole_script_with_two_added_lines():
    code = quickstart()
    assert code.splitlines()[0].startswith("import fusionlayer")
    assert "patch_recbole" not in code  # import fusionlayer is enough
    for call in ("Config(", "create_dataset(", "data_preparation(", "Trainer(", "fusionlayer.attach("):
        assert call in code


def test_the_quick_start_runs_as_written(tiny_root, tmp_path):
    root, name = tiny_root
    code = quickstart()
    for old, new in (('dataset="ml-100k"', f'dataset="{name}"'),
                     ('"data_path": "../shared/datasets"', f'"data_path": "{root}", "checkpoint_dir": "{tmp_path}"'),
                     ('"epochs": 2', '"epochs": 1')):
        assert old in code, old
        code = code.replace(old, new)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ndcg@10" in done.stdout.lower() and str(TINY_USERS)  # RecBole's test metrics were printed
