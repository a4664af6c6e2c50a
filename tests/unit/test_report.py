"""lora_math.report: trigger words, training summary, coverage split by part, the inspect report."""

from __future__ import annotations

import json

import pytest
import torch

from lora_math.adapters import LoRA
from lora_math.formats import ParsedLoRA
from lora_math.report import coverage, file_report, rank_alpha, training_summary, trigger_words

pytestmark = pytest.mark.unit

GEN = torch.Generator().manual_seed(5)


def lora(out: int, inp: int, r: int, alpha: float | None) -> LoRA:
    return LoRA(down=torch.randn(r, inp, generator=GEN), up=torch.randn(out, r, generator=GEN), alpha=alpha)


def test_trigger_words_in_order_without_repeats():
    meta = {
        "modelspec.trigger_phrase": "zxc style, Glow",
        "ss_training_comment": "trigger words: glow, neon sign.",
        "ss_tag_frequency": json.dumps({"10_zxc": {"1girl": 4, "neon sign": 9, "night": 2}, "5_more": {"night": 3}}),
        "ss_output_name": "zxc_v2",
    }
    assert trigger_words(meta) == ["zxc style", "Glow", "neon sign", "night", "1girl"]
    assert trigger_words(meta, top=1) == ["zxc style", "Glow", "neon sign"]


def test_output_name_only_when_nothing_else():
    assert trigger_words({"ss_output_name": "my_lora-000010", "ss_tag_frequency": "{}"}) == ["my_lora-000010"]
    assert trigger_words({"ss_output_name": "None", "modelspec.trigger_phrase": ""}) == []


def test_bad_tag_frequency_is_ignored():
    assert trigger_words({"ss_tag_frequency": "{not json", "modelspec.trigger_phrase": "a"}) == ["a"]
    assert trigger_words({"ss_tag_frequency": json.dumps({"d": {"x": "many", "y": 2}})}) == ["y"]


def test_training_summary_selects_formats_and_skips_none():
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": "32",
        "ss_network_alpha": "16",
        "ss_learning_rate": "0.0001",
        "ss_clip_skip": "None",
        "ss_dataset_dirs": json.dumps({"10_zxc": {"n_repeats": 10, "img_count": 24}}),
        "ss_training_started_at": "1680716500.77",
        "ss_training_finished_at": "1680721307.24",
        "ss_session_id": "123",  # not worth showing
    }
    summary = dict(training_summary(meta))
    assert summary == {
        "network": "networks.lora",
        "dim / alpha": "32 / 16",
        "learning rate": "0.0001",
        "datasets": "10_zxc (24 images x 10)",
        "trained": "2023-04-05 17:41 UTC to 2023-04-05 19:01 UTC",
    }


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


def test_file_report_carries_trigger_words_and_training():
    parsed = ParsedLoRA(
        "kohya",
        {"lora_unet_conv_in": lora(320, 40, 2, 1.0)},  # conv_in takes 4x3x3 = 36 inputs
        {"modelspec.trigger_phrase": "qwe", "ss_network_dim": "2", "ss_network_alpha": "1"},
    )
    report = file_report(parsed, "sd15")
    assert report["trigger_words"] == ["qwe"] and report["training"] == {"dim / alpha": "2 / 1"}
    assert report["arch"] == "sd15" and report["mismatched"] == ["lora_unet_conv_in"] and report["matched"] == 0
