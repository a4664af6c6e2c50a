"""LyCORIS LoHa (Hadamard product of two low-rank pairs): ΔW = scale * (w1a @ w1b) ⊙ (w2a @ w2b).

scale = alpha / w1b.shape[0] (1.0 without alpha). Trio: :func:`diff_weight`, :meth:`LoHa.delta_weight`, and the
materialising bypass in ``apply.bypass_forward`` (a Hadamard product has no cheaper factored forward).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import LoraShapeError
from .shapes import coerce_alpha, fit_delta, fmt_shape, fp32, require_tensor, summarise

__all__ = ["LoHa", "diff_weight", "tucker_product"]


def tucker_product(t: Tensor, wa: Tensor, wb: Tensor, device: torch.device | str | None = None) -> Tensor:
    """LyCORIS CP/Tucker reconstruction in fp32: t ``[r, r, *k]``, wa ``[r, out]``, wb ``[r, in]`` -> ``[out, in, *k]``.

    Note that in Tucker mode LyCORIS stores ``w*_a`` transposed (``[r, out]``), unlike the plain ``[out, r]``.
    """
    return torch.einsum("i j ..., j c, i o -> o c ...", fp32(t, device), fp32(wb, device), fp32(wa, device))


def diff_weight(
    w1a: Tensor,
    w1b: Tensor,
    w2a: Tensor,
    w2b: Tensor,
    t1: Tensor | None = None,
    t2: Tensor | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Unscaled ΔW in fp32.

    Plain: w*a ``[out, r]``, w*b ``[r, in * prod(k)]`` -> ``[out, in * prod(k)]`` (conv kernels stay flattened).
    Tucker: w*a ``[r, out]``, w*b ``[r, in]``, t* ``[r, r, *k]`` -> ``[out, in, *k]``.
    """
    if t1 is None or t2 is None:
        return (fp32(w1a, device) @ fp32(w1b, device)) * (fp32(w2a, device) @ fp32(w2b, device))
    return tucker_product(t1, w1a, w1b, device) * tucker_product(t2, w2a, w2b, device)


def _pair_shape(owner: str, wa: Tensor, wb: Tensor, t: Tensor | None, names: tuple[str, str, str]) -> tuple[int, ...]:
    """Shape of one reconstructed factor, after checking the pair (and its Tucker core) agree."""
    na, nb, nt = names
    if t is None:
        if wa.shape[1] != wb.shape[0]:
            raise LoraShapeError(
                f"{owner}: {na} {fmt_shape(wa.shape)} and {nb} {fmt_shape(wb.shape)} do not chain; "
                f"expected {na} [out, r] and {nb} [r, in] with the same r"
            )
        return (int(wa.shape[0]), int(wb.shape[1]))
    if tuple(t.shape[:2]) != (wa.shape[0], wb.shape[0]):
        raise LoraShapeError(
            f"{owner}: Tucker core {nt} has shape {fmt_shape(t.shape)}; expected [{wa.shape[0]}, {wb.shape[0]}, *k] "
            f"for {na} {fmt_shape(wa.shape)} and {nb} {fmt_shape(wb.shape)}"
        )
    return (int(wa.shape[1]), int(wb.shape[1]), *(int(d) for d in t.shape[2:]))


@dataclass(frozen=True, eq=False)
class LoHa:
    """LoHa tensors as stored (``hada_w1_a`` ... ``hada_t2``); see :func:`diff_weight` for their shapes."""

    w1a: Tensor
    w1b: Tensor
    w2a: Tensor
    w2b: Tensor
    alpha: float | None = None
    t1: Tensor | None = None
    t2: Tensor | None = None
    dora_scale: Tensor | None = None

    def __post_init__(self) -> None:
        for name in ("w1a", "w1b", "w2a", "w2b"):
            require_tensor("LoHa", name, getattr(self, name), (2,))
        object.__setattr__(self, "alpha", coerce_alpha("LoHa", self.alpha))
        if (self.t1 is None) != (self.t2 is None):
            raise LoraShapeError("LoHa: Tucker cores come in pairs; found only one of hada_t1 / hada_t2")
        if self.t1 is not None:
            require_tensor("LoHa", "t1", self.t1, (3, 4, 5))
            require_tensor("LoHa", "t2", self.t2, (3, 4, 5))
        first = _pair_shape("LoHa", self.w1a, self.w1b, self.t1, ("hada_w1_a", "hada_w1_b", "hada_t1"))
        second = _pair_shape("LoHa", self.w2a, self.w2b, self.t2, ("hada_w2_a", "hada_w2_b", "hada_t2"))
        if first != second:
            raise LoraShapeError(
                f"LoHa: the two factors reconstruct to {fmt_shape(first)} and {fmt_shape(second)}; "
                "a Hadamard product needs equal shapes"
            )
        if self.dora_scale is not None:
            require_tensor("LoHa", "dora_scale", self.dora_scale, (1, 2, 3, 4, 5))

    @property
    def _tucker(self) -> bool:
        return self.t1 is not None

    @property
    def rank(self) -> int:
        return int(self.w1b.shape[0])

    @property
    def scale(self) -> float:
        """alpha / hada_w1_b.shape[0], applied once in :meth:`delta_weight`; 1.0 without alpha."""
        return 1.0 if self.alpha is None else self.alpha / self.rank

    @property
    def out_features(self) -> int:
        return int(self.w1a.shape[1] if self._tucker else self.w1a.shape[0])

    @property
    def in_features(self) -> int:
        """Input channels (Tucker, linear), or ``in * prod(k)`` for a plain conv LoHa, which stores columns flattened."""
        return int(self.w1b.shape[1])

    @property
    def kernel_size(self) -> tuple[int, ...] | None:
        return tuple(self.t1.shape[2:]) if self.t1 is not None else None

    @property
    def fan_in(self) -> int:
        spatial = self.t1.shape[2:] if self.t1 is not None else ()
        return int(self.w1b.shape[1]) * math.prod(spatial)

    def delta_weight(self, shape: Sequence[int], device: torch.device | str | None = None) -> Tensor:
        """fp32 ΔW * alpha/rank fitted to ``shape`` (strength NOT applied)."""
        delta = diff_weight(self.w1a, self.w1b, self.w2a, self.w2b, self.t1, self.t2, device) * self.scale
        return fit_delta(delta, shape, repr(self))

    def __repr__(self) -> str:
        return summarise(self, ("w1a", "w1b", "w2a", "w2b", "t1", "t2", "alpha", "dora_scale"))
