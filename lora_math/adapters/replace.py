"""Weight replacements: a tensor that takes the weight's place instead of adding to it.

BFL's FLUX control LoRAs store the q/k RMSNorm scales of every block this way (``…_norm.scale``). ComfyUI core
applies them as its ``"set"`` patch (``comfy/lora.py``: ``weight.copy_(value)``), which reads no strength: at any
strength the weight *is* the stored tensor. Loom does the same; a LoRA at strength 0 is not applied at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import LoraShapeError
from .shapes import DenseShape, fit_delta, fp32, require_tensor, summarise

__all__ = ["Replace"]


@dataclass(frozen=True, eq=False)
class Replace(DenseShape):
    """value: the weight's new value, any weight's shape (a norm's ``[C]``), as stored in the file."""

    value: Tensor

    def __post_init__(self) -> None:
        require_tensor("Replace", "value", self.value, (1, 2, 3, 4, 5))

    @property
    def dense(self) -> Tensor:
        return self.value

    def replaced(self, shape: Sequence[int], device: torch.device | str | None = None) -> Tensor:
        """fp32 ``value`` fitted to the weight ``shape`` it replaces."""
        return fit_delta(fp32(self.value, device), shape, repr(self))

    def delta_weight(self, shape: Sequence[int], device: torch.device | str | None = None) -> Tensor:
        # A replacement's change depends on the weight it replaces, and it does not scale with a strength: the
        # additive paths (in-place merge, bypass, stack analysis) must not treat it as a delta.
        raise LoraShapeError(f"{self!r} replaces the weight; it has no delta of its own: apply it with merged_weight()")

    def __repr__(self) -> str:
        return summarise(self, ("value",))
