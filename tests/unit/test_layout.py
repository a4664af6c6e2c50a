"""The pack's metadata and layout, as ComfyUI's registry and the design card expect them."""

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_pyproject_has_registry_fields():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    project, comfy = data["project"], data["tool"]["comfy"]
    assert project["name"] == "lora-loom"
    assert project["license"] == "GPL-3.0-or-later"
    assert {"torch", "safetensors", "numpy", "pillow"} <= {re.split(r"[<>=~ ]", d)[0] for d in project["dependencies"]}
    assert comfy["DisplayName"] == "LoRA Loom" and comfy["PublisherId"] and comfy["requires-comfyui"]


def test_registration_is_v3_only():
    text = (REPO / "__init__.py").read_text()
    assert "comfy_entrypoint" in text and "NODE_CLASS_MAPPINGS" not in text


def test_ci_runs_exactly_the_readme_test_command():
    ci = [ln for ln in (REPO / ".ci" / "run").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert ci[-1].strip() in ("make test", "exec make test")
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


# ComfyUI's internals a pack can reach into: only the boundary package (nodes/comfy_bridge/) may import them.
INTERNALS = ("comfy.model_patcher", "comfy.patcher_extension", "comfy.weight_adapter", "comfy.lora", "comfy.hooks")
BRIDGE = REPO / "nodes" / "comfy_bridge"


def _imports(path: Path) -> set[str]:
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_only_the_bridge_package_imports_comfyui_internals():
    product = [p for p in [*REPO.glob("*.py"), *(REPO / "nodes").rglob("*.py"), *(REPO / "lora_math").rglob("*.py")]]
    offenders = {}
    for path in product:
        if BRIDGE in path.parents:
            continue
        hits = sorted(m for m in _imports(path) if any(m == i or m.startswith(i + ".") for i in INTERNALS))
        if hits:
            offenders[str(path.relative_to(REPO))] = hits
    assert not offenders, f"only nodes/comfy_bridge/ may import ComfyUI internals; found: {offenders}"
    # and the bridge really is where they are used (the check would pass vacuously on a renamed package)
    used = set().union(*(_imports(p) for p in BRIDGE.glob("*.py")))
    assert {"comfy.lora", "comfy.patcher_extension", "comfy.weight_adapter.base"} <= used


def test_module_forwards_are_replaced_in_one_place():
    """``module.forward = …`` (and hook registration) only in the bridge's module_hooks."""
    pattern = re.compile(r"\.forward\s*=(?!=)|register_forward(_pre)?_hook")
    sites = {}
    for path in [*(REPO / "nodes").rglob("*.py"), *(REPO / "lora_math").rglob("*.py")]:
        lines = [i + 1 for i, line in enumerate(path.read_text().splitlines()) if pattern.search(line)]
        if lines:
            sites[str(path.relative_to(REPO))] = lines
    assert set(sites) == {"nodes/comfy_bridge/module_hooks.py"}, sites


def test_model_patcher_writes_live_in_the_bridge():
    writes = re.compile(
        r"\.(add_patches|set_attachments|set_injections|add_wrapper(_with_key)?|add_callback(_with_key)?|"
        r"add_object_patch|add_weight_wrapper|set_model_\w+)\(|\.patches_uuid\s*=|\.backup\["
    )
    sites = {}
    for path in [*(REPO / "nodes").rglob("*.py"), *(REPO / "lora_math").rglob("*.py")]:
        if BRIDGE in path.parents:
            continue
        lines = [i + 1 for i, line in enumerate(path.read_text().splitlines()) if writes.search(line)]
        if lines:
            sites[str(path.relative_to(REPO))] = lines
    assert not sites, f"ModelPatcher writes outside nodes/comfy_bridge/: {sites}"


# Product code: what a user runs (the pack, its web UI, the demo and setup scripts, the benchmarks).
PRODUCT_GLOBS = ("*.py", "nodes/**/*.py", "lora_math/**/*.py", "web/*.js", "scripts/*.py", "bench/*.py")
MAX_LINES = 400
MAX_EXECUTE_LINES = 30


def test_no_product_file_is_over_400_lines():
    long = {}
    for pattern in PRODUCT_GLOBS:
        for path in REPO.glob(pattern):
            lines = len(path.read_text().splitlines())
            if lines > MAX_LINES:
                long[str(path.relative_to(REPO))] = lines
    assert not long, f"split these by what each part does (at most {MAX_LINES} lines a file): {long}"


def test_every_node_execute_is_short():
    import ast

    found, long = 0, {}
    for path in (REPO / "nodes").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef) and node.name == "execute":
                found += 1
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_EXECUTE_LINES:
                    long[f"{path.relative_to(REPO)}:{node.lineno}"] = lines
    assert found >= 14, found  # every node of nodes.NODES has one
    assert not long, f"node execute methods over {MAX_EXECUTE_LINES} lines (move the work into helpers): {long}"
