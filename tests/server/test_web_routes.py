"""The pack's HTTP route for the web panels: GET /loom/lora_info?name=... on the real server."""

import json
import shutil
import urllib.error
import urllib.parse
import uuid

import pytest
from comfy_env import MODELS

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
            "other_key": "not returned",
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
    assert isinstance(body["trigger_words"], list)
    assert isinstance(body["training"], list) and isinstance(body["metadata"], dict)
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
    assert "other_key" not in metadata  # only ss_*, modelspec.*, loom_*
    assert body["metadata_truncated"] == ["ss_tag_frequency"]
    assert len(metadata["ss_tag_frequency"]) == 4000 and metadata["ss_tag_frequency"].endswith("\u2026")
    assert HTML in body["trigger_words"]
    assert ["title", "<b>bold</b> & co"] in body["training"]


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
