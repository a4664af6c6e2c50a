"""The pack inside a real ComfyUI server: loads cleanly, lists its nodes, runs the example workflows."""

import json
from pathlib import Path

import pytest
from comfy_env import comfyui_dir
from PIL import Image
from safetensors import safe_open
from workflow_api import ui_to_api

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))


def loom_node_ids() -> set[str]:
    """Node ids declared in the pack's source (schema node_id="Loom...")."""
    import re

    ids = set()
    for path in (REPO / "nodes").rglob("*.py"):
        ids |= set(re.findall(r'node_id="(Loom\w+)"', path.read_text()))
    return ids


def test_pack_loaded_without_import_errors(server, object_info):
    assert server.import_failures() == []
    # Start-up only: later tests make prompts fail on purpose, and their tracebacks name the pack.
    log = server.log_text().split("Starting server", 1)[0]
    assert "lora-loom" in log  # ComfyUI lists the custom node folder and its import time
    # ComfyUI's own optional audio nodes may log tracebacks (no torchaudio); none may involve the pack.
    assert not [tb for tb in tracebacks(log) if "lora-loom" in tb or "lora_loom" in tb]


def tracebacks(log: str) -> list[str]:
    """Each traceback in a log: its header, indented frame lines and the exception line."""
    blocks, current = [], None
    for line in log.splitlines():
        if line.startswith("Traceback (most recent call last)"):
            current = [line]
        elif current is not None:
            current.append(line)
            if not line.startswith(" "):
                blocks.append("\n".join(current))
                current = None
    return blocks


def test_every_loom_node_is_served(object_info):
    ids = loom_node_ids()
    assert ids, "no Loom node ids found in nodes/"
    missing = ids - set(object_info)
    assert not missing
    for node_id in ids:
        info = object_info[node_id]
        assert info["category"].startswith("loom/")
        assert info["display_name"].startswith("Loom ")


def test_web_directory_is_served(server):
    listing = server.get("/extensions")
    assert any("lora-loom" in path or "lora_loom" in path for path in listing), listing


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflow_runs(server, object_info, path):
    workflow = json.loads(path.read_text())
    prompt = ui_to_api(workflow, object_info)
    assert any(n["class_type"].startswith("Loom") for n in prompt.values()), "examples must use a Loom node"
    result = server.run_prompt(prompt, timeout=600)
    assert result["images"], f"{path.name} produced no image"
    for img_path in result["images"]:
        with Image.open(img_path) as img:
            assert img.size[0] > 0 and img.getextrema() != ((0, 0), (0, 0), (0, 0))
    # The sampler reported per-step progress over the websocket.
    assert any(value == maximum for _, value, maximum in result["progress"])
    for node in prompt.values():  # a trained LoRA was written where every loader finds it, with its resume state
        if node["class_type"] == "LoomSaveLora":
            name = f"{node['inputs']['filename_prefix']}.safetensors"
            assert name in server.get("/models/loras"), name  # the first `loras` folder: ComfyUI's own
            saved = comfyui_dir() / "models" / "loras" / name
            with safe_open(str(saved), "pt") as f:
                operation = (f.metadata() or {}).get("loom_operation", "train")
            # trained LoRAs keep their resume state beside them; merges, resizes, extractions have none
            assert saved.with_suffix(".loom-state").is_file() == (operation == "train"), (saved, operation)


def test_bad_lora_name_is_rejected_and_server_keeps_serving(server, object_info):
    workflow = json.loads((REPO / "example_workflows" / "lora_loader_sd15.json").read_text())
    prompt = ui_to_api(workflow, object_info)
    loader = next(n for n in prompt.values() if n["class_type"] == "LoomLoraLoader")
    loader["inputs"]["lora_name"] = "does-not-exist.safetensors"
    with pytest.raises(Exception, match="lora_name"):
        server.run_prompt(prompt, timeout=120)
    assert server.get("/system_stats")["system"]  # still serving


def test_bad_schedule_is_rejected_at_validation_naming_the_row(server, object_info):
    path = next(p for p in WORKFLOWS if p.stem == "lora_schedule_sd15")
    prompt = ui_to_api(json.loads(path.read_text()), object_info)
    stack = next(n for n in prompt.values() if n["class_type"] == "LoomLoraStack")
    rows = json.loads(stack["inputs"]["rows"])
    rows[1]["schedule"] = "0:1, 0.6:0.5, 0.4:1"  # out of order
    stack["inputs"]["rows"] = json.dumps(rows)
    # ComfyUI still runs the outputs that validate (the curve preview): keep only the image that needs the stack
    for node_id in [i for i, n in prompt.items() if n["class_type"] == "SaveImage" and "curve" in str(n["inputs"])]:
        del prompt[node_id]
    # /prompt refuses it before queueing: the message names the row, the entry and its position
    with pytest.raises(Exception, match=r"rows: row 2 schedule: entry 3 '0.4:1' \(at character 15\)"):
        server.run_prompt(prompt, timeout=120)
    assert server.get("/system_stats")["system"]
