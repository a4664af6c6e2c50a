"""Loom LoRA Schedule: validation with positions, the LORA_SCHEDULE value, the preview image, the web editor's text form."""

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
WEB_TEXT = REPO / "web" / "loom_schedule_text.js"


@pytest.fixture(scope="module")
def node(pack):
    return pack.nodes.schedule.make_schedule.LoomLoraSchedule


@pytest.fixture(scope="module")
def sched(pack):
    return pack.lora_math.schedule


def run(node, preset="custom", schedule="0:1, 1:0", blocks="", preview_steps=20):
    return node.execute(preset=preset, schedule=schedule, blocks=blocks, preview_steps=preview_steps).result


@pytest.mark.parametrize(
    ("schedule", "blocks", "message"),
    [
        ("0:0, 0.5:x, 1:1", "", "schedule: entry 2 '0.5:x' (at character 6): strength 'x' is not a number"),
        ("0:0, 1.5:1", "", "schedule: entry 2 '1.5:1' (at character 6): position 1.5 is outside 0..1"),
        ("0:0,  0.6:1, 0.4:0", "", "schedule: entry 3 '0.4:0' (at character 14): position 0.4 comes before"),
        ("", "", "schedule: empty"),
        ("cross_fade", "", "schedule: cross_fade makes two schedules"),
        ("0:1", "IN: 0:1 | XX: 1", "blocks: entry 2 'XX: 1' (at character 11): unknown selector 'XX'"),
        ("0:1", "IN: 0:1\nOUT: 0:1, 2:0", "blocks, OUT: entry 2 '2:0' (at character 19): position 2 is outside 0..1"),
        ("0:1", "IN: 0:1 | IN: 1", "blocks: entry 2 'IN: 1' (at character 11): IN already has a schedule"),
    ],
)
def test_bad_text_fails_validation_and_execution_with_its_position(node, schedule, blocks, message):
    error = node.validate_inputs(preset="custom", schedule=schedule, blocks=blocks)
    assert isinstance(error, str) and error.startswith(message), error
    with pytest.raises(ValueError) as err:
        run(node, schedule=schedule, blocks=blocks)
    assert str(err.value) == error


@pytest.mark.parametrize("preset", ["constant", "fade_in", "fade_out", "late_only", "early_only", "pulse"])
def test_presets_validate_and_ignore_the_text(node, sched, preset):
    assert node.validate_inputs(preset=preset, schedule="not a schedule", blocks="") is True
    value, _, text = run(node, preset=preset, schedule="not a schedule")
    expected = sched.Schedule.constant(1.0) if preset == "constant" else sched.preset(preset)
    assert value == expected and text == expected.to_text()
    # blocks still apply on top of a preset, and are still checked
    assert isinstance(node.validate_inputs(preset=preset, schedule="", blocks="NOPE: 1"), str)


def test_cross_fade_halves_and_unknown_presets(node, sched):
    out, fade_in = sched.preset("cross_fade")
    assert run(node, preset="cross_fade_a")[0] == out and run(node, preset="cross_fade_b")[0] == fade_in
    assert out != fade_in
    error = node.validate_inputs(preset="ease_in_out", schedule="0:1", blocks="")
    assert isinstance(error, str) and error.startswith("preset: unknown preset 'ease_in_out'")


def test_linked_inputs_are_checked_when_the_node_runs(node):
    assert node.validate_inputs(preset="custom", schedule=None, blocks=None) is True
    assert node.validate_inputs(preset=None, schedule="garbage", blocks="") is True
    assert node.validate_inputs(preset="custom", schedule="0:0, 1:1", blocks=None) is True


@pytest.mark.parametrize(
    "text",
    [
        "0:0.2, 0.4:1.0, 1:0",
        "smooth: 0%:0, 50%:1, 100%:0",
        "0:0 smooth; 0.5:1 hold\n0.8:1, 1:0",
        "@0:1 hold, @10:0",
        "0.8",
        "fade_in",
        "0:-0.5, 0.333:1.25, 1:3",
    ],
)
def test_output_is_the_parsed_schedule_and_its_text_round_trips(node, sched, text):
    value, _, canonical = run(node, schedule=text)
    parsed = sched.parse_schedule(text)
    assert isinstance(value, sched.Schedule) and value == parsed
    assert canonical == parsed.to_text() and sched.parse_schedule(canonical) == value


