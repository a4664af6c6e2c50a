"""Loom Schedule LoRA: give one LoRA of a LORA_STACK a strength schedule (the rest stay as they are)."""

from __future__ import annotations

from comfy_api.latest import io

from ...lora_math.schedule import BlockSchedules, Schedule
from ..files import lora_files
from ..load.stack import LoraStackEntry, read_lora_stack


class LoomScheduleLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoomScheduleLora",
            display_name="Loom Schedule LoRA",
            category="loom/schedule",
            description=(
                "Attach a strength schedule (from Loom LoRA Schedule) to one LoRA of a LORA_STACK. Give the stack to "
                "Loom LoRA Stack: that LoRA's model strength then follows the curve over the sampling steps, the "
                "others stay static."
            ),
            inputs=[
                io.Custom("LORA_STACK").Input("lora_stack"),
                io.Combo.Input("lora_name", options=lora_files.lora_names(), tooltip="The stack's LoRA to schedule."),
                io.Custom("LORA_SCHEDULE").Input("schedule"),
            ],
            outputs=[io.Custom("LORA_STACK").Output("stack", display_name="LORA_STACK")],
        )

    @classmethod
    def validate_inputs(cls, lora_name: str | None = None) -> bool | str:
        return lora_files.validate(lora_name)

    @classmethod
    def execute(cls, lora_stack, lora_name: str, schedule) -> io.NodeOutput:
        if not isinstance(schedule, Schedule | BlockSchedules):
            raise ValueError(
                f"schedule: expected a LORA_SCHEDULE from Loom LoRA Schedule, found {type(schedule).__name__}"
            )
        items = read_lora_stack(lora_stack)
        if not any(i.name == lora_name for i in items):
            have = ", ".join(repr(i.name) for i in items) or "nothing"
            raise ValueError(
                f"lora_name: {lora_name!r} is not in the incoming lora_stack (it has {have}); pick one of those"
            )
        text = schedule.to_text()
        out = [
            LoraStackEntry(i.name, i.model, i.clip, i.blocks, text if i.name == lora_name else i.schedule)
            for i in items
        ]
        return io.NodeOutput(out)
