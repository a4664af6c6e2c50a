"""lora_math.schedule: the schedule text form, interpolation, step values, plateaus, presets, per-block schedules.

Values are checked at points worked out by hand; errors must name the input, the entry, its character position and
the token, as lora_math.names.blocks does.
"""

from __future__ import annotations

import math

import pytest

from lora_math.schedule import (
    MODES,
    PRESETS,
    BlockSchedules,
    Plateau,
    Schedule,
    parse_block_schedules,
    parse_schedule,
    preset,
    step_progress,
)

pytestmark = pytest.mark.unit


def ease(t: float) -> float:
    return (1 - math.cos(math.pi * t)) / 2


# --- parsing and round trips ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "keyframes", "modes", "unit"),
    [
        ("0:0.2, 0.4:1.0, 1:0", ((0, 0.2), (0.4, 1), (1, 0)), ("linear", "linear"), "progress"),
        ("  0 : 0.2 ;0.4:1\n1:0  ", ((0, 0.2), (0.4, 1), (1, 0)), ("linear", "linear"), "progress"),
        ("smooth: 0:0, 1:1", ((0, 0), (1, 1)), ("smooth",), "progress"),
        ("EASE: 0:0, 1:1", ((0, 0), (1, 1)), ("smooth",), "progress"),
        ("hold:0:1, 0.5:0", ((0, 1), (0.5, 0)), ("hold",), "progress"),
        ("0:0 smooth, 0.5:1 hold, 0.8:1, 1:0", ((0, 0), (0.5, 1), (0.8, 1), (1, 0)), ("smooth", "hold", "linear"), "progress"),
        ("hold: 0:0 lin, 0.5:1, 1:0", ((0, 0), (0.5, 1), (1, 0)), ("linear", "hold"), "progress"),
        ("0%:0, 40%:1, 100%:0.5", ((0, 0), (0.4, 1), (1, 0.5)), ("linear", "linear"), "progress"),
        ("33.3%:1", ((0.333, 1),), (), "progress"),
        ("0:0, 25%:1, 0.5:-0.5, 1:2.5", ((0, 0), (0.25, 1), (0.5, -0.5), (1, 2.5)), ("linear",) * 3, "progress"),
        ("@0:1 hold, @10:0", ((0, 1), (10, 0)), ("hold",), "steps"),
        ("@ 2:0.5, @7:1e-1", ((2, 0.5), (7, 0.1)), ("linear",), "steps"),
        ("0.8", ((0, 0.8),), (), "progress"),
        ("-1.5", ((0, -1.5),), (), "progress"),
        ("0.3:0.7", ((0.3, 0.7),), (), "progress"),
    ],
)  # fmt: skip
def test_parse(text, keyframes, modes, unit):
    s = parse_schedule(text)
    assert s.keyframes == tuple((float(p), float(v)) for p, v in keyframes)
    assert s.modes == modes
    assert s.unit == unit
    again = parse_schedule(s.to_text())
    assert again == s and hash(again) == hash(s)
    assert again.to_text() == s.to_text()


@pytest.mark.parametrize(
    "text",
    [
        "0:0.2, 0.4:1, 1:0",
        "smooth: 0:0, 0.5:1, 1:0",
        "hold: @0:1, @10:0",
        "0:0 smooth, 0.5:1 hold, 0.8:1, 1:0",
        "smooth: 0:0, 0.5:1 hold, 0.7:0, 1:1",
        "0:0.8",
        "0.125:-2, 1:1e-07",
    ],
)
def test_canonical_text_is_a_fixed_point(text):
    assert parse_schedule(text).to_text() == text
    assert str(parse_schedule(text)) == text


@pytest.mark.parametrize(
    "schedule",
    [
        Schedule(((0.1 + 0.2, 1 / 3), (2 / 3, 1e-20), (1.0, 12345.678)), ("smooth", "hold")),
        Schedule(((0.0, 1e16), (1e-9, -0.0)), "hold"),
        Schedule(((0, 1), (3, 2), (17, 0)), ("hold", "smooth"), unit="steps"),
    ],
)
def test_to_text_round_trips_awkward_floats(schedule):
    assert parse_schedule(schedule.to_text()) == schedule


