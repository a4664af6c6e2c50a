"""What a training run hands on: the factors, where they go, and everything needed to save, apply or resume it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class TrainedLoRA:
    """A trained (or partly trained) LoRA.

    modules: ComfyUI model key of the patched weight (``diffusion_model.….to_q.weight``) -> ``(down [r, in],
        up [out, r])``, fp32 CPU tensors, ``ΔW = alpha / rank · up @ down``.
    alpha: the alpha of every module (one value, as trainers write it); rank: the rank of every module.
    arch: ``sd15`` | ``sdxl`` | ``flux`` | ``sd3`` (what the file's names and metadata are written for).
    settings: the training settings as plain JSON-able values (rank, lr, steps, optimizer, resolution …).
    dataset: ``num_images``, ``images_sha256`` (hash of the images and captions), ``tag_frequency``
        ({tag: count}), ``trigger``, ``class_prompt`` …; base: ``sha256`` of the base model weights, ``name``.
    step: optimizer steps done; loss_history: the loss of each step (smoothed values are the reader's business).
    optimizer_state: ``torch.optim`` state dict to resume from (tensors on CPU), or None.
    interrupted: True when the run stopped early (the LoRA so far).
    """

    modules: Mapping[str, tuple[Tensor, Tensor]]
    alpha: float
    rank: int
    arch: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    dataset: Mapping[str, Any] = field(default_factory=dict)
    base: Mapping[str, Any] = field(default_factory=dict)
    step: int = 0
    loss_history: list[float] = field(default_factory=list)
    optimizer_state: Mapping[str, Any] | None = None
    interrupted: bool = False

    @property
    def scale(self) -> float:
        return self.alpha / self.rank
