"""The pack's HTTP route for the web panels: GET /loom/lora_info?name=... on the real server."""

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import uuid
from pathlib import Path

import pytest
import writer_headers as wh
from comfy_env import MODELS

REPO = Path(__file__).resolve().parents[2]

LORA = "loom-tiny-sd15-lora.safetensors"
HTML = '<img src=x onerror=alert(1)><script>alert("x")</script>'


def get_json(server, path: str) -> tuple[int, dict]:
    try:
        return 200, server.get(path)
    except urllib.error.HTTPError as e:
        assert e.headers.get_content_type() == "application/json", e.headers
        return e.code, json.loads(e.read())


def info(server, name: str, prefix: str = "") -> tuple[int, dict]:
    return get_json(server, f"{prefix}/loom/lora_info?name={urllib.parse.quote(name)}")


@pytest.fixture
def html_lora():
    """A copy of the tiny LoRA in a sub-folder of a `loras` folder, with markup in its training metadata."""
    from safetensors.torch import load_file, save_file

    folder = MODELS / "loras" / f"_loom_route_test_{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    try:
        metadata = {
            "ss_output_name": HTML,
            "ss_training_comment": f"trigger word: {HTML}",
            "ss_network_dim": "8",
            "modelspec.title": "<b>bold</b> & co",
            "loom_scope": "line 1\nline 2",
            "ss_tag_frequency": json.dumps({"set": {f"tag{i}": i for i in range(2000)}}),
            "other_key": "<a writer's own key>",
        }
        save_file(load_file(MODELS / "loras" / LORA), folder / "html.safetensors", metadata=metadata)
        yield f"{folder.name}/html.safetensors"
    finally:
        shutil.rmtree(folder)


def test_lora_info_reports_the_file(server):
    status, body = info(server, LORA)
    assert status == 200, body
    assert body["name"] == LORA
    assert body["format"] == "kohya"
    assert body["base_model"] == "sd15"
    assert body["rank"] == 8 and body["alpha"] == 4.0
    assert body["rank_alpha"] == "rank 8, alpha 4"
    assert body["modules"] == 104
    assert body["file_size"] == (MODELS / "loras" / LORA).stat().st_size
    assert body["trigger_words"] == body["header"]["trigger_words"] == ["loomstyle"]
    rows = {r["label"]: r["value"] for s in body["header"]["sections"] for r in s["rows"]}
    assert rows["title"] == "LoRA Loom tiny demo LoRA (random weights)" and rows["dim / alpha"] == "8 / 4.0"
    assert rows["loom.note"] == body["metadata"]["loom.note"] == "seeded random stand-in"  # every key, own names too
    # ComfyUI serves every custom route under /api too (the frontend calls it there).
    assert info(server, LORA, prefix="/api") == (200, body)


def test_lora_info_returns_metadata_as_plain_strings(server, html_lora):
    status, body = info(server, html_lora)
    assert status == 200, body
    assert body["name"] == html_lora  # sub-folders are part of the name, as ComfyUI lists them
    metadata = body["metadata"]
    assert metadata["ss_output_name"] == HTML  # untouched text: escaping is the renderer's job (textContent)
    assert metadata["modelspec.title"] == "<b>bold</b> & co"
    assert metadata["loom_scope"] == "line 1\nline 2"
    assert metadata["other_key"] == "<a writer's own key>"  # every key, whoever wrote it
    assert body["metadata_truncated"] == ["ss_tag_frequency"]
    assert len(metadata["ss_tag_frequency"]) == 4000 and metadata["ss_tag_frequency"].endswith("\u2026")
    assert HTML in body["trigger_words"]
    rows = [(r["label"], r["value"]) for s in body["header"]["sections"] for r in s["rows"]]
    assert ("title", "<b>bold</b> & co") in rows and ("other_key", "<a writer's own key>") in rows
    assert ("output name", HTML) in rows


def test_lora_info_header_is_the_view_inspect_prints(server):
    """A diffusers-PEFT file (``lora_adapter_metadata`` for two components): the route's header view is, field for
    field, what ``python -m lora_math inspect --json`` prints for the same file (and Loom LoRA Info as text)."""
    folder = MODELS / "loras" / f"_loom_route_test_{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    try:
        wh.write_peft_sd15(folder / "peft.safetensors")
        status, body = info(server, f"{folder.name}/peft.safetensors")
        cli = subprocess.run(
            [sys.executable, "-m", "lora_math", "inspect", str(folder / "peft.safetensors"), "--json"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(folder)
    assert status == 200, body
    assert cli.returncode == 0, cli.stderr
    assert body["header"] == json.loads(cli.stdout)["header"]
    assert body["format"] == "diffusers-peft" and body["header"]["writer"] == "diffusers / PEFT"
    sections = {s["title"]: {r["label"]: r["value"] for r in s["rows"]} for s in body["header"]["sections"]}
    assert sections["adapter config (unet)"]["lora_alpha"] == "8.0"
    assert sections["adapter config (text_encoder)"] == {
        "r": "4",
        "lora_alpha": "2.0",
        "target_modules": "q_proj, v_proj",
    }
    assert body["trigger_words"] == [wh.PEFT_TRIGGER]
    assert json.loads(body["metadata"]["lora_adapter_metadata"])["unet.r"] == 4  # the raw header beside the view


@pytest.mark.parametrize("name", ["../x", "../../models/loras/" + LORA, "a/../../x.safetensors", "/etc/passwd", ""])
def test_lora_info_refuses_names_outside_the_loras_folders(server, name):
    status, body = info(server, name)
    assert status == 400, body
    assert body["error"].startswith("name: "), body


def test_lora_info_without_name_is_400(server):
    status, body = get_json(server, "/loom/lora_info")
    assert status == 400 and body["error"].startswith("name: missing"), body


def test_lora_info_for_a_missing_file_is_404(server):
    status, body = info(server, "no-such-lora.safetensors")
    assert status == 404, body
    assert body["error"].startswith("name: ") and "no-such-lora.safetensors" in body["error"], body


def test_lora_info_for_a_file_that_is_not_a_lora_is_422(server):
    folder = MODELS / "loras" / f"_loom_route_test_{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    try:
        (folder / "broken.safetensors").write_bytes(b"\x00" * 16)
        status, body = info(server, f"{folder.name}/broken.safetensors")
    finally:
        shutil.rmtree(folder)
    assert status == 422, body
    assert body["error"].startswith("name: "), body
