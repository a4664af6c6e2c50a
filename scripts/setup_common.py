"""What every setup script shares (stdlib only): the one error the user fixes, logging, running a command."""

from __future__ import annotations

import subprocess


class SetupError(Exception):
    """A problem the user has to fix; printed as one line, no traceback."""


def log(msg: str) -> None:
    print(f"[bootstrap] {msg}", flush=True)


def run(cmd: list[str], what: str, **kw) -> None:
    log(" ".join(str(c) for c in cmd) if len(cmd) < 12 else f"{what} ...")
    proc = subprocess.run(cmd, **kw)
    if proc.returncode != 0:
        raise SetupError(f"{what} failed (exit {proc.returncode}); see the output above")
