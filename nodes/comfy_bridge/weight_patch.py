"""A lora_math adapter as a ComfyUI weight patch (``add_patches``), for the paths where ComfyUI applies patches itself:
CLIP, DoRA, quantised weights, and every weight of upstream's dynamic-VRAM models."""

from __future__ import annotations

import dataclasses

import torch
from comfy.weight_adapter.base import WeightAdapterBase

from ...lora_math import adapters, merge


class LoomWeightPatch(WeightAdapterBase):
    """Upstream's adapter protocol (0.2x+): ``loaded_keys`` and ``weights`` are the whole object, and
    ``type(p)(p.loaded_keys, weights)`` rebuilds it. Upstream's dynamic loader does exactly that for every patched
    weight, with the tensors of ``weights`` replaced by copies in its prefetch buffer on the GPU (and it sizes that
    buffer from them). ``weights`` is ``[adapter class, *the adapter's fields]``: tensors, floats and None, which
    upstream copies or passes through as they are.

    ``weight`` arrives as ComfyUI's working copy (fp32 on the legacy path; the compute dtype, fp16/bf16 on GPUs, on
    upstream's per-weight path, which patches every weight as it loads it: after each strength change, and at every
    model call for weights that are not resident), already narrowed to the row slice for fused qkv/linear1 targets.
    A plain LoRA is one ``addmm_`` into it (the GEMM accumulates in fp32 and rounds once, into the working dtype):
    one kernel per weight, where a materialised fp32 ΔW would cost about ten (bench/launches.py). Other adapters
    are computed in fp32 by lora_math and cast to the working dtype once.
    """

    name = "loom"

    def __init__(self, loaded_keys, weights) -> None:
        self.loaded_keys = loaded_keys
        self.weights = list(weights)
        cls, *values = self.weights
        self.adapter: adapters.Adapter = cls(*values)
        self._low_rank = merge.is_low_rank(self.adapter) and merge.is_additive(self.adapter)

    @classmethod
    def of(cls, adapter: adapters.Adapter, loaded_keys=()) -> LoomWeightPatch:
        values = [getattr(adapter, f.name) for f in dataclasses.fields(adapter)]
        return cls(set(loaded_keys), [type(adapter), *values])

    def calculate_shape(self, key):
        return None  # never resizes the weight

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
        adapter = self.adapter
        if self._low_rank and _is_identity(function):
            up = adapter.up.flatten(1).to(device=weight.device, dtype=weight.dtype)
            down = adapter.down.flatten(1).to(device=weight.device, dtype=weight.dtype)
            weight.view(weight.shape[0], -1).addmm_(up, down, alpha=strength * adapter.scale)
            return weight
        merged = adapters.merged_weight(weight, adapter, strength)
        if _is_identity(function):
            weight.copy_(merged)
        else:  # ComfyUI's per-key transform applies to the update, not the whole weight
            weight += function(merged - weight)
        return weight


_PROBE = object()


def _is_identity(function) -> bool:
    """ComfyUI hands a patch without a transform ``lambda a: a`` (None on some paths): a non-tensor probe tells it
    apart from a real transform at no cost."""
    if function is None:
        return True
    try:
        return function(_PROBE) is _PROBE
    except Exception:  # a real transform does tensor work on its argument
        return False
