"""Trainable LoRA factors: fp32 masters for the optimizer, working copies in the model's compute dtype for the layers.

Each step the forward runs on working copies (the scale folded into ``up``): no cast and no scale per layer call,
and the side path is one ``addmm`` into the layer's output (``adapters.lora.low_rank``). After backward the
working gradients become the masters' (:meth:`LoraFactors.gather_grads`, the chain rule of the fold included);
after the optimizer step the copies are refreshed (:meth:`LoraFactors.refresh`). Both are a few multi-tensor
(``torch._foreach_*``) launches for all layers together, not one per layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from ..adapters.lora import low_rank


class LoraFactors:
    """``down [r, in]`` and ``up [out, r]`` per target key, fp32 leaves with ``requires_grad`` (what the optimizer
    steps), and their working copies in ``compute_dtype`` (what :meth:`apply` runs: ``work_down = down``,
    ``work_up = scale · up``).

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
        compute_dtype: torch.dtype = torch.float32,
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
        work = dict(device=self.device, dtype=compute_dtype)
        self.work_down = {k: torch.empty(d.shape, **work).requires_grad_(True) for k, d in self.down.items()}
        self.work_up = {k: torch.empty(u.shape, **work).requires_grad_(True) for k, u in self.up.items()}
        self._grads = [torch.zeros_like(t) for t in self.parameters()]  # the masters' gradients, reused every step
        self.refresh()

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def parameters(self) -> list[Tensor]:
        """The fp32 masters, ``down, up`` per key (the optimizer's parameters, in the order resume files use)."""
        return [t for key in self.down for t in (self.down[key], self.up[key])]

    def work_parameters(self) -> list[Tensor]:
        """The working copies, in the order of :meth:`parameters`."""
        return [t for key in self.down for t in (self.work_down[key], self.work_up[key])]

    def apply(self, key: str, x: Tensor, out: Tensor) -> Tensor:
        """The layer ``key``'s output ``out`` (for input ``x``) with this LoRA's update added: one ``addmm``."""
        return low_rank(x, self.work_down[key], self.work_up[key], out=out, inplace=False)

    @torch.no_grad()
    def refresh(self) -> None:
        """The working copies from the masters: ``down`` cast, ``scale · up`` cast (after an optimizer step, a load)."""
        downs, ups = list(self.down.values()), list(self.up.values())
        torch._foreach_copy_(list(self.work_down.values()), downs)
        torch._foreach_copy_(list(self.work_up.values()), torch._foreach_mul(ups, self.scale))

    @torch.no_grad()
    def gather_grads(self) -> list[Tensor]:
        """The masters' gradients (fp32) from the working copies' (``up``'s times the scale: d/d up of
        ``scale · up``); the working gradients are cleared. Returns the masters' gradients (a layer without one
        gets zeros)."""
        work = self.work_parameters()
        grads = [w.grad if w.grad is not None else torch.zeros_like(w) for w in work]
        torch._foreach_copy_(self._grads, grads)
        torch._foreach_mul_(self._grads[1::2], self.scale)
        for master, grad, w in zip(self.parameters(), self._grads, work, strict=True):
            master.grad = grad
            w.grad = None
        return self._grads

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
        self.refresh()

    def snapshot(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Detached fp32 CPU copies, ``key -> (down, up)``."""
        return {
            k: (self.down[k].detach().float().cpu().clone(), self.up[k].detach().float().cpu().clone())
            for k in self.down
        }
