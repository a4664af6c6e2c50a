"""lora_math.formats.header: the header-metadata view inspect, Loom LoRA Info and the info panel share, on every writer's keys."""

from __future__ import annotations

import json

import pytest
import writer_headers as wh
from fixtures_path import REAL_LORAS, needs_fixtures

from lora_math.formats.header import MAX_VALUE_CHARS, TOP_TAGS_SHOWN, header_view, trigger_words, writer
from lora_math.formats.io import load_state_dict

pytestmark = pytest.mark.unit


def rows(view) -> dict[str, dict[str, str]]:
    """{section title: {label: value}}."""
    return {s.title: {r.label: r.value for r in s.rows} for s in view.sections}


def shown_keys(view) -> set[str]:
    return {k for s in view.sections for r in s.rows for k in r.keys}


# writer id -> (the writer the view names, its trigger words)
EXPECTED = {
    "sd-scripts": ("kohya-ss/sd-scripts (commit 25f961bc77)", ["zxc style", "glowing runes", "1girl", "night"]),
    "musubi-tuner": (None, ["hv_dance"]),  # names no tool; no trigger source but the output name
    "ai-toolkit": ("ai-toolkit 0.1.0", ["p3r5on"]),  # its trigger word, as ss_tag_frequency
    "onetrainer": ("OneTrainer (master @ 4822e8e549)", ["<mychar>"]),  # the bundled embedding's placeholder
    "simpletuner-peft": ("diffusers / PEFT", []),
    "simpletuner-lycoris": ("SimpleTuner (LyCORIS)", []),
    "diffusers-model": ("diffusers / PEFT", []),
    "loom": ("LoRA Loom 0.1.0", ["zxq cube", "red"]),
}


@pytest.mark.parametrize("name", sorted(wh.WRITERS))
def test_every_writer_gets_every_key_shown_its_writer_and_trigger_words(name):
    header = wh.WRITERS[name]
    view = header_view(header)
    assert shown_keys(view) == set(header)  # nothing dropped
    assert (view.writer, list(view.trigger_words)) == EXPECTED[name]
    assert all(r.value for s in view.sections for r in s.rows)
    assert all(len(r.value) <= MAX_VALUE_CHARS and "\n" not in r.value for s in view.sections for r in s.rows)
    titles = [s.title for s in view.sections]
    order = ["about", "training", "adapter config", "other keys"]
    assert titles == sorted(titles, key=lambda t: next(i for i, o in enumerate(order) if t.startswith(o)))
    assert view.to_json() == json.loads(json.dumps(view.to_json()))  # plain JSON, as the route sends it


def test_kohya_keys_get_readable_labels_and_unset_ones_are_named():
    view = rows(header_view(wh.SD_SCRIPTS))
    assert view["about"]["title"] == "zxc_style"
    assert view["about"]["trained on"] == "v1-5-pruned-emaonly.safetensors / sd_v1"
    assert view["training"]["dim / alpha"] == "8 / 4.0"
    assert view["training"]["datasets"] == "10_zxc style (40 images x 10)"
    assert view["training"]["tags"] == "zxc style 40, glowing runes 31, 1girl 22, night 9 (4 tags in 1 folder)"
    assert view["training"]["trained"] == "2024-05-27 08:53 UTC to 2024-05-27 09:53 UTC"
    assert view["other keys"]["ss_session_id"] == "1402858211"  # the writer's own keys under their own names
    assert view["other keys"]["not set"] == (
        "ss_clip_skip, ss_max_token_length, ss_network_dropout, ss_noise_offset, ss_reg_dataset_dirs"
    )


def test_adapter_metadata_is_shown_per_component_config_fields_first():
    view = header_view(wh.PEFT_FILE_HEADER)
    sections = rows(view)
    unet, te = sections["adapter config (unet)"], sections["adapter config (text_encoder)"]
    assert list(unet)[:5] == ["r", "lora_alpha", "use_rslora", "use_dora", "target_modules"]
    assert (unet["r"], unet["lora_alpha"], unet["target_modules"]) == ("4", "8.0", "to_q, to_k, to_v, to_out.0")
    assert "megatron_config" in unet["not set"] and "rank_pattern" in unet["not set"]
    assert te == {"r": "4", "lora_alpha": "2.0", "target_modules": "q_proj, v_proj"}
    assert sections["about"]["trigger phrase"] == wh.PEFT_TRIGGER and view.trigger_words == (wh.PEFT_TRIGGER,)
    # a model-level save (no component prefix) is one section
    assert [s.title for s in header_view(wh.DIFFUSERS_MODEL).sections] == ["adapter config", "other keys"]


def test_writers_own_json_values_are_field_lists():
    view = rows(header_view(wh.AI_TOOLKIT))["other keys"]
    assert view["software"] == "name: ai-toolkit, repo: https://github.com/ostris/ai-toolkit, version: 0.1.0"
    assert view["training_info"] == "step: 2000, epoch: 3"
    assert view["name"] == "p3r5on_flux" and view["format"] == "pt"