def test_preset_names_parse_as_their_preset_and_mode_is_canonical():
    assert parse_schedule("fade_in") == preset("fade_in")
    assert parse_schedule(" Late-Only ") == preset("late_only")
    assert parse_schedule("0:0, 1:1") == Schedule(((0, 0), (1, 1)), ("linear",))
    assert Schedule(((0, 0), (1, 1)), "Cosine").modes == ("smooth",)
    assert parse_schedule("smooth: 0:0, 0.5:1 hold, 1:0").mode == "mixed"
    assert parse_schedule("smooth: 0:0, 1:1").mode == "smooth"
    assert Schedule.constant(2.0).mode == "linear"


# --- interpolation --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "points"),
    [
        ("hold", [(0.0, 0.0), (0.25, 0.0), (0.4999, 0.0), (0.5, 1.0), (0.75, 1.0), (0.9999, 1.0), (1.0, 0.0)]),
        ("linear", [(0.0, 0.0), (0.125, 0.25), (0.25, 0.5), (0.5, 1.0), (0.625, 0.75), (0.875, 0.25), (1.0, 0.0)]),
        ("smooth", [(0.0, 0.0), (0.125, ease(0.25)), (0.25, 0.5), (0.5, 1.0), (0.625, 1 - ease(0.25)), (1.0, 0.0)]),
    ],
)
def test_at_known_points(mode, points):
    s = parse_schedule(f"{mode}: 0:0, 0.5:1, 1:0")
    for progress, expected in points:
        assert s.at(progress) == pytest.approx(expected, abs=1e-12), (mode, progress)


def test_smooth_is_flat_at_keyframes_and_linear_is_not():
    smooth, linear = parse_schedule("smooth: 0:0, 1:1"), parse_schedule("0:0, 1:1")
    eps = 1e-3
    assert smooth.at(eps) < 1e-5 and 1 - smooth.at(1 - eps) < 1e-5
    assert linear.at(eps) == pytest.approx(eps)
    assert smooth.at(0.3) < linear.at(0.3) and smooth.at(0.7) > linear.at(0.7)


def test_before_first_and_after_last_keyframe_hold_their_strengths():
    s = parse_schedule("0.2:0.5, 0.6:1.5")
    assert s.at(0.0) == s.at(0.2) == 0.5
    assert s.at(0.6) == s.at(1.0) == s.at(7.0) == 1.5
    assert s.at(0.4) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="NaN"):
        s.at(float("nan"))


# --- steps ----------------------------------------------------------------------------------------------------------


def test_values_use_step_i_at_progress_i_over_n():
    assert parse_schedule("0:0, 1:1").values(4) == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert parse_schedule("0:1, 1:0").values(5) == pytest.approx([1, 0.8, 0.6, 0.4, 0.2])
    assert parse_schedule("0:0, 1:1").values(1) == [0.0]
    assert [step_progress(i, 8) for i in (0, 3, 8)] == [0.0, 0.375, 1.0]


@pytest.mark.parametrize(("k", "n"), [(0, 1), (1, 4), (3, 10), (9, 10), (19, 20)])
def test_step_keyframe_switches_exactly_at_that_step_like_a_sigma_index(k, n):
    """Step k starts at sigma index k: '@k' and progress k/n both switch on exactly step k."""
    by_step = parse_schedule(f"hold: @0:0, @{k}:1") if k else parse_schedule("@0:1")
    by_progress = Schedule(((0.0, 0.0), (step_progress(k, n), 1.0)), "hold") if k else Schedule.constant(1.0)
    values = by_step.values(n)
    assert values == [0.0] * k + [1.0] * (n - k)
    assert by_progress.values(n) == values


def test_step_schedule_resolves_per_run_and_rejects_keyframes_past_the_end():
    s = parse_schedule("@0:0, @4:1")
    assert s.values(4) == pytest.approx([0, 0.25, 0.5, 0.75])
    assert s.values(8) == pytest.approx([0, 0.25, 0.5, 0.75, 1, 1, 1, 1])
    assert s.resolve(8) == Schedule(((0, 0), (0.5, 1)))
    with pytest.raises(ValueError, match=r"lora_2: keyframe @4 is past the end of this 3-step run .*@3 is the end"):
        s.resolve(3, input_name="lora_2")
    with pytest.raises(ValueError, match=r"step indices \(@n\).*values\(num_steps\)"):
        s.at(0.5)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_num_steps_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="num_steps must be a whole number of at least 1"):
        parse_schedule("0:0, 1:1").values(bad)


