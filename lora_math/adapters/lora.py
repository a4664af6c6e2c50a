"""Plain LoRA, LoCon (conv) and Tucker LoRA (``lora_mid``): ΔW = scale * up @ down, scale = alpha / rank.

Trio: :func:`diff_weight` (unscaled ΔW), :meth:`LoRA.delta_weight` (scaled, fitted to the weight) and :func:`bypass`
(``up(mid(down(x)))`` without materialising ΔW). Merging lives in ``apply.merged_weight``. :func:`low_rank` is
the one linear low-rank forward: loaded LoRAs in bypass, the scheduled bank and the trainer's side paths all run it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import LoraShapeError
from .ops import ConvArgs, layer_op
from .shapes import coerce_alpha, fit_delta, fmt_shape, fp32, require_tensor, summarise

__all__ = ["LoRA", "bypass", "diff_weight", "low_rank", "up_project"]


def diff_weight(
    down: Tensor, up: Tensor, mid: Tensor | None = None, device: torch.device | str | None = None
) -> Tensor:
    """Unscaled ΔW in fp32, natural shape.

    down ``[r, in]`` | ``[r, in, *k]``; up ``[out, r]`` | ``[out, r, 1, ...]`` -> ``[out, in]`` | ``[out, in, *k]``.
    Tucker: down ``[r, in, 1, 1]``, mid ``[r, r, *k]``, up ``[out, r, 1, 1]`` -> ``[out, in, *k]``.
    """
    up2 = fp32(up, device).flatten(1)
    down2 = fp32(down, device).flatten(1)
    if mid is None:
        return (up2 @ down2).reshape(up.shape[0], *down.shape[1:])
    # ΔW[o, i, ...] = Σ_mn up[o, m] · mid[m, n, ...] · down[n, i]
    return torch.einsum("m n ..., o m, n i -> o i ...", fp32(mid, device), up2, down2)


def low_rank(
    x: Tensor, down: Tensor, up: Tensor, scale: float = 1.0, out: Tensor | None = None, *, inplace: bool = True
) -> Tensor:
    """``scale · up (down x)`` for a linear layer (``x [..., in]``, down ``[r, in]``, up ``[out, r]``), in x's dtype.

    The scale goes on the rank-r hidden, the smallest tensor on the path. Under autocast the factors are left as
    they are (autocast picks the dtype). With ``out`` (the base layer's output) the update is added to it as one
    ``addmm`` (scale, product and residual add in one kernel): in place when ``inplace`` and ``out`` is contiguous
    and of x's dtype (what a linear layer returns: sampling), else into a new tensor (training: autograd keeps
    ``out`` as it was, with no copy-on-write of a view).
    """
    if torch.is_autocast_enabled():
        down, up = down.to(x.device), up.to(x.device)
    else:
        down, up = down.to(device=x.device, dtype=x.dtype), up.to(device=x.device, dtype=x.dtype)
    return up_project(F.linear(x, down), up, scale, out, inplace=inplace)


def up_project(
    hidden: Tensor, up: Tensor, scale: float = 1.0, out: Tensor | None = None, *, inplace: bool = True
) -> Tensor:
    """The second half of :func:`low_rank`: ``scale · up hidden`` (``hidden [..., r]``), added to ``out`` when given
    (one ``addmm``; in place only when ``inplace`` and ``out`` is contiguous). For callers that compute ``hidden``
    themselves (one down-projection shared by several layers that read the same input)."""
    if out is None:
        return F.linear(hidden * scale if scale != 1.0 else hidden, up)
    if out.dtype != hidden.dtype or up.dtype != hidden.dtype:
        return out + F.linear(hidden * scale if scale != 1.0 else hidden, up).to(out.dtype)
    flat = hidden.reshape(-1, hidden.shape[-1])
    if inplace and out.is_contiguous():
        out.view(-1, out.shape[-1]).addmm_(flat, up.t(), alpha=scale)
        return out
    return torch.addmm(out.reshape(-1, out.shape[-1]), flat, up.t(), alpha=scale).view(out.shape)


def bypass(
    x: Tensor,
    lora: LoRA,
    multiplier: float,
    conv: ConvArgs | None,
    kernel: Sequence[int] | None = None,
) -> Tensor:
    """``multiplier * up(mid(down(x)))`` in ``x.dtype``: the LoRA's contribution to the layer output.

    x: linear ``[..., in]`` or conv ``[N, C_in, *spatial]`` (or unbatched ``[C_in, *spatial]``).
    ``multiplier`` is strength * alpha/rank, applied to the rank-r activation (the smallest tensor on the path).
    For conv, ``kernel`` is the layer's kernel size, used to unflatten a down stored as ``[r, in * prod(k)]``; the
    layer's stride/padding/dilation go on down (LoCon) or on mid (Tucker, where down and up are 1x1 projections).
    Grouped convs are not handled here (the low-rank factors do not factor through groups): materialise ΔW instead.
    """
    if conv is not None and conv.groups != 1:
        raise ValueError("lora.bypass: grouped convs need the materialised ΔW path (apply.bypass_forward does that)")
    if conv is None:
        return low_rank(x, lora.down.flatten(1), lora.up.flatten(1), multiplier)
    down = lora.down.to(device=x.device, dtype=x.dtype)
    up = lora.up.to(device=x.device, dtype=x.dtype)
    rank = lora.rank
    pointwise = [1] * conv.nd
    c_in = x.shape[-(conv.nd + 1)]
    if lora.mid is None:
        k = tuple(kernel) if kernel is not None else (tuple(down.shape[2:]) or tuple(pointwise))
        if down.numel() != rank * c_in * math.prod(k):
            raise LoraShapeError(
                f"LoRA down {fmt_shape(lora.down.shape)} does not fit a conv with {c_in} input channels and kernel "
                f"{fmt_shape(k)}; expected [{rank}, {c_in}, {', '.join(map(str, k))}]"
            )
        hidden = layer_op(x, down.reshape(rank, c_in, *k), conv)
    else:
        hidden = layer_op(x, down.reshape(rank, c_in, *pointwise), conv, spatial=False)
        hidden = layer_op(hidden, lora.mid.to(device=x.device, dtype=x.dtype), conv)
    return layer_op(hidden * multiplier, up.reshape(up.shape[0], up.shape[1], *pointwise), conv, spatial=False)


@dataclass(frozen=True, eq=False)
class LoRA:
    """One low-rank pair as stored in the file (any dtype; math runs in fp32).

    down ``[r, in]`` | ``[r, in, kh, kw]`` | Tucker ``[r, in, 1, 1]``; up ``[out, r]`` | ``[out, r, 1, 1]``;
    mid (Tucker core) ``[r, r, kh, kw]``; dora_scale ``[out]`` | ``[out, 1]`` | ``[1, in]``.
    ``alpha`` None means scale 1.0 (parsers that want the PEFT default pass ``alpha=rank``).
    """

    down: Tensor
    up: Tensor
    alpha: float | None = None
    mid: Tensor | None = None
    dora_scale: Tensor | None = None

    def __post_init__(self) -> None:
        require_tensor("LoRA", "down", self.down, (2, 3, 4, 5))
        require_tensor("LoRA", "up", self.up, (2, 3, 4, 5))
        object.__setattr__(self, "alpha", coerce_alpha("LoRA", self.alpha))
        rank = self.down.shape[0]
        if self.up.shape[1] != rank:
            raise LoraShapeError(
                f"LoRA: up {fmt_shape(self.up.shape)} does not match down {fmt_shape(self.down.shape)}; "
                f"expected up [out, {rank}] (up's second dimension is the rank, down's first)"
            )
        if any(d != 1 for d in self.up.shape[2:]):
            raise LoraShapeError(f"LoRA: up must be a 1x1 projection, found shape {fmt_shape(self.up.shape)}")
        if self.mid is not None:
            require_tensor("LoRA", "mid", self.mid, (3, 4, 5))
            if tuple(self.mid.shape[:2]) != (rank, rank):
                raise LoraShapeError(
                    f"LoRA: Tucker mid has shape {fmt_shape(self.mid.shape)}; expected [{rank}, {rank}, kh, kw] "
                    f"for down {fmt_shape(self.down.shape)}"
                )
            if any(d != 1 for d in self.down.shape[2:]):
                raise LoraShapeError(
                    f"LoRA: with a Tucker mid, down must be 1x1; found shape {fmt_shape(self.down.shape)}"
                )
        if self.dora_scale is not None:
            require_tensor("LoRA", "dora_scale", self.dora_scale, (1, 2, 3, 4, 5))

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        """alpha / rank, applied once in :meth:`delta_weight` and in :func:`bypass`; 1.0 without alpha."""
        return 1.0 if self.alpha is None else self.alpha / self.rank

    @property
    def out_features(self) -> int:
        return int(self.up.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.down.shape[1])

    @property
    def kernel_size(self) -> tuple[int, ...] | None:
        """The conv kernel the adapter implies, or None when it is stored as a matrix (kernel unknown)."""
        if self.mid is not None:
            return tuple(self.mid.shape[2:])
        return tuple(self.down.shape[2:]) or None

    @property
    def fan_in(self) -> int:
        """in * prod(kernel): the column count of ΔW flattened to a matrix."""
        spatial = self.mid.shape[2:] if self.mid is not None else self.down.shape[2:]
        return self.in_features * math.prod(spatial)

    def delta_weight(self, shape: Sequence[int], device: torch.device | str | None = None) -> Tensor:
        """fp32 ΔW * alpha/rank fitted to ``shape`` (strength NOT applied)."""
        return fit_delta(diff_weight(self.down, self.up, self.mid, device) * self.scale, shape, repr(self))

    def __repr__(self) -> str:
        return summarise(self, ("down", "up", "mid", "alpha", "dora_scale"))
