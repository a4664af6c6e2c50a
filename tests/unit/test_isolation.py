"""lora_math and the pack's root module must import without ComfyUI."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BLOCKER = """
import sys, importlib.abc
BLOCKED = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "server", "execution"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked import of {name}")
sys.meta_path.insert(0, Block())
"""


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_lora_math_and_all_submodules_import_with_comfyui_blocked():
    code = (
        "import pkgutil, importlib, lora_math\n"
        "mods = [m.name for m in pkgutil.walk_packages(lora_math.__path__, 'lora_math.')]\n"
        "[importlib.import_module(m) for m in mods]\n"
        "assert not any(k.split('.')[0] in BLOCKED for k in sys.modules), 'a ComfyUI module was imported'\n"
        "print(len(mods))"
    )
    proc = run_blocked(code)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip()) >= 3  # adapters, io, formats at least


def test_blocker_really_blocks():
    proc = run_blocked("import folder_paths")
    assert proc.returncode != 0 and "blocked import of folder_paths" in proc.stderr


def test_pack_root_imports_without_comfyui():
    # Import the repo's root package the way ComfyUI does: it must not touch ComfyUI at import time.
    code = (
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('lora_loom', r'{REPO / '__init__.py'}', "
        f"submodule_search_locations=[r'{REPO}'])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['lora_loom'] = m; spec.loader.exec_module(m)\n"
        "assert m.WEB_DIRECTORY == './web' and callable(m.comfy_entrypoint)\n"
    )
    proc = run_blocked(code)
    assert proc.returncode == 0, proc.stderr