def test_long_values_are_cut_and_named_and_the_text_says_so():
    header = {"ss_training_comment": "x" * (3 * MAX_VALUE_CHARS), "big_json": json.dumps(["y" * 9000]), "a": "b"}
    view = header_view(header)
    cut = [r for s in view.sections for r in s.rows if r.value.endswith("\u2026")]
    assert {r.keys for r in cut} == {("ss_training_comment",), ("big_json",)}
    assert all(len(r.value) == MAX_VALUE_CHARS for r in cut)
    assert set(view.truncated) == {"ss_training_comment", "big_json"}
    assert view.lines()[-1] == f"cut to {MAX_VALUE_CHARS} characters: {', '.join(view.truncated)}"


def test_lines_are_the_json_view_as_text():
    view = header_view(wh.ONETRAINER)
    expected = [f"written by: {view.writer}"]
    for section in view.to_json()["sections"]:
        expected += [f"{section['title']}:"] + [f"  {r['label']}: {r['value']}" for r in section["rows"]]
    assert view.lines() == expected


def test_many_tags_say_how_many_there_are_and_a_thumbnail_is_described():
    tags = {f"tag{i:03d}": 500 - i for i in range(300)}
    header = {
        "ss_tag_frequency": json.dumps({"5_a": tags, "3_b": {"tag299": 1000}}),
        "modelspec.thumbnail": "data:image/png;base64," + "A" * 40000,
    }
    view = rows(header_view(header))
    shown = view["training"]["tags"]
    assert shown.startswith("tag299 1201, tag000 500, tag001 499")
    assert shown.endswith(f"\u2026 (top {TOP_TAGS_SHOWN} of 300 tags in 2 folders)")
    assert view["about"]["thumbnail"] == "image/png image, 29.3 KiB (data URL, not shown)"


def test_malformed_adapter_metadata_is_shown_as_it_is():
    view = rows(header_view({"lora_adapter_metadata": "{not json"}))
    assert view == {"other keys": {"lora_adapter_metadata": "{not json"}}


# --- trigger words --------------------------------------------------------------------------------------------------


def test_trigger_words_in_order_without_repeats():
    meta = {
        "modelspec.trigger_phrase": "zxc style, Glow",
        "loom_trigger_words": "zxc style",
        "ss_training_comment": "trigger words: glow, neon sign.",
        "ss_tag_frequency": json.dumps({"10_zxc": {"1girl": 4, "neon sign": 9, "night": 2}, "5_more": {"night": 3}}),
        "ss_output_name": "zxc_v2",
    }
    assert trigger_words(meta) == ["zxc style", "Glow", "neon sign", "night", "1girl"]
    assert trigger_words(meta, top=1) == ["zxc style", "Glow", "neon sign"]


def test_output_name_only_when_nothing_else():
    assert trigger_words({"ss_output_name": "my_lora-000010", "ss_tag_frequency": "{}"}) == ["my_lora-000010"]
    assert trigger_words({"ss_output_name": "None", "modelspec.trigger_phrase": ""}) == []


def test_bad_trigger_sources_are_ignored():
    assert trigger_words({"ss_tag_frequency": "{not json", "modelspec.trigger_phrase": "a"}) == ["a"]
    assert trigger_words({"ss_tag_frequency": json.dumps({"d": {"x": "many", "y": 2}})}) == ["y"]
    assert trigger_words({"ot_config": json.dumps({"additional_embeddings": [{"train": True}, "x"]})}) == []


# --- the writer -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ({"software": json.dumps({"name": "my-trainer"})}, "my-trainer"),
        ({"software": "ai-toolkit"}, None),  # not the JSON object ai-toolkit writes: says nothing
        ({"modelspec.implementation_version": "sd-scripts/abc"}, "kohya-ss/sd-scripts (commit abc)"),
        (
            {"ss_sd_scripts_commit_hash": "None", "modelspec.implementation_version": "sd-scripts/"},
            "kohya-ss/sd-scripts",
        ),
        ({"modelspec.implementation_version": "musubi-tuner/1.2"}, "musubi-tuner/1.2"),
        ({"ot_config": "{}", "ot_branch": "master"}, "OneTrainer (master)"),
        ({"ss_network_module": "networks.lora", "modelspec.title": "t"}, None),
    ],
)
def test_the_writer_is_named_only_where_the_header_says_so(header, expected):
    assert writer(header) == expected


@needs_fixtures
def test_a_real_kohya_file_every_key_shown():
    _, metadata = load_state_dict(REAL_LORAS / "smart_falcon_4_lokr.safetensors")
    view = header_view(metadata)
    assert shown_keys(view) == set(metadata)
    assert view.writer == "kohya-ss/sd-scripts (commit 8eb60baf3a)"
    assert view.trigger_words[0] == r"smart falcon \(umamusume\)"  # the training comment's "trigger word is …"
    tags = rows(view)["training"]["tags"]
    assert tags.startswith(r"smart falcon \(umamusume\) 130, hair bow 129") and "of 471 tags in 3 folders" in tags