# --- plateaus and constancy -----------------------------------------------------------------------------------------


def _check_cover(plateaus: tuple[Plateau, ...], n: int) -> None:
    assert plateaus[0].start == 0 and plateaus[-1].stop == n
    assert all(a.stop == b.start for a, b in zip(plateaus, plateaus[1:], strict=False))
    assert sum(p.length for p in plateaus) == n
    assert all(p.start_progress == p.start / n and p.end_progress == p.stop / n for p in plateaus)


@pytest.mark.parametrize(
    ("text", "n", "expected"),
    [
        ("0.7", 20, [(0, 20, 0.7)]),
        ("0:1, 1:1", 7, [(0, 7, 1.0)]),
        ("late_only", 10, [(0, 5, 0.0), (5, 10, 1.0)]),
        ("hold: @0:1, @3:0.5, @7:0", 10, [(0, 3, 1.0), (3, 7, 0.5), (7, 10, 0.0)]),
        ("hold: 0:0, 0.3:1, 0.6:0.5", 4, [(0, 2, 0.0), (2, 3, 1.0), (3, 4, 0.5)]),
        ("0:0, 1:1", 5, [(0, 1, 0.0), (1, 2, 0.2), (2, 3, 0.4), (3, 4, 0.6), (4, 5, 0.8)]),
        ("0:1, 0.5:1, 1:0", 4, [(0, 3, 1.0), (3, 4, 0.5)]),
    ],
)
def test_plateaus(text, n, expected):
    plateaus = parse_schedule(text).plateaus(n)
    assert [(p.start, p.stop) for p in plateaus] == [(a, b) for a, b, _ in expected]
    assert [p.strength for p in plateaus] == pytest.approx([v for _, _, v in expected])
    _check_cover(plateaus, n)


def test_plateau_tolerance_merges_close_steps_against_the_runs_first_step():
    s = parse_schedule("0:0, 1:1")
    assert len(s.plateaus(10)) == 10
    merged = s.plateaus(10, tolerance=0.25)
    assert [(p.start, p.stop) for p in merged] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert [p.strength for p in merged] == pytest.approx([0.0, 0.3, 0.6, 0.9])
    _check_cover(merged, 10)
    assert len(s.plateaus(10, tolerance=1.0)) == 1
    with pytest.raises(ValueError, match="tolerance"):
        s.plateaus(10, tolerance=-0.1)


@pytest.mark.parametrize(
    ("text", "constant"),
    [
        ("0.5", True),
        ("0:1, 0.5:1, 1:1", True),
        ("smooth: 0:2, 1:2", True),
        ("0:1, 1:1.0001", False),
        ("fade_in", False),
    ],
)
def test_is_constant(text, constant):
    s = parse_schedule(text)
    assert s.is_constant is constant
    assert (len(s.plateaus(13)) == 1) is constant


# --- presets --------------------------------------------------------------------------------------------------------


def test_preset_table():
    assert set(PRESETS) == {"fade_in", "fade_out", "late_only", "early_only", "pulse", "cross_fade"}
    assert MODES == ("hold", "linear", "smooth")


@pytest.mark.parametrize("mode", MODES[1:])
def test_fade_in_and_fade_out(mode):
    up, down = preset("fade_in", mode=mode), preset("fade_out", mode=mode)
    assert up.at(0) == 0 and up.at(1) == 1 and down.at(0) == 1 and down.at(1) == 0
    v = up.values(20)
    assert v[0] == 0 and v[-1] >= 0.9 and v == sorted(v)
    assert preset("fade_out", mode=mode).values(20) == pytest.approx([1 - x for x in v])
    windowed = preset("fade_in", start=0.25, end=0.75, low=0.2, high=0.8)
    assert windowed.values(4) == pytest.approx([0.2, 0.2, 0.5, 0.8])


def test_late_only_and_early_only_split_the_run():
    assert preset("late_only", at=0.3, strength=0.8).values(10) == [0.0] * 3 + [0.8] * 7
    assert preset("early_only", until=0.3).values(10) == [1.0] * 3 + [0.0] * 7
    late, early = preset("late_only"), preset("early_only")
    assert [a + b for a, b in zip(late.values(16), early.values(16), strict=True)] == [1.0] * 16


