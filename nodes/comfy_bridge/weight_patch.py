"""A lora_math adapter as a ComfyUI weight patch (``add_patches``), for the paths where ComfyUI applies patches itself:
CLIP, DoRA, quantised weights, every weight of upstream's dynamic-VRAM models, and a FLUX control LoRA's norm
replacements and widened ``img_in`` (ComfyUI swaps in the patched tensor, so a weight may change its shape)."""

from __future__ import annotations

import dataclasses

import torch
from comfy.weight_adapter.base import WeightAdapterBase

from ...lora_math import adapters
from ...lora_math.weights import inplace


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
        cls, *values = self._adapter_weights()
        self.adapter: adapters.Adapter = cls(*values)
        self._low_rank = inplace.is_low_rank(self.adapter) and inplace.is_additive(self.adapter)

    def _adapter_weights(self) -> list:
        return self.weights

    @classmethod
    def of(cls, adapter: adapters.Adapter, loaded_keys=(), shape=None) -> LoomWeightPatch:
        """The patch of ``adapter``; with ``shape``, one that first widens the weight to it (:class:`LoomWidenPatch`)."""
        values = [type(adapter), *(getattr(adapter, f.name) for f in dataclasses.fields(adapter))]
        if shape is not None:
            return LoomWidenPatch(set(loaded_keys), [tuple(shape), *values])
        return cls(set(loaded_keys), values)

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
        if isinstance(adapter, adapters.Replace):
            # As core's "set" patch: the weight becomes the value; neither the strength nor a transform applies.
            weight.copy_(adapter.replaced(weight.shape, weight.device))
            return weight
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


class LoomWidenPatch(LoomWeightPatch):
    """A patch whose delta is wider than the weight: the weight is zero-padded to ``shape`` first, then patched (a
    BFL control LoRA's ``img_in``, as core's ``reshape_weight``). ``weights`` is ``[shape, adapter class, *fields]``.

    ``calculate_shape`` tells upstream's dynamic loader that the weight changes shape: it then loads that module whole
    (``patch_weight_to_device``) instead of patching it per call, as it does for core's own reshaping patch.
    Strength as core: ``pad(W) + strength · ΔW``; the new columns hold ``strength · ΔW[:, old:]``.
    """

    def _adapter_weights(self) -> list:
        return self.weights[1:]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.weights[0])

    def calculate_shape(self, key):
        return self.shape

    def calculate_weight(self, weight, key, strength, strength_model, offset, function, *args, **kwargs):
        if tuple(weight.shape) != self.shape:  # a second control LoRA finds it widened already
            padded = torch.zeros(self.shape, dtype=weight.dtype, device=weight.device)
            padded[tuple(slice(0, d) for d in weight.shape)] = weight
            weight = padded
        return super().calculate_weight(weight, key, strength, strength_model, offset, function, *args, **kwargs)


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
