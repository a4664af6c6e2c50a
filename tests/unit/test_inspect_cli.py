"""``python -m lora_math inspect``: the JSON report, exit codes, sidecar configs, and no ComfyUI import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lora_math.__main__ import main

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


from fixtures_path import FIXTURES, needs_fixtures  # noqa: E402


def real(name: str) -> Path:
    return FIXTURES / "real_loras" / f"{name}.safetensors"


def run_inspect(capsys, *args: str) -> tuple[int, dict | None, str]:
    """Run the CLI in-process; returns (exit code, parsed stdout JSON or None, stderr)."""
    code = main(["inspect", *args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


@needs_fixtures
def test_module_entry_point_reports_lokr_and_imports_no_comfy(tmp_path):
    """The real ``python -m`` entry point, with comfy / folder_paths / server made unimportable."""
    blocker = tmp_path / "blocked"
    for name in ("comfy", "folder_paths", "server"):
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(f"raise ImportError('lora_math must not import {name}')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(blocker)])}
    proc = subprocess.run(
        [sys.executable, "-m", "lora_math", "inspect", str(real("smart_falcon_4_lokr")), "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1  # --json: one compact line
    report = json.loads(proc.stdout)
    assert report["format"] == "lycoris-lokr" and report["base_model"] == "sd15"
    assert report["rank"] == 4 and report["alpha"] == 4.0
    assert report["targets"] == report["matched"] == 350 and report["unmatched"] == [] and report["coverage"] == 1.0
    meta = report["metadata"]
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert meta["ss_tag_frequency"]["16_smf girl"]["hair bow"] == 43  # JSON header values are decoded


@needs_fixtures
def test_refused_file_exits_2_with_one_line(capsys):
    code, report, err = run_inspect(capsys, str(real("analog_svd_rank4")))
    assert code == 2 and report is None
    assert len(err.strip().splitlines()) == 1 and "LoraFormatError" in err and "cloneofsimo" in err


@needs_fixtures
@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("catundchat_sd15_weapons", "diffusers-attn-processor"),
        ("diffusers_pr8283_sd15_pokemon", "diffusers-lora-layer"),
    ],
)
def test_diffusers_files_full_coverage(capsys, name, fmt):
    code, report, _ = run_inspect(capsys, str(real(name)), "--arch", "auto")
    assert code == 0
    assert (report["format"], report["base_model"], report["arch"]) == (fmt, "sd15", "sd15")
    assert (report["rank"], report["alpha"], report["targets"], report["matched"]) == (4, None, 128, 128)
    assert report["coverage"] == 1.0 and report["metadata"] == {"format": "pt"}


@needs_fixtures
def test_wrong_arch_is_reported_not_refused(capsys):
    code, report, _ = run_inspect(capsys, str(real("smart_falcon_4_lokr")), "--arch", "sdxl")
    assert code == 0 and report["arch"] == "sdxl" and report["base_model"] == "sd15"
    assert 0 < report["matched"] < report["targets"] and report["coverage"] < 1.0
    assert set(report["mismatched"]) <= set(report["unmatched"])
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k" in report["mismatched"]


def test_peft_file_with_sidecar_and_mixed_ranks(tmp_path, capsys):
    gen = torch.Generator().manual_seed(3)
    sd = {
        "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(4, 3072, generator=gen),
        "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(3072, 4, generator=gen),
        "transformer.single_transformer_blocks.0.proj_mlp.lora_A.weight": torch.randn(8, 3072, generator=gen),
        "transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight": torch.randn(12288, 8, generator=gen),
        "transformer.not_a_flux_layer.lora_A.weight": torch.randn(4, 8, generator=gen),
        "transformer.not_a_flux_layer.lora_B.weight": torch.randn(8, 4, generator=gen),
    }
    path = tmp_path / "adapter_model.safetensors"
    save_file(sd, str(path))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 16, "rank_pattern": {}}))
    code, report, _ = run_inspect(capsys, str(path), "--json")
    assert code == 0
    assert report["format"] == "flux-diffusers" and report["base_model"] == "flux"
    assert report["rank"] == [4, 8] and report["alpha"] == 16.0  # from the sidecar, not alpha = r
    assert report["targets"] == 3 and report["matched"] == 2
    assert report["unmatched"] == ["transformer.not_a_flux_layer"] and report["coverage"] == round(2 / 3, 4)


def test_unknown_base_model_has_no_coverage(tmp_path, capsys):
    path = tmp_path / "mystery.safetensors"
    save_file({"lora_unet_conv_in.lora_down.weight": torch.zeros(2, 4, 3, 3),
               "lora_unet_conv_in.lora_up.weight": torch.zeros(320, 2, 1, 1)}, str(path))  # fmt: skip
    code, report, _ = run_inspect(capsys, str(path))
    assert code == 0 and report["base_model"] == "unknown"
    assert report["matched"] is None and report["coverage"] is None and "--arch" in report["note"]
    code, report, _ = run_inspect(capsys, str(path), "--arch", "sd15")
    assert code == 0 and report["matched"] == 1 and report["coverage"] == 1.0


@pytest.mark.parametrize(
    ("filename", "content", "error"),
    [
        ("model.ckpt", b"PK\x03\x04 anything", "LoraFileError"),
        ("broken.safetensors", b"\xff\xff\xff\xff\xff\xff\xff\x7f{}", "LoraFileError"),
    ],
)
def test_unreadable_files_exit_2(tmp_path, capsys, filename, content, error):
    path = tmp_path / filename
    path.write_bytes(content)
    code, report, err = run_inspect(capsys, str(path))
    assert code == 2 and report is None and err.count("\n") == 1 and error in err and filename in err


def test_missing_file_exits_2(tmp_path, capsys):
    code, report, err = run_inspect(capsys, str(tmp_path / "nope.safetensors"))
    assert code == 2 and report is None and "nope.safetensors" in err and err.count("\n") == 1


def _run(path, *args):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "lora_math", "inspect", str(path), "--json", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
    )


def test_near_miss_part_suffix_is_refused_saying_what_is_off(tmp_path):
    from safetensors.torch import save_file

    sd = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k_lora_down.weight": torch.zeros(4, 320),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k_lora_up.weight": torch.zeros(320, 4),
    }
    path = tmp_path / "joined.safetensors"
    save_file(sd, str(path))
    proc = _run(path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "joined to the module name with '_' instead of '.'" in proc.stderr
    assert "'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k.lora_down.weight'" in proc.stderr


def test_near_miss_doubled_prefix_is_refused_naming_the_fix(tmp_path):
    from safetensors.torch import save_file

    sd = {}
    for path in ("attn1_to_k", "attn1_to_q", "attn2_to_k"):
        name = f"lora_unet_unet_down_blocks_0_attentions_0_transformer_blocks_0_{path}"
        sd[f"{name}.lora_down.weight"] = torch.zeros(4, 768 if path == "attn2_to_k" else 320)
        sd[f"{name}.lora_up.weight"] = torch.zeros(320, 4)
        sd[f"{name}.alpha"] = torch.tensor(4.0)
    path = tmp_path / "doubled.safetensors"
    save_file(sd, str(path))
    proc = _run(path)
    assert proc.returncode == 2, proc.stdout
    assert "recognised 3 kohya modules" in proc.stderr and "the doubled prefix removed" in proc.stderr
    assert "'lora_unet_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k' should read " in proc.stderr


def test_header_metadata_is_the_shared_view_in_both_outputs(tmp_path, capsys):
    """A diffusers-PEFT file: its ``lora_adapter_metadata`` per component, the writer, the trigger phrase; the same
    view (``report.header_view``) in the indented and the --json output, beside the raw header decoded."""
    import writer_headers as wh

    from lora_math.report import header_view

    path = tmp_path / "pytorch_lora_weights.safetensors"
    wh.write_peft_sd15(path)
    code, report, _ = run_inspect(capsys, str(path))
    assert code == 0 and (report["format"], report["alpha"]) == ("diffusers-peft", [2.0, 8.0])
    assert report["header"] == header_view(wh.PEFT_FILE_HEADER).to_json()
    assert report["header"]["writer"] == "diffusers / PEFT" and report["trigger_words"] == [wh.PEFT_TRIGGER]
    titles = [s["title"] for s in report["header"]["sections"]]
    assert titles == ["about", "adapter config (text_encoder)", "adapter config (unet)", "other keys"]
    assert report["metadata"]["lora_adapter_metadata"]["unet.lora_alpha"] == 8.0  # decoded, nothing cut
    code, compact, _ = run_inspect(capsys, str(path), "--json")
    assert code == 0 and compact == report