def test_pulse_peaks_at_its_center():
    p = preset("pulse", center=0.4, width=0.4, strength=1.2, low=0.1)
    assert [pos for pos, _ in p.keyframes] == pytest.approx([0.2, 0.4, 0.6])
    assert [strength for _, strength in p.keyframes] == [0.1, 1.2, 0.1]
    assert p.at(0.0) == 0.1 and p.at(0.4) == 1.2 and p.at(1.0) == pytest.approx(0.1)
    assert p.at(0.3) == pytest.approx(p.at(0.5)) == pytest.approx(0.65)
    assert max(p.values(50)) == pytest.approx(1.2)


@pytest.mark.parametrize("mode", MODES)
def test_cross_fade_pair_sums_to_a_constant(mode):
    a, b = preset("cross_fade", start=0.2, end=0.8, strength=0.9, mode=mode)
    assert a.at(0) == 0.9 and b.at(0) == 0 and a.at(1) == 0 and b.at(1) == 0.9
    for i in range(101):
        assert a.at(i / 100) + b.at(i / 100) == pytest.approx(0.9, abs=1e-12)
    assert [x + y for x, y in zip(a.values(7), b.values(7), strict=True)] == pytest.approx([0.9] * 7, abs=1e-12)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("fade_up", {}, r"unknown schedule preset 'fade_up'; known presets: fade_in, fade_out, late_only, early_only, pulse, cross_fade"),
        ("fade_in", {"length": 0.5}, r"preset fade_in has no parameter 'length'; it takes start, end, low, high, mode"),
        ("fade_in", {"start": 0.6, "end": 0.6}, r"preset fade_in: start \(0.6\) must be before end \(0.6\)"),
        ("fade_out", {"end": 1.5}, r"preset fade_out: end must be from 0 to 1 \(progress\), got 1.5"),
        ("late_only", {"at": 0}, r"preset late_only: at must be above 0 and below 1 \(progress\), got 0"),
        ("early_only", {"until": 1}, r"preset early_only: until must be above 0 and below 1"),
        ("pulse", {"center": 0.1}, r"preset pulse: .*leaves 0\.\.1; narrow the width to at most 0.2"),
        ("pulse", {"width": 0}, r"preset pulse: width must be above 0"),
        ("fade_in", {"mode": "cubic"}, r"preset fade_in: unknown interpolation 'cubic'; use hold, linear, smooth"),
        ("late_only", {"strength": float("inf")}, r"preset late_only: keyframe 2 .* must be finite"),
    ],
)  # fmt: skip
def test_preset_errors(name, params, message):
    with pytest.raises(ValueError, match=message):
        preset(name, **params)


