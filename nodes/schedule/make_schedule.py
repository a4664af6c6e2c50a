"""Loom LoRA Schedule: a LoRA strength schedule (``LORA_SCHEDULE``) from a preset or text, with a preview IMAGE.

The text forms are those of :mod:`lora_math.schedule`: ``schedule`` is a :func:`~lora_math.schedule.parse_schedule`
text (``0:0.2, 0.4:1.0, 1:0``, ``smooth: 0%:0, 50%:1, 100%:0``, ``@0:1 hold, @10:0``), ``blocks`` a
:func:`~lora_math.schedule.parse_block_schedules` text (``IN: 0:1, 1:0 | OUT: 1``).

Preset or text: with ``preset`` "custom" the ``schedule`` text is the schedule; any other preset is that preset with
its default parameters and the text is ignored (the web curve editor copies the preset's keyframes into the text when
the preset is picked, and switches the preset to "custom" as soon as the curve or the text is edited).
``cross_fade_a``/``cross_fade_b`` are the first (fading out) and second (fading in) schedule of the cross_fade preset.

With ``blocks`` given, the output is a :class:`~lora_math.schedule.BlockSchedules` whose default (for blocks no entry
covers, unless ``blocks`` has a ``*`` entry) is the schedule above; otherwise it is that :class:`Schedule`.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ...lora_math import schedule as sched
from ..images import curves

PRESETS = (
    "custom",
    "constant",
    "fade_in",
    "fade_out",
    "late_only",
    "early_only",
    "pulse",
    "cross_fade_a",
    "cross_fade_b",
)
DEFAULT_TEXT = "0:1, 0.5:1, 1:0"

PRESET_TOOLTIP = (
    "custom: use the schedule text. Any other: that preset with its default parameters (the text is then ignored; "
    "the curve editor shows the preset's keyframes and switches back to custom when you edit them). constant: 1 "
    "throughout; fade_in 0->1; fade_out 1->0; late_only: 0 until 50%, then 1; early_only: 1 until 50%, then 0; "
    "pulse: 0 -> 1 at 50% -> 0 (smooth); cross_fade_a / cross_fade_b: the fading-out / fading-in half of a cross-fade."
)
SCHEDULE_TOOLTIP = (
    "Used when preset is custom. Keyframes POSITION:STRENGTH separated by commas: position as progress 0..1, a "
    "percent (40%) or a step (@3); an optional mode in front (hold, linear, smooth) for all segments, or after a "
    "keyframe for the segment it starts. E.g. '0:0.2, 0.4:1, 1:0', 'smooth: 0%:0, 50%:1, 100%:0', '@0:1 hold, @10:0'. "
    "A lone number is a constant strength, a preset name (fade_in, ...) that preset."
)
BLOCKS_TOOLTIP = (
    "Optional per-block schedules, 'SELECTOR: SCHEDULE' separated by '|' or new lines, e.g. 'IN: 0:1, 1:0 | OUT: 1'. "
    "Selectors: a block (IN04, MID, OUT11, D05, S12, BASE), a group (IN, OUT, D, S) or * for all others. Blocks "
    "without an entry follow the schedule above. Non-empty: the output is a per-block schedule."
)


def preset_schedule(name: str) -> sched.Schedule:
    """The schedule of a non-custom ``preset`` choice, with the preset's default parameters."""
    if name == "constant":
        return sched.Schedule.constant(1.0)
    if name in ("cross_fade_a", "cross_fade_b"):
        return sched.preset("cross_fade")[name == "cross_fade_b"]
    if name not in PRESETS or name == "custom":
        raise ValueError(f"preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    made = sched.preset(name)
    assert isinstance(made, sched.Schedule)
    return made


def build(preset: str, schedule: str | None, blocks: str | None) -> sched.Schedule | sched.BlockSchedules:
    """The node's LORA_SCHEDULE value. Raises ValueError naming ``schedule`` or ``blocks`` and the position."""
    main = sched.parse_schedule(schedule or "", "schedule") if preset == "custom" else preset_schedule(preset)
    if blocks and blocks.strip():
        return sched.parse_block_schedules(blocks, "blocks", default=main)
    return main


def _curves(value: sched.Schedule | sched.BlockSchedules) -> list[tuple[str, sched.Schedule]]:
    if isinstance(value, sched.Schedule):
        return [("schedule", value)]
    others = "other blocks" if value.entries else "all blocks"
    return [*value.entries, (others, value.default)]


def preview(value: sched.Schedule | sched.BlockSchedules, preview_steps: int) -> torch.Tensor:
    """The curve(s) as an IMAGE, ``[1, H, W, 3]`` float in 0..1, with dots at each of ``preview_steps`` steps.

    Step keyframes (``@k``) past ``preview_steps`` widen the preview to ``k`` steps rather than fail: the number of
    steps is the sampler's business, the preview only illustrates.
    """
    named = _curves(value)
    steps = max([preview_steps] + [int(s.keyframes[-1][0]) for _, s in named if s.unit == "steps"])
    resolved = [(label, s.resolve(steps)) for label, s in named]
    pixels = curves.render(resolved, steps, value.to_text())
    return torch.from_numpy(pixels.copy()).float().div_(255.0).unsqueeze(0)


class LoomLoraSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoomLoraSchedule",
            display_name="Loom LoRA Schedule",
            category="loom/schedule",
            description=(
                "A LoRA strength schedule over the sampling steps (keyframes with hold/linear/smooth segments, or a "
                "preset), optionally per block, with a preview of the curve. Drag the keyframes in the curve editor "
                "or type the text."
            ),
            inputs=[
                io.Combo.Input("preset", options=list(PRESETS), default="custom", tooltip=PRESET_TOOLTIP),
                io.String.Input("schedule", multiline=True, default=DEFAULT_TEXT, tooltip=SCHEDULE_TOOLTIP),
                io.String.Input("blocks", multiline=True, default="", optional=True, tooltip=BLOCKS_TOOLTIP),
                io.Int.Input(
                    "preview_steps",
                    default=20,
                    min=1,
                    max=1000,
                    tooltip="Steps shown as dots in the preview (the strength each step gets); the sampler's own "
                    "step count is what counts when sampling.",
                ),
            ],
            outputs=[
                io.Custom("LORA_SCHEDULE").Output(
                    "lora_schedule",  # ids are unique across inputs and outputs; the socket shows LORA_SCHEDULE
                    display_name="LORA_SCHEDULE",
                    tooltip="The schedule (per block when blocks is set), for a Loom stack or scheduling node.",
                ),
                io.Image.Output("preview", display_name="preview", tooltip="The curve, a dot per preview step."),
                io.String.Output("text", display_name="text", tooltip="The schedule in canonical text form."),
            ],
        )

    @classmethod
    def validate_inputs(
        cls, preset: str | None = None, schedule: str | None = None, blocks: str | None = None
    ) -> bool | str:
        """Before anything runs: the preset is known, the schedule text (when preset is custom) and blocks parse.

        Taking ``preset`` here means ComfyUI leaves its combo check to this function (``build`` refuses unknown ones).
        """
        if preset is None or (preset == "custom" and schedule is None):  # linked: checked when the node runs
            return True
        if blocks is None:
            blocks = ""
        try:
            build(preset, schedule, blocks)
        except ValueError as e:
            return str(e)
        return True

    @classmethod
    def execute(
        cls, preset: str, schedule: str = DEFAULT_TEXT, preview_steps: int = 20, blocks: str = ""
    ) -> io.NodeOutput:
        value = build(preset, schedule, blocks)
        return io.NodeOutput(value, preview(value, preview_steps), value.to_text())
