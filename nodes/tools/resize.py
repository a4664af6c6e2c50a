"""Loom Resize LoRA and Loom Convert to LoRA: one file to a plain LoRA at a fixed or dynamic rank per module."""

from __future__ import annotations

import time

from comfy_api.latest import io, ui

from ...lora_math.lowrank.delta import RankRule
from .. import comfy_bridge
from ..files import lora_files
from . import stack_updates
from .results import compress_updates, finish, lora_and_report, rule, rule_inputs, savable


def _single(model, clip, lora_name: str) -> comfy_bridge.LoraSpec:
    parsed = lora_files.load(lora_name, "lora_name")
    return comfy_bridge.LoraSpec(lora_name, parsed, 1.0, 1.0, None, "lora_name")


def _algorithms(spec: comfy_bridge.LoraSpec) -> str:
    kinds: dict[str, int] = {}
    for adapter in spec.parsed.modules.values():
        kind = type(adapter).__name__ + ("+DoRA" if getattr(adapter, "dora_scale", None) is not None else "")
        kinds[kind] = kinds.get(kind, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))


def _resize(model, clip, lora_name: str, rule: RankRule, operation: str):
    started = time.perf_counter()
    spec = _single(model, clip, lora_name)
    on = stack_updates.device()
    updates = stack_updates.stack_updates(model, clip, [spec], on)
    results, zero = compress_updates(savable(model, updates), rule)
    ranks = sorted({d.factor_rank for w in updates.weights for d in w.deltas if d is not None and d.is_low_rank})
    source_rank = (
        f"ranks {ranks[0]}–{ranks[-1]}" if len(ranks) > 1 else (f"rank {ranks[0]}" if ranks else "no LoRA rank")
    )
    head = [f"{operation} {lora_name} ({spec.parsed.format}: {_algorithms(spec)}; {source_rank}) → plain LoRA"]
    head += stack_updates.notes(updates)
    sources = [stack_updates.source_record(spec)]
    return finish(results, zero, model, operation, rule.describe(), head, sources, started, on, updates.diffs)


def _lora_name_input():
    return io.Combo.Input("lora_name", options=lora_files.lora_names(), tooltip="A file from the `loras` folders.")


class LoomResizeLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoomResizeLora",
            display_name="Loom Resize LoRA",
            category="loom/utilities",
            description="Change a LoRA's rank per module: a fixed rank, or dynamically by singular-value ratio or "
            "by the fraction of the update's energy kept. Any format in (LoHa/LoKr/DoRA become plain LoRA); the "
            "report gives the energy kept per block and module.",
            inputs=[
                io.Model.Input("model", tooltip="The base model the LoRA is for (names, shapes; DoRA needs it)."),
                _lora_name_input(),
                *rule_inputs(16),
                io.Clip.Input("clip", optional=True, tooltip="Also keep the text-encoder part of the LoRA."),
            ],
            outputs=lora_and_report(),
        )

    @classmethod
    def validate_inputs(cls, lora_name: str | None = None) -> bool | str:
        return lora_files.validate(lora_name)

    @classmethod
    def execute(cls, model, lora_name, method="rank", rank=16, dynamic_param=0.95, clip=None) -> io.NodeOutput:
        lora, text = _resize(model, clip, lora_name, rule(method, rank, dynamic_param), "resize")
        return io.NodeOutput(lora, text, ui=ui.PreviewText(text))


class LoomConvertLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoomConvertLora",
            display_name="Loom Convert to LoRA",
            category="loom/utilities",
            description="Convert a LoHa, LoKr or DoRA file (or any format Loom reads) to a plain kohya LoRA at a "
            "chosen rank, for tools that only read LoRA. The report gives the energy kept per block and module.",
            inputs=[
                io.Model.Input("model", tooltip="The base model the LoRA is for (names, shapes; DoRA needs it)."),
                _lora_name_input(),
                io.Int.Input("rank", default=32, min=1, max=4096),
                io.Clip.Input("clip", optional=True, tooltip="Also convert the text-encoder part of the LoRA."),
            ],
            outputs=lora_and_report(),
        )

    @classmethod
    def validate_inputs(cls, lora_name: str | None = None) -> bool | str:
        return lora_files.validate(lora_name)

    @classmethod
    def execute(cls, model, lora_name, rank=32, clip=None) -> io.NodeOutput:
        lora, text = _resize(model, clip, lora_name, RankRule("rank", rank), "convert")
        return io.NodeOutput(lora, text, ui=ui.PreviewText(text))