# --- errors ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"^schedule: empty; write keyframes like '0:0.2, 0.4:1.0, 1:0'.*preset name \(fade_in, fade_out"),
        ("   \n ", r"^schedule: empty"),
        ("0:0, 0.5", r"^schedule: entry 2 '0.5' \(at character 6\): expected POSITION:STRENGTH"),
        ("0:0,  1.5:1", r"^schedule: entry 2 '1.5:1' \(at character 7\): position 1.5 is outside 0..1"),
        ("0:0, 10:1", r"entry 2 '10:1' \(at character 6\): .*for step 10 write '@10', for 10 percent write '10%'"),
        ("0:0, -0.1:1", r"entry 2 '-0.1:1' \(at character 6\): position -0.1 is outside 0..1"),
        ("0:0, 120%:1", r"entry 2 '120%:1' \(at character 6\): position 120% is outside 0%..100%"),
        ("0.5:1, 0.2:0", r"entry 2 '0.2:0' \(at character 8\): position 0.2 comes before the previous keyframe's \(0.5\)"),
        ("0.5:1, 50%:0", r"entry 2 '50%:0' \(at character 8\): position 0.5 repeats the previous keyframe's"),
        ("@3:1, @3:0", r"entry 2 '@3:0' \(at character 7\): position @3 repeats the previous keyframe's"),
        ("@5:1, @2:0", r"entry 2 '@2:0' \(at character 7\): position @2 comes before the previous keyframe's \(@5\)"),
        ("0:1, 0.5:x", r"entry 2 '0.5:x' \(at character 6\): strength 'x' is not a number"),
        ("0:1, 0.5:nan", r"entry 2 '0.5:nan' \(at character 6\): strength 'nan' is not a finite number"),
        ("0:1, 0.5:-inf", r"strength '-inf' is not a finite number"),
        ("0:1, 0.5:1e999", r"strength '1e999' is too large"),
        ("inf:1", r"entry 1 'inf:1' \(at character 1\): position 'inf' is not a finite number"),
        ("nan", r"entry 1 'nan' \(at character 1\): strength 'nan' is not a finite number"),
        ("0:1, :0", r"entry 2 ':0' \(at character 6\): no position before ':'"),
        ("0:1, 1:", r"entry 2 '1:' \(at character 6\): no strength after ':'"),
        ("0:0 0.5:1", r"entry 1 '0:0 0.5:1' \(at character 1\): .*is a comma missing between two keyframes\?"),
        ("0:0 smooth extra", r"expected one strength and at most one interpolation"),
        ("0:0 cubic, 1:1", r"entry 1 '0:0 cubic' \(at character 1\): 'cubic' is not an interpolation; use hold, linear or smooth"),
        ("smoth: 0:0, 1:1", r"entry 1 'smoth:' \(at character 1\): 'smoth' is not an interpolation"),
        ("smooth:", r"^schedule: no keyframes after 'smooth:'"),
        ("0:0, 1:1 smooth", r"entry 2 '1:1 smooth' \(at character 6\): 'smooth' after the last keyframe has no segment"),
        ("0:1, @3:1", r"entry 2 '@3:1' \(at character 6\): mixes step positions \(@n\) with progress positions"),
        ("@2.5:1", r"step position '@2.5' must be a whole step index"),
        ("@-1:1", r"step position '@-1' must be a whole step index"),
        ("0:1 | 1:0", r"entry 1 '0:1 \| 1:0' \(at character 1\): '\|' separates blocks in per-block schedules"),
        ("fadein", r"entry 1 'fadein' \(at character 1\): unknown schedule preset; known presets: fade_in, fade_out"),
        ("cross_fade", r"cross_fade makes two schedules"),
    ],
)  # fmt: skip
def test_parse_errors_name_entry_position_and_token(text, message):
    with pytest.raises(ValueError, match=message):
        parse_schedule(text)


