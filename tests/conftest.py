"""Every test is marked with its tier from the folder it lives in (unit, comfy, server, gpu, browser).

Each tier runs in its own pytest process (see the Makefile): the unit tier must never import
ComfyUI, and ComfyUI's process must never have the repo root on sys.path (its `nodes` module).
"""

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
TIERS = ("unit", "comfy", "server", "gpu", "browser")
sys.path.insert(0, str(REPO / "scripts"))


def pytest_collection_modifyitems(items):
    for item in items:
        tier = Path(item.fspath).resolve().relative_to(TESTS).parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
