"""lora_math.report: coverage split by part, rank/alpha, the inspect report and its header view (test_header: the view)."""

from __future__ import annotations

import json

import pytest
import torch

from lora_math.adapters import LoRA
from lora_math.formats import ParsedLoRA
from lora_math.report import coverage, file_report, header_view, rank_alpha

pytestmark = pytest.mark.unit

GEN = torch.Generator().manual_seed(5)


def lora(out: int, inp: int, r: int, alpha: float | None) -> LoRA:
    return LoRA(down=torch.randn(r, inp, generator=GEN), up=torch.randn(out, r, generator=GEN), alpha=alpha)


def test_coverage_can_leave_out_a_part():
    parsed = ParsedLoRA(
        "kohya",
        {
            "lora_unet_a": lora(4, 3, 2, 2.0),
            "lora_unet_missing": lora(4, 3, 2, 2.0),
            "lora_te_b": lora(5, 3, 2, 2.0),
        },
        {},
    )
    keys = {"diffusion_model.a.weight": (4, 3), "clip_l.transformer.b.weight": (5, 3)}
    both = coverage(parsed, keys)
    assert (both["matched"], both["targets"], both["skipped"], both["unmatched"]) == (2, 3, 0, ["lora_unet_missing"])
    unet = coverage(parsed, {"diffusion_model.a.weight": (4, 3)}, text_encoders=False)
    assert (unet["matched"], unet["targets"], unet["skipped"]) == (1, 2, 1)
    te = coverage(parsed, {"clip_l.transformer.b.weight": (5, 3)}, denoiser=False)
    assert (te["matched"], te["targets"], te["skipped"], te["coverage"]) == (1, 1, 2, 1.0)


def test_rank_alpha_lists_mixed_values():
    parsed = ParsedLoRA("kohya", {"a": lora(4, 3, 2, 2.0), "b": lora(4, 3, 4, None)}, {})
    assert rank_alpha(parsed) == ([2, 4], 2.0)


def test_file_report_carries_the_header_view_and_the_raw_header():
    metadata = {
        "modelspec.trigger_phrase": "qwe",
        "ss_network_dim": "2",
        "ss_network_alpha": "1",
        "ss_tag_frequency": json.dumps({"1_qwe": {"qwe": 3}}),
        "software": json.dumps({"name": "ai-toolkit", "version": "0.1.0"}),
    }
    parsed = ParsedLoRA("kohya", {"lora_unet_conv_in": lora(320, 40, 2, 1.0)}, metadata)  # conv_in takes 4x3x3 = 36
    report = file_report(parsed, "sd15")
    assert report["header"] == header_view(metadata).to_json()  # the view the Info node and the info panel show
    assert report["trigger_words"] == ["qwe"] and report["header"]["writer"] == "ai-toolkit 0.1.0"
    assert {"label": "dim / alpha", "value": "2 / 1", "keys": ["ss_network_dim", "ss_network_alpha"]} in (
        report["header"]["sections"][1]["rows"]
    )
    assert report["metadata"]["ss_tag_frequency"] == {"1_qwe": {"qwe": 3}}  # the header itself, JSON decoded
    assert report["arch"] == "sd15" and report["mismatched"] == ["lora_unet_conv_in"] and report["matched"] == 0
