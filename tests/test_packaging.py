"""Packaging: `adapters/` installs as `fusionlayer.adapters`, never as a top-level `adapters`."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_installed_import_path():
    import fusionlayer.adapters

    assert Path(fusionlayer.adapters.__file__).parent.name in ("adapters",)
    assert fusionlayer.adapters.SASRecAdapter.__module__ == "fusionlayer.adapters.sequential"


@pytest.mark.slow
def test_wheel_maps_adapters_under_fusionlayer(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT),
                          "-w", str(tmp_path)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"pip wheel unavailable here: {out.stderr.strip()[-200:]}")
    wheel = next(tmp_path.glob("fusionlayer-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "fusionlayer/adapters/__init__.py" in names and "fusionlayer/adapters/bpr.py" in names
    assert not any(n.startswith("adapters/") for n in names)