def test_blocks_make_block_schedules_with_the_schedule_as_default(node, sched):
    blocks = "IN: 0:1, 1:0 | OUT04: smooth: 0:0, 1:1.5\nMID: -0.3"
    value, _, text = run(node, schedule="0:0.5, 1:1", blocks=blocks)
    assert isinstance(value, sched.BlockSchedules)
    assert value == sched.parse_block_schedules(blocks, default=sched.parse_schedule("0:0.5, 1:1"))
    assert value.for_block("IN04") == sched.parse_schedule("0:1, 1:0")
    assert value.for_block("OUT05") == value.default == sched.parse_schedule("0:0.5, 1:1")
    assert sched.parse_block_schedules(text) == value
    # a '*' entry beats the schedule input; whitespace-only blocks are no blocks
    assert run(node, schedule="0:0.5", blocks="*: 0.25")[0].default == sched.Schedule.constant(0.25)
    assert isinstance(run(node, blocks="  \n ")[0], sched.Schedule)


# --- the preview image ----------------------------------------------------------------------------------------------


def near(image: np.ndarray, color, tolerance: float = 60.0) -> np.ndarray:
    """Boolean H x W mask of pixels within ``tolerance`` (RGB distance, 0..255) of ``color``."""
    rgb = image.astype(np.float32)
    return np.linalg.norm(rgb - np.asarray(color, np.float32), axis=-1) < tolerance


def rows_of(image: np.ndarray, color, x: float) -> np.ndarray:
    return np.nonzero(near(image, color)[:, round(x)])[0]


def pixels(tensor) -> np.ndarray:
    return (tensor[0].numpy() * 255).round().astype(np.uint8)


def test_preview_is_an_image_tensor(node):
    import torch

    _, image, _ = run(node, schedule="0:0, 0.5:1 smooth, 1:0")
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32
    assert tuple(image.shape) == (1, 256, 512, 3)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0 and float(image.std()) > 0.05


@pytest.mark.parametrize(
    ("text", "progress", "strength"),
    [
        ("0.2", 0.6, 0.2),
        ("0.9", 0.6, 0.9),
        ("0:0, 1:1", 0.25, 0.25),
        ("smooth: 0:0, 1:1", 0.25, (1 - math.cos(math.pi / 4)) / 2),
        ("hold: 0:0.2, 0.5:0.9", 0.3, 0.2),
        ("hold: 0:0.2, 0.5:0.9", 0.75, 0.9),
        ("0:-0.5, 0.5:1.5, 1:0", 0.25, 0.5),
    ],
)
def test_preview_curve_is_where_the_schedule_says(pack, node, sched, text, progress, strength):
    """The curve's pixels in the column of ``progress`` sit at the row of the schedule's strength there."""
    curve_image = pack.nodes.images.curves
    image = pixels(run(node, schedule=text, preview_steps=1)[1])
    layout = curve_image.Layout(*curve_image.strength_range([sched.parse_schedule(text)]))
    rows = rows_of(image, curve_image.COLORS[0], layout.x_of(progress))
    assert rows.size and abs(rows.mean() - layout.y_of(strength)) < 1.5, (rows, layout.y_of(strength))


def test_preview_differs_between_schedules_and_marks_each_step(pack, node):
    curve_image = pack.nodes.images.curves
    low, high = (pixels(run(node, schedule=t, preview_steps=4)[1]) for t in ("0.2", "0.9"))
    assert np.abs(low.astype(int) - high.astype(int)).sum(axis=-1).astype(bool).sum() > 500
    layout = curve_image.Layout(*curve_image.strength_range([pack.lora_math.schedule.parse_schedule("0.2")]))
    color, y = curve_image.COLORS[0], layout.y_of(0.2)
    # 4 steps: dots (radius 3) at progress 0, 0.25, 0.5, 0.75, drawn above and below the 2 px line; none between
    for progress in (0.25, 0.5, 0.75):
        assert set(range(round(y) - 2, round(y) + 3)) <= set(rows_of(low, color, layout.x_of(progress)))
    for progress in (0.125, 0.375, 0.875):
        assert not set(range(round(y) - 2, round(y) + 3)) <= set(rows_of(low, color, layout.x_of(progress)))


def test_block_preview_draws_one_curve_per_entry(pack, node, sched):
    curve_image = pack.nodes.images.curves
    value, image, _ = run(node, schedule="0.5", blocks="IN: 0 | OUT: 1.5", preview_steps=1)
    image = pixels(image)
    layout = curve_image.Layout(*curve_image.strength_range([s for _, s in value.entries] + [value.default]))
    for color, strength in zip(curve_image.COLORS[:3], (0.0, 1.5, 0.5), strict=True):  # IN, OUT, other blocks
        rows = rows_of(image, color, layout.x_of(0.6))
        assert rows.size and abs(np.median(rows) - layout.y_of(strength)) < 1.5, (color, rows)


