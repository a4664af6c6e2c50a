"""Loom LoRA Loader: one LoRA onto a MODEL and (optionally) a CLIP."""

from __future__ import annotations

from comfy_api.latest import io

from .. import comfy_bridge
from ..files import lora_files


class LoomLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoomLoraLoader",
            display_name="Loom LoRA Loader",
            category="loom/loaders",
            description="Apply one LoRA file (kohya, LyCORIS, diffusers/PEFT, FLUX variants) to a model and its CLIP.",
            inputs=[
                io.Model.Input("model"),
                io.Clip.Input("clip", optional=True),
                io.Combo.Input("lora_name", options=lora_files.lora_names(), tooltip="A file in a `loras` folder."),
                io.Float.Input("strength_model", default=1.0, min=-100.0, max=100.0, step=0.01),
                io.Float.Input("strength_clip", default=1.0, min=-100.0, max=100.0, step=0.01),
                io.Custom("LORA_SCHEDULE").Input(
                    "schedule",
                    optional=True,
                    tooltip="From Loom LoRA Schedule: the model strength follows this curve over the sampling steps "
                    "(a multiplier on strength_model). The CLIP strength stays fixed.",
                ),
            ],
            outputs=[
                io.Model.Output(),
                io.Clip.Output(),
                io.String.Output(
                    "report", display_name="report", tooltip="What matched: modules matched/total and unmatched keys."
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, lora_name: str | None = None) -> bool | str:
        return lora_files.validate(lora_name)

    @classmethod
    def execute(cls, model, lora_name, strength_model, strength_clip, clip=None, schedule=None) -> io.NodeOutput:
        if strength_model == 0 and (clip is None or strength_clip == 0):
            return io.NodeOutput(model, clip, f"{lora_name}: strengths are 0, nothing applied")
        parsed = lora_files.load(lora_name)  # may raise ValueError naming lora_name
        spec = comfy_bridge.LoraSpec(lora_name, parsed, strength_model, strength_clip, schedule=schedule)
        model, clip, reports = comfy_bridge.apply_stack(model, clip, [spec])
        return io.NodeOutput(model, clip, reports[0].summary() if reports else "nothing applied")
