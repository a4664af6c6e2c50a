"""DoRA (weight-decomposed LoRA): the magnitude vector ``dora_scale`` that rides beside a LoRA/LoHa/LoKr.

    W_c = W + ΔW                          (ΔW already carries alpha/rank; strength is NOT applied here)
    W'  = dora_scale * W_c / ‖W_c‖        (norm per output row, or per input column when dora_scale is [1, in])
    out = W + strength * (W' - W)

Reference behaviour is ComfyUI core ``comfy/weight_adapter/base.py::weight_decompose`` (strength interpolates from the
original weight, so strength 0 leaves the model untouched, as sd-webui does). Where we knowingly differ from it:

* ComfyUI's output-axis branch divides by ‖W‖ (the *original* weight's row norms) instead of ‖W + ΔW‖; that is an open
  bug (Comfy-Org/ComfyUI PR #15458). We use ‖W + ΔW‖ on both axes, as the DoRA paper, PEFT and LyCORIS do.
* ComfyUI divides ``dora_scale`` of shape ``[out]`` by a ``[out, 1]`` norm, which broadcasts to ``[out, out]`` and
  breaks non-square layers (Comfy-Org/ComfyUI issue #12938). We reshape ``dora_scale`` onto the norm's axis first.
* LyCORIS interpolates from ``W + ΔW`` instead (``W_c + strength * (W' - W_c)``); we follow ComfyUI so that loading a
  DoRA here and in core ComfyUI gives the same model at every strength.

The epsilon added to the norm is fp32's, which is what ComfyUI effectively uses too: its ModelPatcher hands
``calculate_weight`` an fp32 copy of the weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from ..errors import LoraShapeError
from .shapes import fmt_shape, fp32

__all__ = ["dora_axis", "weight_decompose"]

Axis = Literal["out", "in"]


def dora_axis(dora_scale: Tensor, weight_shape: Sequence[int], owner: str = "DoRA") -> Axis:
    """Which axis ``dora_scale`` normalises for a weight of ``weight_shape`` (``[out, in, *k]``).

    ``[out]``, ``[out, 1]``, ``[out, 1, 1, 1]`` -> ``"out"`` (LyCORIS, PEFT ``lora_magnitude_vector``);
    ``[1, in]``, ``[1, in, 1, 1]`` -> ``"in"`` (OneTrainer). Output rows win when both readings fit (a 1-row weight).
    """
    if len(weight_shape) < 2:
        raise LoraShapeError(
            f"{owner}: dora_scale {fmt_shape(dora_scale.shape)} can only patch a matrix or conv weight, "
            f"found a weight of shape {fmt_shape(weight_shape)}"
        )
    out_features, in_features = int(weight_shape[0]), int(weight_shape[1])
    if dora_scale.ndim >= 1 and dora_scale.shape[0] == out_features and dora_scale.numel() == out_features:
        return "out"
    if dora_scale.ndim >= 2 and dora_scale.shape[0] == 1 and dora_scale.numel() == in_features:
        return "in"
    raise LoraShapeError(
        f"{owner}: dora_scale has shape {fmt_shape(dora_scale.shape)} but the weight is {fmt_shape(weight_shape)}; "
        f"expected [{out_features}], [{out_features}, 1] (per output row) or [1, {in_features}] (per input column)"
    )


def weight_decompose(weight: Tensor, delta: Tensor, dora_scale: Tensor, strength: float, owner: str = "DoRA") -> Tensor:
    """Merged DoRA weight, all in fp32 (the caller casts once).

    weight: ``[out, in, *k]`` base weight; delta: ΔW of the same shape with alpha/rank already applied;
    dora_scale: magnitude, ``[out]``/``[out, 1, ...]`` or ``[1, in, ...]``. Returns ``W + strength * (W' - W)``.
    """
    axis = dora_axis(dora_scale, weight.shape, owner)
    w = fp32(weight)
    combined = w + fp32(delta, w.device)
    ones = [1] * (w.ndim - 2)
    if axis == "out":
        norm = torch.linalg.vector_norm(combined, dim=tuple(range(1, w.ndim)), keepdim=True)
        magnitude = fp32(dora_scale, w.device).reshape(w.shape[0], 1, *ones)
    else:
        norm = torch.linalg.vector_norm(combined, dim=(0, *range(2, w.ndim)), keepdim=True)
        magnitude = fp32(dora_scale, w.device).reshape(1, w.shape[1], *ones)
    # eps guards an all-zero row/column (e.g. a pruned channel) against 0/0.
    decomposed = combined * (magnitude / (norm + torch.finfo(torch.float32).eps))
    if strength == 1.0:
        return decomposed
    return w + strength * (decomposed - w)
