"""LyCORIS LoKr (Kronecker product): ΔW = scale * kron(w1, w2), reshaped to the weight.

Each half is full (``lokr_w1`` / ``lokr_w2``) or factorised (``lokr_w*_a @ lokr_w*_b``; the second half optionally
Tucker with ``lokr_t2``). scale = alpha / rank with rank from ``w2_b`` (else ``w1_b``); with both halves full there is
no rank and the scale is 1 (alpha ignored), as in LyCORIS and ComfyUI.
Example: kron(``[32, 24]``, ``[40, 32]``) = ``[1280, 768]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import LoraShapeError
from .loha import tucker_product
from .shapes import coerce_alpha, fit_delta, fmt_shape, fp32, require_tensor, summarise

__all__ = ["LoKr", "diff_weight"]


def diff_weight(
    w1: Tensor | None = None,
    w1a: Tensor | None = None,
    w1b: Tensor | None = None,
    w2: Tensor | None = None,
    w2a: Tensor | None = None,
    w2b: Tensor | None = None,
    t2: Tensor | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Unscaled kron(w1, w2) in fp32.

    w1 ``[a, b]`` (or w1a ``[a, r]`` @ w1b ``[r, b]``); w2 ``[c, d]`` | ``[c, d, *k]`` (or w2a ``[c, r]`` @ w2b
    ``[r, d * prod(k)]``, or Tucker t2 ``[r, r, *k]`` with w2a ``[r, c]``, w2b ``[r, d]``).
    Returns ``[a*c, b*d]``, ``[a*c, b*d*prod(k)]`` or ``[a*c, b*d, *k]``; the caller reshapes to the weight.
    """
    left = fp32(w1, device) if w1 is not None else fp32(w1a, device) @ fp32(w1b, device)
    if w2 is not None:
        right = fp32(w2, device)
    elif t2 is not None:
        right = tucker_product(t2, w2a, w2b, device)
    else:
        right = fp32(w2a, device) @ fp32(w2b, device)
    if right.ndim > 2:
        # kron of [a, b, 1, 1] with [c, d, kh, kw] keeps the kernel and multiplies the channel dims.
        left = left.reshape(*left.shape, *[1] * (right.ndim - 2))
    # kron views its inputs; einsum (Tucker) can hand back a non-contiguous layout it cannot view.
    return torch.kron(left.contiguous(), right.contiguous())


