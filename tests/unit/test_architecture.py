"""The never-arrows of ``docs/architecture.md``: what must not import what, read from the source (no imports run).

- ``lora_math`` never imports ``nodes`` or the pack root (and, ``test_isolation``, never ComfyUI);
- inside ``lora_math`` every package sits on a floor and imports only from its own floor or lower ones;
- ``nodes/comfy_bridge`` imports only ``lora_math`` and itself (the nodes ask it; it never asks them);
- ``nodes/images`` and ``nodes/files`` import only ``lora_math`` and themselves;
- no feature package imports ``nodes/__init__`` (the node list) or another's private names.
"""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LORA_MATH = REPO / "lora_math"
NODES = REPO / "nodes"

# lora_math's floors (docs/architecture.md): a package imports from its floor or below, never above.
FLOORS = {
    "errors": 0, "entries": 0, "lru": 0,
    "adapters": 1,
    "formats": 2,
    "names": 3,
    "weights": 4, "lowrank": 4, "schedule": 4, "save": 4, "stack": 4, "report": 4,
    "train": 5,
    "__main__": 6, "__init__": 6,
}  # fmt: skip


def _relative_targets(path: Path, top: Path) -> list[tuple[int, list[str], list[str]]]:
    """(line, target path under the pack root, imported names) of each relative import in ``path``."""
    package = list(path.relative_to(REPO).parent.parts)
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = package[: len(package) - (node.level - 1)] if node.level - 1 <= len(package) else ["<outside>"]
            target = [*base, *(node.module.split(".") if node.module else [])]
            out.append((node.lineno, target, [a.name for a in node.names]))
    return out


def _unit(parts: list[str], names: list[str]) -> list[str]:
    """The lora_math units a ``from ... import`` names: ``lora_math.X…`` -> X; ``from .. import X, Y`` -> X, Y."""
    return [parts[1].removesuffix(".py")] if len(parts) > 1 else names


def _floor_of(path: Path) -> tuple[str, int]:
    parts = path.relative_to(LORA_MATH).parts
    unit = parts[0].removesuffix(".py")
    return unit, FLOORS[unit]


def test_every_lora_math_unit_has_a_floor():
    units = {
        p.name.removesuffix(".py") for p in LORA_MATH.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()
    }
    assert units == set(FLOORS), (
        f"give each lora_math package a floor in FLOORS and docs/architecture.md: {units ^ set(FLOORS)}"
    )


def test_lora_math_never_imports_nodes_or_the_pack_root():
    offenders = []
    for path in LORA_MATH.rglob("*.py"):
        for line, target, _ in _relative_targets(path, LORA_MATH):
            if not target or target[0] != "lora_math":
                offenders.append(f"{path.relative_to(REPO)}:{line} imports {'.'.join(target) or 'the pack root'}")
    assert not offenders, offenders


def test_lora_math_imports_only_down_the_floors():
    offenders = []
    for path in LORA_MATH.rglob("*.py"):
        unit, floor = _floor_of(path)
        for line, target, names in _relative_targets(path, LORA_MATH):
            for other in _unit(target, names):
                if other in FLOORS and other != unit and FLOORS[other] > floor:
                    offenders.append(f"{path.relative_to(REPO)}:{line}: {unit} (floor {floor}) imports {other} "
                                     f"(floor {FLOORS[other]})")  # fmt: skip
    assert not offenders, offenders


def _nodes_imports(package: str) -> dict[str, set[str]]:
    """Per file of ``nodes/<package>``: the top-level things it imports from the pack (``lora_math``, ``nodes.X``)."""
    found = {}
    for path in (NODES / package).rglob("*.py"):
        targets = set()
        for _, target, names in _relative_targets(path, NODES):
            if target[:1] == ["nodes"]:
                targets |= {f"nodes.{n}" for n in names} if len(target) == 1 else {f"nodes.{target[1]}"}
            else:
                targets.add(target[0])
        found[str(path.relative_to(REPO))] = targets
    return found


def test_the_bridge_imports_only_lora_math_and_itself():
    for path, targets in _nodes_imports("comfy_bridge").items():
        assert targets <= {"lora_math", "nodes.comfy_bridge"}, (path, targets)


def test_images_and_files_import_only_lora_math_and_themselves():
    for package in ("images", "files"):
        for path, targets in _nodes_imports(package).items():
            assert targets <= {"lora_math", f"nodes.{package}"}, (path, targets)


def test_no_feature_package_imports_the_node_list():
    for package in ("comfy_bridge", "files", "images", "load", "schedule", "tools", "train"):
        for path, targets in _nodes_imports(package).items():
            assert "nodes.__init__" not in targets and "nodes.NODES" not in targets, (path, targets)


def test_the_checks_see_real_imports():
    # Not vacuous: the walker finds the arrows that do exist.
    assert "lora_math" in _nodes_imports("comfy_bridge")["nodes/comfy_bridge/apply.py"]
    assert {"nodes.comfy_bridge", "nodes.files"} <= _nodes_imports("load")["nodes/load/stack.py"]
    targets = _relative_targets(LORA_MATH / "train" / "loop.py", LORA_MATH)
    assert any(_unit(t, n) == ["save"] for _, t, n in targets)


def _packages(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if (p / "__init__.py").exists()}


def test_readme_layout_and_the_architecture_page_match_the_tree():
    import re

    readme = (REPO / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    expanded = set()
    for cell in re.findall(r"^\| ([^|]+) \|", layout, re.M):
        spans = re.findall(r"`([^`]+)`", cell)  # `nodes/load/`, `schedule/`: siblings of the first
        base = Path(spans[0].rstrip("/")).parent if spans else None
        for i, span in enumerate(spans):
            path = span.rstrip("/")
            path = str(base / path) if i and "/" not in path else path
            m = re.fullmatch(r"(.*)\{(.*)\}", path)  # tests/{unit,comfy,…}
            expanded |= {m.group(1) + x for x in m.group(2).split(",")} if m else {path}
    missing = sorted(p for p in expanded if not (REPO / p).exists())
    assert not missing, f"README's layout names paths that do not exist: {missing}"
    page = (REPO / "docs" / "architecture.md").read_text()
    for root in ("lora_math", "nodes"):
        for package in _packages(REPO / root):
            assert f"`{root}/{package}/`" in page, f"docs/architecture.md does not place {root}/{package}/"
            in_readme = f"`{root}/{package}/`" in layout or re.search(rf"`{package}/`", layout)
            assert in_readme, f"README's layout does not name {root}/{package}/"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_circles_in_the_pack():
    """Not even through an import inside a function (the usual way a circle hides)."""
    modules = {_module_name(p): p for root in (LORA_MATH, NODES) for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for _, target, names in _relative_targets(path, REPO):
            base = ".".join(target)
            for candidate in [f"{base}.{n}" for n in names] + [base]:
                if candidate in modules and candidate != name:
                    edges.add(candidate)
                    break
        graph[name] = edges
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            raise AssertionError("import circle: " + " -> ".join([*trail[trail.index(name) :], name]))
        if name in done:
            return
        for other in sorted(graph[name]):
            if not other.endswith(".__init__") and not name.startswith(other + "."):  # a package's own __init__
                visit(other, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