def test_step_keyframes_past_preview_steps_widen_the_preview(node):
    assert node.validate_inputs(preset="custom", schedule="@0:1 hold, @30:0", blocks="") is True
    value, image, text = run(node, schedule="@0:1 hold, @30:0", preview_steps=20)
    assert value.unit == "steps" and text == "hold: @0:1, @30:0" and tuple(image.shape) == (1, 256, 512, 3)


def test_schema_is_valid_and_registered(pack, node):
    schema = node.GET_SCHEMA()
    assert node in pack.nodes.NODES
    assert [i.id for i in schema.inputs] == ["preset", "schedule", "blocks", "preview_steps"]
    assert list(node.RETURN_TYPES) == ["LORA_SCHEDULE", "IMAGE", "STRING"]
    assert list(node.RETURN_NAMES) == ["LORA_SCHEDULE", "preview", "text"]
    preset = next(i for i in schema.inputs if i.id == "preset")
    assert list(preset.options) == list(pack.nodes.schedule.make_schedule.PRESETS)


# --- the web editor's text form (web/loom_schedule_text.js) ---------------------------------------------------------


def test_web_preset_table_matches_the_node(pack):
    table = re.search(r"export const PRESET_TEXT = (\{.*?\});", WEB_TEXT.read_text(), re.S)
    assert table, "PRESET_TEXT not found in web/loom_schedule_text.js"
    module = pack.nodes.schedule.make_schedule
    expected = {name: module.preset_schedule(name).to_text() for name in module.PRESETS if name != "custom"}
    assert json.loads(table.group(1)) == expected


JS_TEXTS = [
    "0:0.2, 0.4:1.0, 1:0",
    "smooth: 0%:0, 50%:1, 100%:0",
    "33.3%:1, 66.7%:0.5",
    "0:0 smooth; 0.5:1 hold\n0.8:1, 1:0",
    "hold: 0:1 linear, 0.5:0 smooth, 0.7:1, 1:0",
    "cos: 0:1, 0.5:2 lin, 1:0 ",
    "0:0 hold, 0.5:1 smooth, 1:0",
    "0:1e-05, 0.00001:2.5e16, 1:-0.0",
    "  0.8 ",
    "pulse",
    "Fade-In",
]
JS_STEP_TEXTS = ["@0:1 hold, @10:0", "0:1, @3:0"]
JS_BAD_TEXTS = ["", "0:0, 0.5:x", "0:0, 1.5:1", "0.5:1, 0.2:0", "0:1 smooth", "nope", "cross_fade", "inf", "0:1|0.5:1"]
JS_NUMBERS = [0.0, -0.0, 1.0, 0.1, 1 / 3, 1e-05, 0.0001, 123456.789, 1e15, 1e16, 2.5e16, -7.25, 1e-300, 0.1 + 0.2]


def test_web_text_form_matches_lora_math(tmp_path, sched):
    """The editor parses what lora_math parses, writes Schedule.to_text's exact text and draws Schedule.at's curve."""
    node_js = shutil.which("node")
    if node_js is None:
        pytest.skip("node (Node.js) is not installed")
    module = tmp_path / "loom_schedule_text.mjs"
    shutil.copy(WEB_TEXT, module)
    cases = {"texts": JS_TEXTS + JS_STEP_TEXTS + JS_BAD_TEXTS, "numbers": JS_NUMBERS, "samples": 41}
    script = f"""
        import {{ parseSchedule, scheduleToText, strengthAt, formatNumber }} from {json.dumps(module.as_uri())};
        const cases = {json.dumps(cases)};
        const out = {{ texts: {{}}, numbers: cases.numbers.map(formatNumber) }};
        for (const text of cases.texts) {{
          const parsed = parseSchedule(text);
          if (parsed.keyframes) {{
            const at = [...Array(cases.samples).keys()].map((i) => strengthAt(parsed, i / (cases.samples - 1)));
            out.texts[text] = {{ ...parsed, text: scheduleToText(parsed), at }};
          }} else out.texts[text] = parsed;
        }}
        console.log(JSON.stringify(out));
    """
    result = subprocess.run(
        [node_js, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["numbers"] == [sched.format_number(x) for x in JS_NUMBERS]
    for text in JS_TEXTS:
        js, expected = out["texts"][text], sched.parse_schedule(text)
        assert [tuple(k) for k in js["keyframes"]] == list(expected.keyframes), text
        assert tuple(js["modes"]) == expected.modes and js["text"] == expected.to_text(), text
        at = [expected.at(i / (cases["samples"] - 1)) for i in range(cases["samples"])]
        assert all(math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12) for a, b in zip(js["at"], at, strict=True)), text
    for text in JS_STEP_TEXTS:
        assert out["texts"][text] == {"steps": True}, text
    for text in JS_BAD_TEXTS:
        assert "error" in out["texts"][text], text
        with pytest.raises(ValueError):
            sched.parse_schedule(text)
