"""The one place that turns lora_math key matches into ComfyUI patches.

Patches go through `ModelPatcher.add_patches`, so ComfyUI applies them when it loads the weights
(and, under upstream's dynamic VRAM, lazily per weight) and restores the originals on unpatch;
nothing here writes model weights directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from comfy.weight_adapter.base import WeightAdapterBase

from ..lora_math import adapters, keymap
from ..lora_math.formats import ParsedLoRA

log = logging.getLogger("lora_loom")


class LoomWeightPatch(WeightAdapterBase):
    """Adapts a lora_math adapter to ComfyUI's weight-patch protocol.

    `weight` arrives as ComfyUI's fp32 working copy (already narrowed to the row slice for fused
    qkv/linear1 targets); the update is computed in fp32 by lora_math and written into that copy.
    """

    name = "loom"

    def __init__(self, adapter: adapters.Adapter):
        self.adapter = adapter
        self.loaded_keys = set()
        self.weights = []

    def calculate_weight(
        self,
        weight,
        key,
        strength,
        strength_model,
        offset,
        function,
        intermediate_dtype=torch.float32,
        original_weight=None,
    ):
        merged = adapters.merged_weight(weight, self.adapter, strength)
        if function is None:
            weight.copy_(merged)
        else:  # ComfyUI's per-key transform applies to the update, not the whole weight
            weight += function(merged - weight)
        return weight


@dataclass(frozen=True)
class PatchReport:
    """What matched where; `summary()` is the one log line a load produces."""

    name: str
    targets: int
    matched: int
    unmatched: tuple[str, ...]
    patched_keys: int

    def summary(self) -> str:
        text = f"{self.name}: {self.matched}/{self.targets} modules matched, {self.patched_keys} weights patched"
        if self.unmatched:
            head = ", ".join(self.unmatched[:5])
            text += f"; {len(self.unmatched)} unmatched (first: {head})"
        return text


def _model_keys(patcher) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in patcher.model.state_dict().items()}


def _to_comfy_patches(match: keymap.KeyMatch) -> dict:
    out = {}
    for p in match.patches:
        key = p.key if p.rows is None else (p.key, (0, p.rows[0], p.rows[1] - p.rows[0]))
        out[key] = LoomWeightPatch(p.adapter)
    return out


def apply_lora(model, clip, parsed: ParsedLoRA, name: str, strength_model: float, strength_clip: float):
    """Clone model/clip and add the LoRA's patches; returns (model, clip, report).

    Raises ValueError naming `lora_name` when nothing in the file matches the given model/clip.
    """
    keys: dict[str, tuple[int, ...]] = {}
    if model is not None:
        keys.update(_model_keys(model))
    if clip is not None:
        keys.update(_model_keys(clip.patcher))
    match = keymap.match(parsed, keys)
    if not match.patches:
        guess = keymap.guess_base_model(parsed)
        raise ValueError(
            f"lora_name: nothing in '{name}' ({parsed.format}, {match.targets} modules) matches this model"
            + (f"; it looks like a {guess} LoRA" if guess != "unknown" else "")
            + "; load it with a matching checkpoint"
        )
    patches = _to_comfy_patches(match)
    new_model, new_clip = model, clip
    patched = 0
    if model is not None and strength_model != 0:
        new_model = model.clone()
        patched += len(new_model.add_patches(patches, strength_model))
    if clip is not None and strength_clip != 0:
        new_clip = clip.clone()
        patched += len(new_clip.add_patches(patches, strength_clip))
    report = PatchReport(name, match.targets, len(match.matched), match.unmatched, patched)
    if report.unmatched:
        log.warning("[LoRA Loom] %s", report.summary())
    else:
        log.info("[LoRA Loom] %s", report.summary())
    return new_model, new_clip, report
