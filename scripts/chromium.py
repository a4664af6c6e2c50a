"""Chromium for the browser tier: Debian's `chromium` package (Playwright's own browser download is never used).
Stdlib only, like bootstrap.py."""

from __future__ import annotations

import os
import shutil
import subprocess

from setup_common import SetupError, log, run

CHROMIUM_PACKAGE = "chromium"  # Debian's; Playwright's own browser download is never used
# Without recommends (a sandbox helper we do not use, and desktop daemons), but with the fonts it recommends: ComfyUI's
# canvas asks for Arial, which fontconfig maps to Liberation Sans.
CHROMIUM_PACKAGES = [CHROMIUM_PACKAGE, "fonts-liberation"]
DEBIAN_CHROMIUM = "/usr/bin/chromium"


def find_chromium() -> str | None:
    """$LOOM_CHROMIUM, else `chromium` on PATH, else /usr/bin/chromium; None when there is none (the one lookup:
    scripts/loom_browser.py launches what this finds)."""
    env = os.environ.get("LOOM_CHROMIUM", "").strip()
    if env:
        if not (os.path.isfile(env) and os.access(env, os.X_OK)):
            raise SetupError(f"LOOM_CHROMIUM={env} is not an executable file: fix it or unset it")
        return env
    found = shutil.which("chromium")
    if found:
        return found
    return DEBIAN_CHROMIUM if os.access(DEBIAN_CHROMIUM, os.X_OK) else None


def root_prefix() -> list[str] | None:
    """[] as root, ["sudo", "-n"] where sudo works without a password, else None."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def ensure_chromium() -> str:
    """Install Debian's chromium package unless a Chromium is already there; returns its path."""
    found = find_chromium()
    if found:
        return found
    if not shutil.which("apt-get"):
        raise SetupError(
            "the browser tests need Chromium and there is no apt-get here to install Debian's `chromium`: install "
            "Chromium yourself and put `chromium` on PATH, or set LOOM_CHROMIUM=/path/to/chromium"
        )
    prefix = root_prefix()
    if prefix is None:
        raise SetupError(
            "the browser tests need Debian's chromium package and installing it needs root: run "
            "`sudo apt-get install -y chromium` once (or set LOOM_CHROMIUM=/path/to/chromium), then run again"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log("installing Debian's chromium for the browser tests (apt-get)")
    run([*prefix, "apt-get", "update", "-q"], "apt-get update (Debian's package lists)", env=env)
    run(
        [*prefix, "apt-get", "install", "-y", "-q", "--no-install-recommends", *CHROMIUM_PACKAGES],
        f"apt-get install {' '.join(CHROMIUM_PACKAGES)}",
        env=env,
    )
    found = find_chromium()
    if not found:
        raise SetupError(
            f"apt-get installed {CHROMIUM_PACKAGE} but there is no `chromium` on PATH nor {DEBIAN_CHROMIUM}"
        )
    version = subprocess.run([found, "--version"], capture_output=True, text=True)
    if version.returncode != 0:
        raise SetupError(f"{found} --version failed (exit {version.returncode}): {version.stderr.strip()[-500:]}")
    log(f"{version.stdout.strip()} at {found}")
    return found
