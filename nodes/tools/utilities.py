"""LoRA utilities: merge a stack into one LoRA, resize a LoRA's rank, convert LoHa/LoKr/DoRA to plain LoRA,
extract a LoRA from two models. Each outputs a LOOM_LORA for Loom Save LoRA (kohya keys, sources in metadata).

Plain-LoRA updates stay factored end to end (``lora_math.lowrank``: exact SVDs through thin QRs); only LoHa/LoKr/
full/DoRA updates and model differences are materialised, one weight at a time, on ComfyUI's device.
"""

from __future__ import annotations

import itertools
import re
import time

import torch
from comfy_api.latest import io, ui

from ...lora_math import save as lora_save
from ...lora_math.lowrank import delta
from ...lora_math.lowrank.delta import Delta, RankRule
from .. import comfy_bridge
from ..files import lora_files
from ..train import engine
from . import stack_updates

_LORA = io.Custom("LOOM_LORA")
_RULE_TOOLTIP = (
    "rank: keep `rank` singular values per module. sv_ratio: keep those ≥ σ_max / dynamic_param. energy: keep the "
    "fewest whose squares hold dynamic_param (0..1) of the update's squared Frobenius norm. The dynamic methods "
    "never exceed `rank`."
)


def _rule(method: str, rank: int, dynamic_param: float) -> RankRule:
    if method == "rank":
        return RankRule("rank", rank)
    try:
        return RankRule(method, dynamic_param, max_rank=rank)
    except ValueError as e:
        raise ValueError(f"dynamic_param: {e}") from e


def _rule_inputs(default_rank: int) -> list:
    return [
        io.Combo.Input("method", options=list(delta.RULES), default="rank", tooltip=_RULE_TOOLTIP),
        io.Int.Input(
            "rank", default=default_rank, min=1, max=4096, tooltip="Rank (the most kept, for sv_ratio/energy)."
        ),
        io.Float.Input(
            "dynamic_param",
            default=0.95,
            min=0.0,
            max=1000.0,
            step=0.01,
            tooltip="sv_ratio: the largest ratio σ_max/σ kept (≥ 1). energy: the fraction of ‖ΔW‖² kept (0..1].",
        ),
    ]


_UNNAMEABLE = "text-encoder updates that kohya LoRA files cannot name (T5, embeddings …)"


def _savable(model, updates: stack_updates.StackUpdates) -> list:
    """The weights a kohya file can name for this model; the rest (a T5 encoder's) is noted as left out. Full diffs
    of weights it cannot name are dropped from ``updates.diffs`` the same way."""
    encoders = lora_save.TEXT_ENCODER_PREFIXES.get(engine.arch_of(model.model), {})

    def nameable(key: str) -> bool:
        return key.startswith(stack_updates.UNET) or (
            key.split(".", 1)[0] in encoders and lora_save.CLIP_LAYER.search(key)
        )

    keep = []
    for w in updates.weights:
        if w.part == "model" or nameable(w.key):
            keep.append(w)
        else:
            updates.left_out[_UNNAMEABLE] += 1
    for key in [k for k in updates.diffs if not nameable(lora_save.layer_key(k))]:
        del updates.diffs[key]
        updates.left_out[_UNNAMEABLE] += 1
    return keep


def _compress_updates(weights, rule: RankRule | None):
    """Sum each weight's updates and make it one plain LoRA (``rule`` None: exact)."""
    pairs = []
    for w in weights:
        present = [d for d in w.deltas if d is not None]
        if present:
            pairs.append((w.key, delta.sum_deltas(present)))

    def one(key: str, d: Delta):
        return delta.exact(d) if rule is None else delta.compress(d, rule, key)

    return stack_updates.compress_all(pairs, one)


