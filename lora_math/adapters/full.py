"""Full-rank differences: ``.diff`` (ΔW of the weight's shape) and ``.diff_b`` (Δ of the bias). Scale is always 1."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import LoraShapeError
from .shapes import DenseShape, fit_delta, fmt_shape, fp32, require_tensor, summarise

__all__ = ["Full"]


@dataclass(frozen=True, eq=False)
class Full(DenseShape):
    """diff: ΔW ``[out, in, *k]`` (or any weight's shape, e.g. a norm's ``[C]``); diff_b: Δbias ``[out]``.

    At least one is set. A Full with only ``diff_b`` is a bias patch (see :meth:`delta_weight`).
    """

    diff: Tensor | None = None
    diff_b: Tensor | None = None

    def __post_init__(self) -> None:
        if self.diff is None and self.diff_b is None:
            raise LoraShapeError("Full: needs .diff, .diff_b or both; found neither")
        if self.diff is not None:
            require_tensor("Full", "diff", self.diff, (1, 2, 3, 4, 5))
        if self.diff_b is not None:
            require_tensor("Full", "diff_b", self.diff_b, (1,))
            if self.diff is not None and self.diff.shape[0] != self.diff_b.shape[0]:
                raise LoraShapeError(
                    f"Full: diff {fmt_shape(self.diff.shape)} and diff_b {fmt_shape(self.diff_b.shape)} disagree on "
                    "the output size; expected diff_b [out] with out = diff.shape[0]"
                )

    @property
    def dense(self) -> Tensor | None:
        return self.diff

    @property
    def out_features(self) -> int:
        return int(self.diff.shape[0] if self.diff is not None else self.diff_b.shape[0])

    def delta_weight(self, shape: Sequence[int], device: torch.device | str | None = None) -> Tensor:
        """fp32 ``diff`` fitted to ``shape`` (strength NOT applied).

        A bias-only Full (``diff_b`` alone) is a patch for the bias tensor itself (parsers key it ``"<module>.bias"``),
        so its delta is ``diff_b``: merged on the bias it patches it, merged on a matrix it fails loudly.
        """
        if self.diff is None:
            return fit_delta(fp32(self.diff_b, device), shape, repr(self))
        return fit_delta(fp32(self.diff, device), shape, repr(self))

    def delta_bias(self, shape: Sequence[int], device: torch.device | str | None = None) -> Tensor:
        """fp32 ``diff_b`` fitted to the bias ``shape`` (zeros without ``diff_b``; strength NOT applied)."""
        if self.diff_b is None:
            return torch.zeros(tuple(shape), dtype=torch.float32, device=self.diff.device if device is None else device)
        return fit_delta(fp32(self.diff_b, device), shape, repr(self) + " (bias)")

    def __repr__(self) -> str:
        return summarise(self, ("diff", "diff_b"))
