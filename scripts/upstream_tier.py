#!/usr/bin/env python3
"""Run a test tier on the upstream ComfyUI runtime (`make test` does), or say in one line why there is none.

  python3 scripts/upstream_tier.py tests/comfy -q     # = .venv-upstream/bin/pytest tests/comfy -q, LOOM_RUNTIME=upstream

`scripts/bootstrap.py --upstream` writes the stamp this reads: where the tree and its venv are, or how to get one.
Stdlib only: it runs on the system Python.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAMP = REPO / ".runtime" / "comfyui-upstream.json"


def main(argv: list[str]) -> int:
    try:
        stamp = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        print("[upstream] error: no upstream set-up found: run `make setup-upstream` first", file=sys.stderr)
        return 1
    if "absent" in stamp:
        print(f"[upstream] skipped {' '.join(argv)}: no upstream ComfyUI; {stamp['absent']}", flush=True)
        return 0
    python = Path(stamp["venv"]) / "bin" / "python"
    env = dict(os.environ, LOOM_RUNTIME="upstream", COMFYUI_UPSTREAM_DIR=stamp["comfyui_dir"])
    os.chdir(REPO)
    os.execve(str(python), [str(python), "-m", "pytest", *argv], env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
