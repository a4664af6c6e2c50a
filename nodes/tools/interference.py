"""Loom LoRA Interference: where a stack's LoRAs overlap or dominate each other, per block (report + heat map).

It reads (as Loom Balance Stack does, ``balance``) a LORA_STACK against the model it is meant for; the math is ``lora_math.interference`` on the updates
``stack_updates.stack_updates`` collects (factored: no ΔW is materialised for plain LoRAs).
"""

from __future__ import annotations

import logging

from comfy_api.latest import io, ui

from ...lora_math.lowrank.interference import Report, ReportBuilder, block_of
from ..images.heatmap import heatmap_image
from . import stack_updates

log = logging.getLogger("lora_loom")

_MAX_PAIR_COLUMNS = 6  # up to 4 LoRAs every pair gets a column; beyond, one "max |overlap|" column


def analyse(model, clip, lora_stack, **thresholds) -> tuple[Report, stack_updates.StackUpdates]:
    specs = stack_updates.specs_of(model, clip, lora_stack)
    stack_updates.check_one_base(specs)
    on = stack_updates.device()
    updates = stack_updates.stack_updates(model, clip, specs, on)
    if not updates.weights:
        raise ValueError("lora_stack: no LoRA in the stack updates a layer weight of this model/clip")
    builder = ReportBuilder([s.name for s in specs])
    for w in updates.weights:
        builder.add(block_of(w.key), w.part, stack_updates.base_sq_norm(model, clip, w, on), w.deltas)
    return builder.build(**thresholds), updates


def heatmap(report: Report):
    n = len(report.names)
    pairs = report.pairs()
    columns = [f"[{i + 1}] {name}" for i, name in enumerate(report.names)] + ["combined"]
    groups = [(f"relative update ||s dW||/||W|| (full colour at {report.dominance_threshold:g})", 0, n + 1)]
    by_pair = len(pairs) <= _MAX_PAIR_COLUMNS
    if pairs:
        columns += [f"[{i + 1}]×[{j + 1}]" for i, j in pairs] if by_pair else ["max |overlap|"]
        groups.append(("overlap |cos|", n + 1, len(columns)))
    all_flags = report.flags()
    dominated = {f.block for f in all_flags if f.kind == "dominates"}
    overlapping = {(f.block, f.pair) for f in all_flags if f.kind == "overlap"}
    values, flags = [], []
    for b in report.blocks:
        row = [b.relative(i) for i in range(n)] + [b.combined]
        marks = [False] * n + [b.block in dominated]
        cosines = [b.cosine(i, j) for i, j in pairs]
        overlap_marks = [(b.block, pair) in overlapping for pair in pairs]
        if pairs and by_pair:
            row += [None if c is None else abs(c) for c in cosines]
            marks += overlap_marks
        elif pairs:
            present = [abs(c) for c in cosines if c is not None]
            row.append(max(present) if present else None)
            marks.append(any(overlap_marks))
        values.append(row)
        flags.append(marks)
    footer = "; ".join(f.text for f in all_flags[:6]) or "no flags"
    return heatmap_image(
        [b.block for b in report.blocks],
        columns,
        values,
        groups=groups,
        scales=[report.dominance_threshold, 1.0][: len(groups)],
        flags=flags,
        title="LoRA interference per block",
        footer=footer,
    )


_THRESHOLD_INPUTS = [
    io.Float.Input(
        "overlap_threshold",
        default=0.3,
        min=0.0,
        max=1.0,
        step=0.01,
        tooltip="Flag two LoRAs in a block when |cosine| of their updates reaches this (1: same direction, "
        "0: independent) and both matter there.",
    ),
    io.Float.Input(
        "dominance_threshold",
        default=0.5,
        min=0.001,
        max=10.0,
        step=0.01,
        tooltip="Flag a block when the combined update reaches this fraction of the base weight's norm "
        "(‖Σ sΔW‖/‖W‖). Also the full-colour value of the heat map.",
    ),
]


class LoomLoraInterference(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoomLoraInterference",
            display_name="Loom LoRA Interference",
            category="loom/analysis",
            description="Measure how the LoRAs of a stack interact, per block of the model: each LoRA's update "
            "relative to the base weight, the overlap (cosine) between LoRAs' updates, and the combined update. "
            "Flags blocks where LoRAs collide or the combined update dominates the base weight.",
            inputs=[
                io.Model.Input("model", tooltip="The model the stack is for (unpatched: before the stack)."),
                io.Custom("LORA_STACK").Input("lora_stack", tooltip="The stack to analyse, with its strengths."),
                io.Clip.Input("clip", optional=True, tooltip="Also analyse the text-encoder LoRA updates."),
                *_THRESHOLD_INPUTS,
            ],
            outputs=[
                io.String.Output("report", display_name="report"),
                io.Image.Output("heatmap", display_name="heat map"),
            ],
        )

    @classmethod
    def execute(cls, model, lora_stack, clip=None, overlap_threshold=0.3, dominance_threshold=0.5) -> io.NodeOutput:
        report, updates = analyse(
            model, clip, lora_stack, overlap_threshold=overlap_threshold, dominance_threshold=dominance_threshold
        )
        text = "\n".join([report.text(), *stack_updates.notes(updates)])
        return io.NodeOutput(text, heatmap(report), ui=ui.PreviewText(text))
