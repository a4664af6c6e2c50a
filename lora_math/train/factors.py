"""Trainable LoRA factors: fp32 masters for the optimizer, working copies in the model's compute dtype for the layers.

Each step the forward runs on working copies (the scale folded into ``up``): no cast and no scale per layer call,
and the side path is one ``addmm`` into the layer's output (``adapters.lora.low_rank``). After backward the
working gradients become the masters' (:meth:`LoraFactors.gather_grads`, the chain rule of the fold included);
after the optimizer step the copies are refreshed (:meth:`LoraFactors.refresh`). Both are a few multi-tensor
(``torch._foreach_*``) launches for all layers together, not one per layer.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..adapters.lora import low_rank, up_project


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
        groups: Sequence[Sequence[str]] = (),
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
        # Layers that read one input (q/k/v of self-attention, k/v of cross-attention) share one down-projection:
        # their work_down are row blocks of one leaf, run as one matmul (its backward too).
        self._groups: list[_Shared] = []
        self._group_of: dict[str, tuple[_Shared, int]] = {}
        for keys in groups:
            keys = [k for k in dict.fromkeys(keys) if k in self.down and k not in self._group_of]
            if len(keys) < 2 or len({self.down[k].shape[1] for k in keys}) != 1:
                continue
            shared = _Shared(torch.empty(len(keys) * self.rank, self.down[keys[0]].shape[1], **work), self.rank)
            self._groups.append(shared)
            self._group_of |= {k: (shared, i) for i, k in enumerate(keys)}
        self.work_down = {
            k: self._group_of[k][0].rows(self._group_of[k][1])
            if k in self._group_of
            else torch.empty(d.shape, **work).requires_grad_(True)
            for k, d in self.down.items()
        }
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

    def leaves(self) -> list[Tensor]:
        """The tensors autograd differentiates: ungrouped ``work_down``, each shared down-projection, every
        ``work_up``."""
        downs = [w for k, w in self.work_down.items() if k not in self._group_of]
        return [*downs, *(g.leaf for g in self._groups), *self.work_up.values()]

    def apply(self, key: str, x: Tensor, out: Tensor) -> Tensor:
        """The layer ``key``'s output ``out`` (for input ``x``) with this LoRA's update added: one ``addmm`` (and
        the down-projection, once for the layers that share ``x``)."""
        found = self._group_of.get(key)
        if found is None:
            return low_rank(x, self.work_down[key], self.work_up[key], out=out, inplace=False)
        shared, index = found
        return up_project(shared.hidden(x, index), self.work_up[key], out=out, inplace=False)

    @torch.no_grad()
    def refresh(self) -> None:
        """The working copies from the masters: ``down`` cast, ``scale · up`` cast (after an optimizer step, a load)."""
        downs, ups = list(self.down.values()), list(self.up.values())
        for shared in self._groups:
            shared.forget()
        torch._foreach_copy_(list(self.work_down.values()), downs)
        torch._foreach_copy_(list(self.work_up.values()), torch._foreach_mul(ups, self.scale))

    @torch.no_grad()
    def gather_grads(self) -> list[Tensor]:
        """The masters' gradients (fp32) from the working copies' (``up``'s times the scale: d/d up of
        ``scale · up``); the working gradients are cleared. Returns the masters' gradients (a layer without one
        gets zeros)."""
        grads = []
        for key in self.down:
            found = self._group_of.get(key)
            down = found[0].grad_rows(found[1]) if found else self.work_down[key].grad
            grads += [down, self.work_up[key].grad]
        work = self.work_parameters()
        grads = [g if g is not None else torch.zeros_like(w) for g, w in zip(grads, work, strict=True)]
        torch._foreach_copy_(self._grads, grads)
        torch._foreach_mul_(self._grads[1::2], self.scale)
        for master, grad in zip(self.parameters(), self._grads, strict=True):
            master.grad = grad
        for leaf in self.leaves():
            leaf.grad = None
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


class _Shared:
    """One down-projection for the layers that read one input: a leaf ``[n · r, in]`` whose row blocks are their
    ``work_down``. The first of them called with an input runs it for all; the others take their part, and once
    each has, it is forgotten: a checkpointed block's recomputation (which sees the same input tensor again) runs
    it afresh, as the forward did. Any other input, or a layer called twice, runs it afresh too, so a wrong
    grouping is only slower."""

    def __init__(self, leaf: Tensor, rank: int) -> None:
        self.leaf = leaf.requires_grad_(True)
        self.rank = rank
        self.size = leaf.shape[0] // rank
        self.forget()

    def rows(self, index: int) -> Tensor:
        """The row block of layer ``index``: a view (refresh copies into it; autograd reaches the leaf)."""
        return self.leaf.detach()[index * self.rank : (index + 1) * self.rank]

    def grad_rows(self, index: int) -> Tensor | None:
        grad = self.leaf.grad
        return None if grad is None else grad[index * self.rank : (index + 1) * self.rank]

    def hidden(self, x: Tensor, index: int) -> Tensor:
        """Layer ``index``'s ``down x``."""
        if torch.compiler.is_compiling():  # no identity bookkeeping in a traced graph; inductor plans the GEMMs
            rows = self.leaf[index * self.rank : (index + 1) * self.rank]
            return torch.nn.functional.linear(x, rows.to(x.dtype))
        if self._input is None or self._input() is not x or index in self._served:
            self._parts = torch.nn.functional.linear(x, self.leaf.to(x.dtype)).split(self.rank, dim=-1)
            self._input, self._served = weakref.ref(x), set()
        part = self._parts[index]
        self._served.add(index)
        if len(self._served) == self.size:
            self.forget()
        return part

    def forget(self) -> None:
        self._input: weakref.ref | None = None
        self._parts: tuple[Tensor, ...] = ()
        self._served: set[int] = set()
