"""Where the runtime lives and how dev tooling (tests, bench, demo) gets a real ComfyUI in-process.

Never put the repo root on sys.path in a process that imports ComfyUI: ComfyUI has a top-level
module named `nodes`, and the pack's own `nodes/` folder would shadow it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNTIME = REPO / ".runtime"
MODELS = RUNTIME / "models"
INPUT = RUNTIME / "input"  # ComfyUI's input directory for the demo and tests (training images)
PACK_MODULE = "lora_loom"

# Model folders the generated models live in, by ComfyUI folder name.
MODEL_FOLDERS = {"checkpoints": "checkpoints", "diffusion_models": "unet", "loras": "loras"}


class RuntimeMissing(RuntimeError):
    pass


def runtime() -> str:
    """Which ComfyUI this process works with: ``pinned`` (0.3.75, or COMFYUI_DIR) or ``upstream`` (LOOM_RUNTIME)."""
    name = os.environ.get("LOOM_RUNTIME", "pinned").strip() or "pinned"
    if name not in ("pinned", "upstream"):
        raise RuntimeMissing(f"LOOM_RUNTIME={name} is not a runtime: use pinned or upstream")
    return name


def comfyui_dir() -> Path:
    upstream = runtime() == "upstream"
    env = os.environ.get("COMFYUI_UPSTREAM_DIR" if upstream else "COMFYUI_DIR", "").strip()
    stamp = RUNTIME / ("comfyui-upstream.json" if upstream else "comfyui.json")
    if env:
        path = Path(env).expanduser().resolve()
    else:
        try:
            path = Path(json.loads(stamp.read_text())["comfyui_dir"])
        except (OSError, ValueError, KeyError) as e:
            what = "`make setup-upstream`" if upstream else "`make setup` (or `make test`)"
            raise RuntimeMissing(f"no {runtime()} ComfyUI runtime set up: run {what} first") from e
    if not (path / "comfy").is_dir():
        raise RuntimeMissing(f"{path} is not a ComfyUI tree: run `make setup`, or fix COMFYUI_DIR")
    return path


def comfyui_version(path: Path | None = None) -> str:
    """The tree's ``__version__`` (comfyui_version.py), without importing ComfyUI."""
    try:
        text = ((path or comfyui_dir()) / "comfyui_version.py").read_text()
    except OSError:
        return "unknown"
    for line in text.splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return "unknown"


def describe_runtime() -> str:
    """One line naming the ComfyUI a tier runs on (the test logs start with it)."""
    path = comfyui_dir()
    return f"ComfyUI {comfyui_version(path)} ({runtime()}) at {path}, python {sys.executable}"


def import_comfy(cpu: bool = True) -> Path:
    """Make `comfy.*` importable in this process; on CPU unless told otherwise.

    ComfyUI reads no command line when imported as a library, so the device choice must be set on
    its args object before comfy.model_management is first imported.
    """
    path = comfyui_dir()
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    import comfy.model_management  # noqa: F401

    return path


def register_model_folders() -> None:
    import folder_paths

    for folder, sub in MODEL_FOLDERS.items():
        folder_paths.add_model_folder_path(folder, str(MODELS / sub))


def load_pack():
    """Import the pack the way ComfyUI does (as a package from its folder), under one fixed name."""
    if PACK_MODULE in sys.modules:
        return sys.modules[PACK_MODULE]
    spec = importlib.util.spec_from_file_location(
        PACK_MODULE, REPO / "__init__.py", submodule_search_locations=[str(REPO)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_MODULE] = module
    spec.loader.exec_module(module)
    importlib.import_module(f"{PACK_MODULE}.nodes")  # what comfy_entrypoint loads
    return module


def extra_model_paths_yaml(path: Path, extra: dict[str, list[str]] | None = None) -> Path:
    """Write an extra_model_paths.yaml that adds the generated models (and any user folders)."""
    lines = ["loom_models:", f"  base_path: {MODELS}"]
    lines += [f"  {folder}: {sub}" for folder, sub in MODEL_FOLDERS.items()]
    for i, (folder_name, dirs) in enumerate(sorted((extra or {}).items())):
        lines += [f"user_{i}:", f"  {folder_name}: |"]
        lines += [f"    {d}" for d in dirs]
    path.write_text("\n".join(lines) + "\n")
    return path


def flux_dit_config(config: dict) -> dict:
    """FLUX.1 DiT keyword arguments for the ComfyUI imported here. Upstream (0.2x+) added ``FluxParams`` fields
    that its detection fills in for FLUX.1 (``txt_ids_dims=[]``); 0.3.75 refuses them. Call after import_comfy."""
    import comfy.ldm.flux.model as flux

    out = dict(config)
    if "txt_ids_dims" in getattr(flux.FluxParams, "__dataclass_fields__", {}):
        out.setdefault("txt_ids_dims", [])
    return out
