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
