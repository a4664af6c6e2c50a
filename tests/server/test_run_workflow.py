"""scripts/run_workflow.py as users run it: a subprocess against the real test server."""

import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import run_workflow
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "run_workflow.py"
EXAMPLES = REPO / "example_workflows"
# Seeds no other server test uses, so the sampler really runs (and reports progress) instead of coming from cache.
SEED = 48151


def run_script(server, *args, timeout=300, block_websocket=False):
    cmd = [sys.executable, str(SCRIPT), *map(str, args), "--server", server.url]
    if block_websocket:  # as if websocket-client were not installed
        code = "import runpy, sys; sys.modules['websocket'] = None; sys.argv = sys.argv[1:]; "
        code += "runpy.run_path(sys.argv[0], run_name='__main__')"
        cmd = [sys.executable, "-c", code, *cmd[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    return proc.returncode, proc.stdout, proc.stderr


def pngs(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.png"))


def test_runs_a_ui_workflow_follows_progress_and_downloads_the_image(server, tmp_path):
    out, api = tmp_path / "out", tmp_path / "stack.api.json"
    rc, stdout, stderr = run_script(
        server, EXAMPLES / "lora_stack_sd15.json", "--out", out, "--set", f"KSampler.seed={SEED}", "--api-out", api
    )
    assert rc == 0, stdout + stderr
    assert "node 6 KSampler: seed = 48151" in stdout  # the override, parsed as JSON (an int)
    assert "node 2 LoomLoraStack" in stdout and "node 6 KSampler" in stdout  # one line per node start
    assert "4/4 100%" in stdout  # the sampler's progress bar
    images = pngs(out)
    assert len(images) == 1 and str(images[0]) in stdout
    with Image.open(images[0]) as img:
        assert img.size == (64, 64)
    prompt = json.loads(api.read_text())
    assert prompt["6"]["inputs"]["seed"] == SEED and prompt["2"]["class_type"] == "LoomLoraStack"


def test_api_out_is_a_prompt_the_server_accepts(server, tmp_path):
    api = tmp_path / "schedule.api.json"
    rc, stdout, stderr = run_script(
        server, EXAMPLES / "schedule_one_lora_sd15.json", "--api-out", api, "--no-run", "--set", "KSampler.steps=2"
    )
    assert rc == 0, stdout + stderr
    prompt = json.loads(api.read_text())
    assert {n["class_type"] for n in prompt.values()} >= {"LoomScheduleLora", "LoomLoraSchedule", "LoomLoraStack"}
    assert prompt["11"]["inputs"]["steps"] == 2
    # What the README's curl line posts: {"prompt": <file>}
    result = server.run_prompt(prompt, timeout=300)
    assert result["images"]
    # The API file runs through the script too.
    rc, stdout, stderr = run_script(server, api, "--out", tmp_path / "out")
    assert rc == 0, stdout + stderr
    assert pngs(tmp_path / "out")


def test_validation_error_exits_2_naming_the_node(server, tmp_path):
    rows = json.dumps([{"name": "does-not-exist.safetensors", "model": 0.5}])
    rc, stdout, stderr = run_script(
        server, EXAMPLES / "lora_stack_sd15.json", "--out", tmp_path, "--set", f"2.rows={rows}"
    )
    assert rc == 2, stdout + stderr
    assert "the server refused the workflow" in stderr
    assert "node 2 LoomLoraStack" in stderr and "does-not-exist.safetensors" in stderr
    assert not pngs(tmp_path)


def test_core_validation_errors_are_listed_per_node(server, tmp_path):
    rc, stdout, stderr = run_script(
        server,
        EXAMPLES / "lora_loader_sd15.json",
        "--out",
        tmp_path,
        "--set",
        "KSampler.sampler_name=no-such-sampler",
        "--set",
        "6.steps=0",
    )
    assert rc == 2, stdout + stderr
    assert "node 6 KSampler: Value not in list: sampler_name: 'no-such-sampler'" in stderr
    assert "node 6 KSampler: Value 0 smaller than min of 1: steps" in stderr


def test_bad_set_is_refused_before_anything_is_queued(server, tmp_path):
    rc, _, stderr = run_script(server, EXAMPLES / "lora_loader_sd15.json", "--set", "2.strength=1")
    assert rc == 2 and "node 2 LoomLoraLoader has no input 'strength'" in stderr
    rc, _, stderr = run_script(server, EXAMPLES / "lora_loader_sd15.json", "--set", "99.seed=1")
    assert rc == 2 and "no node with id, title or type '99'" in stderr


def test_bad_lora_name_is_refused_at_queue_time(server, tmp_path):
    rc, stdout, stderr = run_script(
        server, EXAMPLES / "lora_loader_sd15.json", "--out", tmp_path, "--set", "2.lora_name=nope.safetensors"
    )
    assert rc == 2, stdout + stderr
    assert "lora_name: LoRA 'nope.safetensors' is not in any `loras` folder" in stderr
    assert not pngs(tmp_path)


def test_execution_error_exits_1_with_node_and_exception(server, tmp_path):
    # Step keyframes are checked against the run's length, which only the sampler knows: it fails while running.
    rc, stdout, stderr = run_script(
        server, EXAMPLES / "lora_schedule_sd15.json", "--out", tmp_path, "--set", "KSampler.steps=3"
    )
    assert rc == 1, stdout + stderr
    assert "KSampler failed: ValueError: rows: row 2 schedule: keyframe @4 is past the end of this 3-step run" in stderr
    assert not [p for p in pngs(tmp_path) if "curve" not in p.name]
    assert server.get("/system_stats")["system"]


def test_without_websocket_client_it_polls_history(server, tmp_path):
    rc, stdout, stderr = run_script(
        server,
        EXAMPLES / "lora_loader_sd15.json",
        "--out",
        tmp_path,
        "--set",
        f"KSampler.seed={SEED}",
        "--set",
        "KSampler.steps=2",
        block_websocket=True,
    )
    assert rc == 0, stdout + stderr
    assert "websocket-client is not installed" in stdout
    assert len(pngs(tmp_path)) == 1


def test_text_outputs_are_printed(server, tmp_path):
    rc, stdout, stderr = run_script(
        server, EXAMPLES / "lora_info_sd15.json", "--out", tmp_path, "--set", f"KSampler.seed={SEED}"
    )
    assert rc == 0, stdout + stderr
    assert 'text from node 3 PreviewAny "LoRA summary"' in stdout
    assert "trigger words: loomstyle" in stdout and "base model: sd15" in stdout


def test_progress_lines_carry_the_trainers_text():
    """The trainer's loss arrives as binary progress-text frames; bars every 10 % carry the latest text."""
    frame = struct.pack(">I", 3) + struct.pack(">I", 1) + b"3" + "step 6/12  loss 0.9222 ✓".encode()
    assert run_workflow.text_frame(frame) == ("3", "step 6/12  loss 0.9222 ✓")
    assert run_workflow.text_frame(struct.pack(">I", 1) + b"\x89PNG....") is None  # a preview image

    out = io.StringIO()
    progress = run_workflow.Progress({"3": {"class_type": "LoomTrainLora", "inputs": {}}}, out)
    progress.node_start("3")
    for step in range(1, 13):
        progress.step(step, 12)
        progress.progress_text(f"step {step}/12  loss {1 / step:.4f}")
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "  node 3 LoomTrainLora"
    assert lines[-1].endswith("12/12 100%  step 12/12  loss 0.0833")
    assert 6 <= len(lines) <= 13 and all("loss" in line for line in lines[1:])


@pytest.mark.parametrize(
    ("raw", "current", "spec_type", "expected"),
    [
        ("7", 42, "INT", 7),
        ("0.5", 1.0, "FLOAT", 0.5),
        ("true", False, "BOOLEAN", True),
        ("euler", "dpmpp_2m", "COMBO", "euler"),
        ('[{"name": "a.safetensors"}]', "[]", "STRING", '[{"name": "a.safetensors"}]'),  # text stays text
        ("12", "", "STRING", "12"),
        ('"quoted"', "x", "STRING", "quoted"),
        ("3", None, "INT", 3),
    ],
)
def test_set_values_are_json_except_for_text_inputs(raw, current, spec_type, expected):
    assert run_workflow.coerce(raw, current, spec_type) == expected