@dataclass(frozen=True, eq=False)
class LoKr:
    """LoKr tensors as stored; exactly one of ``w1`` / (``w1a``, ``w1b``) and one of ``w2`` / (``w2a``, ``w2b``)."""

    w1: Tensor | None = None
    w1a: Tensor | None = None
    w1b: Tensor | None = None
    w2: Tensor | None = None
    w2a: Tensor | None = None
    w2b: Tensor | None = None
    t2: Tensor | None = None
    alpha: float | None = None
    dora_scale: Tensor | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", coerce_alpha("LoKr", self.alpha))
        self._check_half(1, self.w1, self.w1a, self.w1b)
        self._check_half(2, self.w2, self.w2a, self.w2b)
        if self.w1 is not None:
            require_tensor("LoKr", "w1", self.w1, (2,))
        if self.w2 is not None:
            require_tensor("LoKr", "w2", self.w2, (2, 3, 4, 5))
        if self.t2 is not None:
            if self.w2a is None:
                raise LoraShapeError("LoKr: lokr_t2 (Tucker core) needs the factorised lokr_w2_a / lokr_w2_b")
            require_tensor("LoKr", "t2", self.t2, (3, 4, 5))
            if tuple(self.t2.shape[:2]) != (self.w2a.shape[0], self.w2b.shape[0]):
                raise LoraShapeError(
                    f"LoKr: lokr_t2 has shape {fmt_shape(self.t2.shape)}; expected "
                    f"[{self.w2a.shape[0]}, {self.w2b.shape[0]}, *k] for lokr_w2_a {fmt_shape(self.w2a.shape)} "
                    f"and lokr_w2_b {fmt_shape(self.w2b.shape)}"
                )
        elif self.w2a is not None and self.w2a.shape[1] != self.w2b.shape[0]:
            raise LoraShapeError(
                f"LoKr: lokr_w2_a {fmt_shape(self.w2a.shape)} and lokr_w2_b {fmt_shape(self.w2b.shape)} do not chain; "
                "expected [c, r] and [r, d] with the same r"
            )
        if self.dora_scale is not None:
            require_tensor("LoKr", "dora_scale", self.dora_scale, (1, 2, 3, 4, 5))

    @staticmethod
    def _check_half(i: int, full: Tensor | None, a: Tensor | None, b: Tensor | None) -> None:
        if full is not None and (a is not None or b is not None):
            raise LoraShapeError(f"LoKr: found both lokr_w{i} and lokr_w{i}_a/_b; a half is either full or factorised")
        if full is None and (a is None or b is None):
            raise LoraShapeError(f"LoKr: half {i} needs lokr_w{i}, or both lokr_w{i}_a and lokr_w{i}_b")
        if full is None:
            require_tensor("LoKr", f"w{i}a", a, (2,))
            require_tensor("LoKr", f"w{i}b", b, (2,))
            if i == 1 and a.shape[1] != b.shape[0]:
                raise LoraShapeError(
                    f"LoKr: lokr_w1_a {fmt_shape(a.shape)} and lokr_w1_b {fmt_shape(b.shape)} do not chain; "
                    "expected [a, r] and [r, b] with the same r"
                )

    @property
    def rank(self) -> int | None:
        """From lokr_w2_b, else lokr_w1_b; None when both halves are full."""
        if self.w2b is not None:
            return int(self.w2b.shape[0])
        if self.w1b is not None:
            return int(self.w1b.shape[0])
        return None

    @property
    def scale(self) -> float:
        """alpha / rank, applied once in :meth:`delta_weight`; 1.0 without alpha or without a rank."""
        rank = self.rank
        return 1.0 if self.alpha is None or rank is None else self.alpha / rank

    def _left_shape(self) -> tuple[int, int]:
        if self.w1 is not None:
            return int(self.w1.shape[0]), int(self.w1.shape[1])
        return int(self.w1a.shape[0]), int(self.w1b.shape[1])

    def _right_rows_cols(self) -> tuple[int, int]:
        """(rows, flattened columns) of the second half."""
        if self.w2 is not None:
            return int(self.w2.shape[0]), math.prod(self.w2.shape[1:])
        if self.t2 is not None:
            return int(self.w2a.shape[1]), int(self.w2b.shape[1]) * math.prod(self.t2.shape[2:])
        return int(self.w2a.shape[0]), int(self.w2b.shape[1])

    @property
    def out_features(self) -> int:
        return self._left_shape()[0] * self._right_rows_cols()[0]

    @property
    def in_features(self) -> int:
        """Input channels (linear, or a conv half that keeps its kernel), else ``in * prod(k)`` flattened."""
        if self.w2 is not None:
            return self._left_shape()[1] * int(self.w2.shape[1])
        return self._left_shape()[1] * int(self.w2b.shape[1])

    @property
    def kernel_size(self) -> tuple[int, ...] | None:
        if self.w2 is not None and self.w2.ndim > 2:
            return tuple(self.w2.shape[2:])
        if self.t2 is not None:
            return tuple(self.t2.shape[2:])
        return None

    @property
    def fan_in(self) -> int:
        return self._left_shape()[1] * self._right_rows_cols()[1]

    def delta_weight(self, shape: Sequence[int], device: torch.device | str | None = None) -> Tensor:
        """fp32 kron(w1, w2) * scale fitted to ``shape`` (strength NOT applied)."""
        delta = diff_weight(self.w1, self.w1a, self.w1b, self.w2, self.w2a, self.w2b, self.t2, device) * self.scale
        return fit_delta(delta, shape, repr(self))

    def __repr__(self) -> str:
        return summarise(self, ("w1", "w1a", "w1b", "w2", "w2a", "w2b", "t2", "alpha", "dora_scale"))
