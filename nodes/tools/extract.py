"""Loom Extract LoRA: a LoRA from two models (fine-tuned minus base), one layer at a time."""

from __future__ import annotations

import itertools
import re
import time

import torch
from comfy_api.latest import io, ui

from ...lora_math.lowrank import delta
from ...lora_math.lowrank.delta import Delta
from .. import comfy_bridge
from ..train import engine
from . import stack_updates
from .results import finish, lora_and_report, rule, rule_inputs

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


def _check(model_tuned, model_base, clip_tuned, clip_base, target: str) -> str:
    """The family both models share; ValueError naming the input that does not fit."""
    arch = engine.arch_of(model_tuned.model)
    if engine.arch_of(model_base.model) != arch:
        raise ValueError(f"model_base: a {engine.arch_of(model_base.model)} model, but model_tuned is {arch}")
    if (clip_tuned is None) != (clip_base is None):
        raise ValueError("clip_base: connect both clip_tuned and clip_base to extract the text encoder, or neither")
    if target not in EXTRACT_TARGETS:
        raise ValueError(f"target: {target!r} is not one of {', '.join(EXTRACT_TARGETS)}")
    return arch


def _differences(model_tuned, model_base, clip_tuned, clip_base, arch: str, target: str, on: torch.device):
    """(lazy (key, tuned − base) pairs of the targeted denoiser and CLIP weights, how many)."""
    keys = _extract_keys(model_tuned, arch, target)
    weights = _pairs(model_tuned, model_base, keys, "model_base", on)
    if clip_tuned is None:
        return weights, len(keys)
    pattern = _CLIP_TARGETS[target]
    clip_keys = [k for k in comfy_bridge.model_keys(None, clip_tuned) if pattern.search(k)]
    clip_pairs = _pairs(clip_tuned.patcher, clip_base.patcher, clip_keys, "clip_base", on)
    return itertools.chain(weights, clip_pairs), len(keys) + len(clip_keys)


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
                *rule_inputs(32),
                io.Clip.Input("clip_tuned", optional=True, tooltip="Also extract the text encoder (with clip_base)."),
                io.Clip.Input("clip_base", optional=True),
            ],
            outputs=lora_and_report(),
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
        keep = rule(method, rank, dynamic_param)
        arch = _check(model_tuned, model_base, clip_tuned, clip_base, target)
        on = stack_updates.device()
        if on.type == "cuda":
            torch.cuda.reset_peak_memory_stats(on)
        weights, count = _differences(model_tuned, model_base, clip_tuned, clip_base, arch, target, on)
        results, zero = _compressed(weights, keep)
        head = [f"extract from {count} {target} weights ({arch}), fine-tuned minus base → plain LoRA"]
        sources = [
            {"name": stack_updates.model_name(model_tuned), "role": "tuned", "weights": count},
            {"name": stack_updates.model_name(model_base), "role": "base"},
        ]
        lora, text = finish(results, zero, model_tuned, "extract", keep.describe(), head, sources, started, on)
        lora.notes["target"] = target
        text += _peak_vram(lora, on)
        return io.NodeOutput(lora, text, ui=ui.PreviewText(text))


def _compressed(weights, keep):
    """Each difference compressed by the rank rule; ValueError naming ``model_base`` when no layer differs."""
    results, zero = stack_updates.compress_all(weights, lambda key, d: delta.compress(d, keep, key))
    if not results:
        raise ValueError(
            "model_base: the two models have the same weights in every targeted layer; nothing to extract "
            "(connect the fine-tuned model to model_tuned and its base to model_base)"
        )
    return results, zero


def _peak_vram(lora, on: torch.device) -> str:
    """The peak VRAM of the run, in the notes and for the report (CUDA only)."""
    if on.type != "cuda":
        return ""
    peak = torch.cuda.max_memory_allocated(on) / 2**30
    lora.notes["peak_vram_gib"] = round(peak, 3)
    return f", peak VRAM {peak:.2f} GiB"