def _finish(
    results, zero, model, operation: str, rule_text: str, head: list[str], sources, started: float, on, diffs=None
):
    if not results:
        raise ValueError(f"{operation}: no weight received a non-zero update; nothing to save")
    text, notes = stack_updates.kept_report(results, rule_text, zero)
    elapsed = time.perf_counter() - started
    notes["seconds"] = round(elapsed, 3)
    lora = stack_updates.to_lora(results, model, operation, sources, notes, diffs)
    lines = [*head, text, f"took {elapsed:.2f} s on {on}"]
    return lora, "\n".join(lines)


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
            outputs=[_LORA.Output("lora", display_name="LOOM_LORA"), io.String.Output("report", display_name="report")],
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
        results, zero = _compress_updates(_savable(model, updates), rule)
        names = ", ".join(f"{s.name} ({s.strength_model:g}/{s.strength_clip:g})" for s in specs)
        head = [f"merge of {len(specs)} LoRA(s), model/clip strengths baked in: {names}"]
        head += stack_updates.notes(updates)
        sources = [stack_updates.source_record(s) for s in specs]
        rule_text = "exact" if rule is None else rule.describe()
        lora, text = _finish(results, zero, model, "merge", rule_text, head, sources, started, on, updates.diffs)
        lora.notes["mode"] = mode
        return io.NodeOutput(lora, text, ui=ui.PreviewText(text))


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
    results, zero = _compress_updates(_savable(model, updates), rule)
    ranks = sorted({d.factor_rank for w in updates.weights for d in w.deltas if d is not None and d.is_low_rank})
    source_rank = (
        f"ranks {ranks[0]}–{ranks[-1]}" if len(ranks) > 1 else (f"rank {ranks[0]}" if ranks else "no LoRA rank")
    )
    head = [f"{operation} {lora_name} ({spec.parsed.format}: {_algorithms(spec)}; {source_rank}) → plain LoRA"]
    head += stack_updates.notes(updates)
    sources = [stack_updates.source_record(spec)]
    return _finish(results, zero, model, operation, rule.describe(), head, sources, started, on, updates.diffs)


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
                *_rule_inputs(16),
                io.Clip.Input("clip", optional=True, tooltip="Also keep the text-encoder part of the LoRA."),
            ],
            outputs=[_LORA.Output("lora", display_name="LOOM_LORA"), io.String.Output("report", display_name="report")],
        )

    @classmethod
    def validate_inputs(cls, lora_name: str | None = None) -> bool | str:
        return lora_files.validate(lora_name)

    @classmethod
    def execute(cls, model, lora_name, method="rank", rank=16, dynamic_param=0.95, clip=None) -> io.NodeOutput:
        lora, text = _resize(model, clip, lora_name, _rule(method, rank, dynamic_param), "resize")
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
            outputs=[_LORA.Output("lora", display_name="LOOM_LORA"), io.String.Output("report", display_name="report")],
        )

    @classmethod
    def validate_inputs(cls, lora_name: str | None = None) -> bool | str:
        return lora_files.validate(lora_name)

    @classmethod
    def execute(cls, model, lora_name, rank=32, clip=None) -> io.NodeOutput:
        lora, text = _resize(model, clip, lora_name, RankRule("rank", rank), "convert")
        return io.NodeOutput(lora, text, ui=ui.PreviewText(text))


_CLIP_TARGETS = {
    "attention": re.compile(r"\.self_attn\.(q_proj|k_proj|v_proj|out_proj)\.weight$"),
    "attention_mlp": re.compile(r"\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))\.weight$"),
}
_CLIP_TARGETS["all"] = _CLIP_TARGETS["attention_mlp"]  # every CLIP layer a kohya file can name
EXTRACT_TARGETS = (*engine.TARGETS, "all")
_LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def _extract_keys(model, arch: str, target: str) -> list[str]:
    """Weight keys of the targeted layers; ``all``: every Linear and conv of the denoiser (as core's LoraSave)."""
    if target != "all":
        return list(engine.target_modules(model.model, arch, target))
    return [
        f"diffusion_model.{name}.weight"
        for name, m in model.model.diffusion_model.named_modules()
        if isinstance(m, _LAYERS) and getattr(m, "weight", None) is not None
    ]


def _pairs(tuned, base, keys: list[str], input_name: str, on: torch.device):
    """(key, fine-tuned − base) per weight, one layer on the device at a time: peak memory is a layer."""
    for key in keys:
        t = comfy_bridge.effective_weight(tuned, key, on)
        try:
            b = comfy_bridge.effective_weight(base, key, on)
        except AttributeError:
            b = None
        if b is None or tuple(b.shape) != tuple(t.shape):
            raise ValueError(
                f"{input_name}: has no weight {key} of shape {list(t.shape)}; extracting needs the base model of "
                "the same architecture as the fine-tuned one"
            )
        t -= b
        del b
        yield key, Delta(tuple(t.shape), dense=t.flatten(1))


class LoomExtractLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoomExtractLora",
            display_name="Loom Extract LoRA",
            category="loom/utilities",
            description="Extract a LoRA from two models: the fine-tuned weights minus the base weights of the "
            "targeted layers, at a fixed rank or an energy fraction (truncated or randomized SVD, one layer at a "
            "time on the GPU when there is one). The models are read as they would load: LoRAs and model merges "
            "applied to them count (so base + a LoRA stack vs base extracts the stack). Save it with Loom Save LoRA.",
            inputs=[
                io.Model.Input("model_tuned", tooltip="The fine-tuned model."),
                io.Model.Input("model_base", tooltip="The model it was fine-tuned from (same architecture)."),
                io.Combo.Input(
                    "target",
                    options=list(EXTRACT_TARGETS),
                    default="attention",
                    tooltip="Which layers: the attention projections, those and the MLPs, or every Linear and "
                    "conv layer of the denoiser (all: convs become LoCon modules).",
                ),
                *_rule_inputs(32),
                io.Clip.Input("clip_tuned", optional=True, tooltip="Also extract the text encoder (with clip_base)."),
                io.Clip.Input("clip_base", optional=True),
            ],
            outputs=[_LORA.Output("lora", display_name="LOOM_LORA"), io.String.Output("report", display_name="report")],
        )

    @classmethod
    def execute(
        cls,
        model_tuned,
        model_base,
        target="attention",
        method="rank",
        rank=32,
        dynamic_param=0.95,
        clip_tuned=None,
        clip_base=None,
    ) -> io.NodeOutput:
        started = time.perf_counter()
        rule = _rule(method, rank, dynamic_param)
        arch = engine.arch_of(model_tuned.model)
        if engine.arch_of(model_base.model) != arch:
            raise ValueError(f"model_base: a {engine.arch_of(model_base.model)} model, but model_tuned is {arch}")
        if (clip_tuned is None) != (clip_base is None):
            raise ValueError("clip_base: connect both clip_tuned and clip_base to extract the text encoder, or neither")
        if target not in EXTRACT_TARGETS:
            raise ValueError(f"target: {target!r} is not one of {', '.join(EXTRACT_TARGETS)}")
        keys = _extract_keys(model_tuned, arch, target)
        on = stack_updates.device()
        if on.type == "cuda":
            torch.cuda.reset_peak_memory_stats(on)
        weights = _pairs(model_tuned, model_base, keys, "model_base", on)
        count = len(keys)
        if clip_tuned is not None:
            pattern = _CLIP_TARGETS[target]
            clip_keys = [k for k in comfy_bridge.model_keys(None, clip_tuned) if pattern.search(k)]
            weights = itertools.chain(
                weights, _pairs(clip_tuned.patcher, clip_base.patcher, clip_keys, "clip_base", on)
            )
            count += len(clip_keys)
        results, zero = stack_updates.compress_all(weights, lambda key, d: delta.compress(d, rule, key))
        if not results:
            raise ValueError(
                "model_base: the two models have the same weights in every targeted layer; nothing to extract "
                "(connect the fine-tuned model to model_tuned and its base to model_base)"
            )
        head = [f"extract from {count} {target} weights ({arch}), fine-tuned minus base → plain LoRA"]
        sources = [
            {"name": stack_updates.model_name(model_tuned), "role": "tuned", "weights": count},
            {"name": stack_updates.model_name(model_base), "role": "base"},
        ]
        lora, text = _finish(results, zero, model_tuned, "extract", rule.describe(), head, sources, started, on)
        lora.notes["target"] = target
        if on.type == "cuda":
            peak = torch.cuda.max_memory_allocated(on) / 2**30
            lora.notes["peak_vram_gib"] = round(peak, 3)
            text += f", peak VRAM {peak:.2f} GiB"
        return io.NodeOutput(lora, text, ui=ui.PreviewText(text))
