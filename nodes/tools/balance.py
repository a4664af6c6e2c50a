"""Loom Balance Stack: the stack's strengths lowered per block where its LoRAs interfere, to a budget."""

from __future__ import annotations

import logging

from comfy_api.latest import io, ui

from ..load.stack import LoraStackEntry, read_lora_stack
from . import stack_updates
from .interference import analyse

log = logging.getLogger("lora_loom")


class LoomBalanceStack(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoomBalanceStack",
            display_name="Loom Balance Stack",
            category="loom/analysis",
            description="Scale a stack's strengths so that no block's combined update exceeds the budget "
            "(‖Σ sΔW‖/‖W‖), keeping the ratios between the LoRAs. Deterministic; the report says what changed.",
            inputs=[
                io.Model.Input("model", tooltip="The model the stack is for (unpatched: before the stack)."),
                io.Custom("LORA_STACK").Input("lora_stack"),
                io.Float.Input(
                    "budget",
                    default=0.3,
                    min=0.001,
                    max=10.0,
                    step=0.01,
                    tooltip="Largest combined relative update any block may receive. Strengths are only ever "
                    "lowered; a stack already within the budget passes unchanged.",
                ),
                io.Clip.Input("clip", optional=True, tooltip="Also balance the CLIP strengths (their own scale)."),
            ],
            outputs=[
                io.Custom("LORA_STACK").Output("stack", display_name="LORA_STACK"),
                io.String.Output("report", display_name="report"),
            ],
        )

    @classmethod
    def execute(cls, model, lora_stack, budget=0.3, clip=None) -> io.NodeOutput:
        report, updates = analyse(model, clip, lora_stack)
        scales = {part: report.balance_scale(budget, part) for part in ("model", "clip")}
        lines = []
        for part in ("model", "clip"):
            worst = report.worst(part)
            if worst is None:
                continue
            c = scales[part]
            if c < 1:
                lines.append(
                    f"{part} strengths ×{c:.4f}: worst block {worst.block} combined {worst.combined:.3f} → "
                    f"{worst.combined * c:.3f} (budget {budget:g})"
                )
            else:
                lines.append(
                    f"{part} strengths unchanged: worst block {worst.block} combined {worst.combined:.3f} ≤ budget "
                    f"{budget:g}"
                )
        out = []
        for item in read_lora_stack(lora_stack):
            m, c = item.model * scales["model"], item.clip * scales["clip"]
            out.append(LoraStackEntry(item.name, m, c, item.blocks, item.schedule))
            if (m, c) != (item.model, item.clip):
                lines.append(f"  {item.name}: model {item.model:g} → {m:.4g}, clip {item.clip:g} → {c:.4g}")
        lines += stack_updates.notes(updates)
        text = "\n".join(lines)
        log.info("[LoRA Loom] balance: %s", text.replace("\n", "; "))
        return io.NodeOutput(out, text, ui=ui.PreviewText(text))
