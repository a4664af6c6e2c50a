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
COMFY_TIERS = ("comfy", "server", "gpu", "browser")  # the tiers that run a real ComfyUI
sys.path.insert(0, str(REPO / "scripts"))


def pytest_sessionstart(session):
    """Name the ComfyUI a tier runs on, first thing in its log (`make test` runs some tiers on two of them)."""
    tiers = set()
    for arg in session.config.args:
        try:
            tiers.add(Path(arg.split("::")[0]).resolve().relative_to(TESTS).parts[0])
        except (ValueError, IndexError):
            continue
    if tiers & set(COMFY_TIERS):
        from comfy_env import RuntimeMissing, describe_runtime

        try:
            line = describe_runtime()
        except RuntimeMissing as e:
            line = str(e)
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"[loom] {'/'.join(sorted(tiers))} tier on {line}")


def pytest_collection_modifyitems(items):
    for item in items:
        tier = Path(item.fspath).resolve().relative_to(TESTS).parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
