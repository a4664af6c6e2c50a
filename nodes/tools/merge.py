"""Loom Merge LoRAs: a stack baked into one LoRA (exact: ranks concatenated; compressed: best rank-r per module)."""

from __future__ import annotations

import time

from comfy_api.latest import io, ui

from ...lora_math.lowrank.delta import RankRule
from . import stack_updates
from .results import compress_updates, finish, lora_and_report, savable


class LoomMergeLoras(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoomMergeLoras",
            display_name="Loom Merge LoRAs",
            category="loom/utilities",
            description="Merge a stack into one LoRA with the stack's strengths and block weights baked in. exact: "
            "the ranks concatenated (no loss); compressed: the best rank-`rank` approximation per module (SVD "
            "through the low-rank factors, on the GPU when there is one). Save it with Loom Save LoRA.",
            inputs=[
                io.Model.Input("model", tooltip="The base model the LoRAs are for (names and shapes come from it)."),
                io.Custom("LORA_STACK").Input("lora_stack", tooltip="The LoRAs, strengths and block weights."),
                io.Combo.Input("mode", options=["compressed", "exact"], default="compressed"),
                io.Int.Input("rank", default=64, min=1, max=4096, tooltip="Rank of every module (compressed mode)."),
                io.Clip.Input("clip", optional=True, tooltip="Also merge the text-encoder parts (CLIP strengths)."),
            ],
            outputs=lora_and_report(),
        )

    @classmethod
    def execute(cls, model, lora_stack, mode="compressed", rank=64, clip=None) -> io.NodeOutput:
        if mode not in ("compressed", "exact"):
            raise ValueError(f"mode: {mode!r} is neither 'compressed' nor 'exact'")
        started = time.perf_counter()
        specs = stack_updates.specs_of(model, clip, lora_stack)
        stack_updates.check_one_base(specs)
        on = stack_updates.device()
        updates = stack_updates.stack_updates(model, clip, specs, on)
        rule = RankRule("rank", rank) if mode == "compressed" else None
        results, zero = compress_updates(savable(model, updates), rule)
        names = ", ".join(f"{s.name} ({s.strength_model:g}/{s.strength_clip:g})" for s in specs)
        head = [f"merge of {len(specs)} LoRA(s), model/clip strengths baked in: {names}"]
        head += stack_updates.notes(updates)
        sources = [stack_updates.source_record(s) for s in specs]
        rule_text = "exact" if rule is None else rule.describe()
        lora, text = finish(results, zero, model, "merge", rule_text, head, sources, started, on, updates.diffs)
        lora.notes["mode"] = mode
        return io.NodeOutput(lora, text, ui=ui.PreviewText(text))