def test_parse_errors_name_the_input():
    with pytest.raises(ValueError, match=r"^strength_schedule_2: entry 1 '0:x'"):
        parse_schedule("0:x", input_name="strength_schedule_2")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"keyframes": ()}, r"no keyframes"),
        ({"keyframes": ((0.5, 1), (0.2, 0))}, r"keyframe 2 \(0.2, 0\): position 0.2 comes before"),
        ({"keyframes": ((0.5, 1), (0.5, 0))}, r"keyframe 2 \(0.5, 0\): position 0.5 repeats"),
        ({"keyframes": ((0, 1), (1.5, 0))}, r"keyframe 2 \(1.5, 0\): position 1.5 is outside 0..1"),
        ({"keyframes": ((0, float("nan")),)}, r"keyframe 1 .* must be finite"),
        ({"keyframes": ((0, 1), (2.5, 0)), "unit": "steps"}, r"step position 2.5 must be a whole step index"),
        ({"keyframes": ((0, 1),), "unit": "seconds"}, r"unit 'seconds'"),
        ({"keyframes": ((0, 1), (1, 0)), "modes": ("hold", "linear")}, r"2 modes for 1 segment"),
        ({"keyframes": ((0, 1), (1, 0)), "modes": "bezier"}, r"unknown interpolation 'bezier'"),
    ],
)
def test_schedule_validates_itself(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Schedule(**kwargs)


# --- per-block schedules --------------------------------------------------------------------------------------------

UNET_KEY = "diffusion_model.{}.1.transformer_blocks.0.attn1.to_q.weight"


def test_block_lookup_block_beats_group_beats_default():
    b = parse_block_schedules("IN: 0:1, 1:0 | IN4: 0.25 | OUT: smooth: 0:0, 1:1 | D: late_only | S07: 0.5\n*: 0.75")
    fade_out, smooth_in = parse_schedule("0:1, 1:0"), parse_schedule("smooth: 0:0, 1:1")
    assert b.for_block("IN04") == Schedule.constant(0.25)
    assert b.for_block("IN4") == Schedule.constant(0.25)
    assert b.for_block("IN05") == b.for_block("IN00") == fade_out
    assert b.for_block("OUT11") == smooth_in
    assert b.for_block("MID") == b.for_block("BASE") == b.for_block("S08") == Schedule.constant(0.75)
    assert b.for_block("D18") == preset("late_only")
    assert b.for_block("S07") == Schedule.constant(0.5)
    assert b.for_key(UNET_KEY.format("input_blocks.4")) == Schedule.constant(0.25)
    assert b.for_key(UNET_KEY.format("output_blocks.2")) == smooth_in
    assert b.for_key("diffusion_model.middle_block.1.proj_in.weight") == Schedule.constant(0.75)
    assert b.for_key("diffusion_model.double_blocks.3.img_attn.qkv.weight") == preset("late_only")
    assert b.for_key("clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight") == Schedule.constant(0.75)
    assert list(b.schedules) == ["IN", "IN04", "OUT", "D", "S07"]
    assert not b.is_constant


def test_block_selector_aliases_and_newlines():
    b = parse_block_schedules("double: 0:0, 1:1\nSINGLE: 0.5\n M00 : 0.2 \n default: 0.9\n\n")
    assert b.for_block("D00") == parse_schedule("0:0, 1:1")
    assert b.for_block("S37") == Schedule.constant(0.5)
    assert b.for_block("MID") == Schedule.constant(0.2)
    assert b.default == Schedule.constant(0.9)
    assert b.for_block("IN01") == Schedule.constant(0.9)


def test_block_default_argument_empty_text_and_star_precedence():
    given = preset("fade_in")
    assert parse_block_schedules("").for_block("IN04") == Schedule.constant(1.0)
    assert parse_block_schedules("  ").is_constant
    assert parse_block_schedules("OUT: 0.5", default=given).for_block("IN04") == given
    assert parse_block_schedules("OUT: 0.5 | *: 0.3", default=given).for_block("IN04") == Schedule.constant(0.3)


@pytest.mark.parametrize(
    "text",
    ["IN: 0:1, 1:0 | OUT: smooth: 0:0, 1:1 | *: 0:0.5", "BASE: 0:0.5 | MID: hold: 0:0, 0.5:1 | D00: @0:0, @5:1", ""],
)
def test_block_schedules_round_trip(text):
    b = parse_block_schedules(text)
    assert b.to_text() == text
    assert parse_block_schedules(b.to_text()) == b
    assert hash(b) == hash(parse_block_schedules(text))


def test_block_schedules_built_in_code_are_canonical_and_checked():
    one = Schedule.constant(0.5)
    b = BlockSchedules({"out3": one, "in": preset("fade_in"), "BASE": one})
    assert [sel for sel, _ in b.entries] == ["BASE", "IN", "OUT03"]
    assert b == parse_block_schedules("OUT03: 0.5 | BASE: 0.5 | IN: fade_in")
    with pytest.raises(ValueError, match="OUT03 given twice"):
        BlockSchedules((("OUT3", one), ("OUT03", one)))
    with pytest.raises(ValueError, match="'UP' is not a block"):
        BlockSchedules({"UP": one})
    with pytest.raises(ValueError, match=r"default=, not as '\*'"):
        BlockSchedules({"*": one})
    with pytest.raises(ValueError, match="maps to str, not a Schedule"):
        BlockSchedules({"IN": "0:0, 1:1"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("XX: 0:1", r"^block_schedules: entry 1 'XX: 0:1' \(at character 1\): unknown selector 'XX'; use a block"),
        ("IN: 0:1 | 0:1, 1:0", r"^block_schedules: entry 2 '0:1, 1:0' \(at character 11\): expected SELECTOR: SCHEDULE"),
        ("IN4: 0:1 | IN04: 1", r"entry 2 'IN04: 1' \(at character 12\): IN04 already has a schedule \(entry 1\)"),
        ("IN: 1 | OUT: 0:0,  1:x", r"^block_schedules, OUT: entry 2 '1:x' \(at character 20\): strength 'x' is not a number"),
        ("IN: 1\nOUT: 0.5:1, 0.2:0", r"^block_schedules, OUT: entry 2 '0.2:0' \(at character 19\): position 0.2 comes before"),
        ("MID: smoth: 0:0, 1:1", r"^block_schedules, MID: entry 1 'smoth:' \(at character 6\): 'smoth' is not an interpolation"),
        ("IN:", r"^block_schedules, IN: empty"),
        ("M01: 1", r"unknown selector 'M01'"),
    ],
)  # fmt: skip
def test_block_schedule_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_block_schedules(text)
