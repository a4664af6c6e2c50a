"""Trainable LoRA factors (fp32 masters); ``adapters.lora.low_rank`` runs them on a frozen layer."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor


class LoraFactors:
    """``down [r, in]`` and ``up [out, r]`` per target key, fp32 leaves with ``requires_grad``.

    Initialised as kohya and PEFT do: ``down`` Kaiming-uniform (a = √5), ``up`` zeros, so training starts from
    the base model exactly. ``scale = alpha / rank``.
    """

    def __init__(
        self,
        shapes: Mapping[str, tuple[int, int]],
        rank: int,
        alpha: float,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        if rank < 1:
            raise ValueError(f"rank: must be at least 1, got {rank}")
        self.rank, self.alpha = int(rank), float(alpha)
        self.device = torch.device(device)
        self.down: dict[str, Tensor] = {}
        self.up: dict[str, Tensor] = {}
        generator = torch.Generator().manual_seed(seed)
        for key, (out_features, in_features) in shapes.items():
            if rank > min(out_features, in_features):
                raise ValueError(
                    f"rank: {rank} is larger than layer {key} allows ({out_features}×{in_features}); "
                    f"use at most {min(out_features, in_features)}"
                )
            bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform_(a=sqrt(5)) on [r, in]
            down = (torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound
            self.down[key] = down.to(device).requires_grad_(True)
            self.up[key] = torch.zeros(out_features, rank, device=device, requires_grad=True)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def parameters(self) -> list[Tensor]:
        return [t for key in self.down for t in (self.down[key], self.up[key])]

    def load(self, modules: Mapping[str, tuple[Tensor, Tensor]]) -> None:
        """Resume: copy saved ``(down, up)`` pairs into these factors (same keys and shapes)."""
        missing = sorted(set(self.down) - set(modules))
        if missing:
            raise ValueError(f"resume: the saved LoRA has no factors for {missing[0]} (and {len(missing) - 1} more)")
        with torch.no_grad():
            for key in self.down:
                down, up = modules[key]
                if tuple(down.shape) != tuple(self.down[key].shape) or tuple(up.shape) != tuple(self.up[key].shape):
                    raise ValueError(
                        f"resume: {key} was saved with rank {down.shape[0]} / shape {tuple(up.shape)}×"
                        f"{tuple(down.shape)}; this run has rank {self.rank}"
                    )
                self.down[key].copy_(down)
                self.up[key].copy_(up)

    def snapshot(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Detached fp32 CPU copies, ``key -> (down, up)``."""
        return {
            k: (self.down[k].detach().float().cpu().clone(), self.up[k].detach().float().cpu().clone())
            for k in self.down
        }
