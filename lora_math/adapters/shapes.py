"""Shape and dtype helpers shared by the adapter modules.

Every adapter computes its delta in a "natural" shape (``[out, in]``, ``[out, in, *k]`` or ``[out, in * prod(k)]``) and
then fits it to the weight it patches with :func:`fit_delta`; the checks here produce the error messages users see.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import LoraFormatError, LoraShapeError

__all__ = [
    "DenseShape",
    "coerce_alpha",
    "fit_delta",
    "fp32",
    "fmt_shape",
    "require_tensor",
    "summarise",
]


def fmt_shape(shape: Sequence[int]) -> str:
    """``[320, 768]`` style, the way shapes are quoted in every message."""
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def fp32(t: Tensor, device: torch.device | str | None = None) -> Tensor:
    """``t`` as fp32 on ``device`` (default: where it is). All delta math runs in fp32 whatever the file stored."""
    return t.to(device=t.device if device is None else device, dtype=torch.float32)


def require_tensor(owner: str, name: str, value: Any, ndims: Sequence[int]) -> None:
    """Raise :class:`LoraShapeError` unless ``value`` is a floating tensor with one of ``ndims`` dimensions."""
    if not isinstance(value, Tensor):
        raise LoraShapeError(f"{owner}.{name}: expected a tensor, found {type(value).__name__}")
    if not value.is_floating_point():
        raise LoraShapeError(f"{owner}.{name}: expected a floating-point tensor, found dtype {value.dtype}")
    if value.ndim not in ndims:
        wanted = " or ".join(f"{n}-D" for n in ndims)
        raise LoraShapeError(f"{owner}.{name}: expected a {wanted} tensor, found shape {fmt_shape(value.shape)}")


def coerce_alpha(owner: str, alpha: Any) -> float | None:
    """Normalise ``alpha`` (float, int, 0-d or 1-element tensor, numpy scalar, or None) to ``float | None``.

    Parsers read alpha straight from the file, where it is a 0-d tensor (often fp16); the dataclasses store a float so
    that ``scale`` is plain arithmetic and the adapters stay hashable by identity.
    """
    if alpha is None:
        return None
    if isinstance(alpha, Tensor):
        if alpha.numel() != 1:
            raise LoraFormatError(f"{owner}.alpha: expected a scalar, found a tensor of shape {fmt_shape(alpha.shape)}")
        alpha = alpha.item()
    try:
        value = float(alpha)
    except (TypeError, ValueError) as exc:
        raise LoraFormatError(f"{owner}.alpha: expected a number, found {alpha!r}") from exc
    if not math.isfinite(value):
        raise LoraFormatError(f"{owner}.alpha: expected a finite number, found {value}")
    return value


def fit_delta(delta: Tensor, shape: Sequence[int], owner: str) -> Tensor:
    """Reshape a natural-shaped delta ``[out, ...]`` to the weight's ``shape``.

    Accepted when the shapes are equal, or when the element counts match and the output dimension (rows) agrees: that
    covers a 1x1 conv stored as a linear ``[out, in]`` (and the reverse), and conv deltas computed flattened as
    ``[out, in * kh * kw]``. A row mismatch with a matching element count (e.g. a transposed weight) is refused rather
    than silently scrambled.
    """
    target = torch.Size(int(d) for d in shape)
    if delta.shape == target:
        return delta
    if delta.numel() == target.numel() and delta.ndim > 0 and len(target) > 0 and delta.shape[0] == target[0]:
        return delta.reshape(target)
    raise LoraShapeError(
        f"{owner}: the weight it patches has shape {fmt_shape(target)} ({target.numel()} values) but the adapter's delta "
        f"has shape {fmt_shape(delta.shape)} ({delta.numel()} values); expected {target[0] if len(target) else '?'} "
        "output rows and the same number of values. The LoRA was likely made for a different base model, or its keys "
        "were mapped to the wrong layer."
    )


def summarise(obj: object, fields: Sequence[str]) -> str:
    """Compact repr: tensors as ``name=[shape] dtype`` instead of their values (a LoRA repr would print megabytes)."""
    parts = []
    for name in fields:
        value = getattr(obj, name)
        if value is None:
            continue
        if isinstance(value, Tensor):
            parts.append(f"{name}={fmt_shape(value.shape)} {str(value.dtype).removeprefix('torch.')}")
        else:
            parts.append(f"{name}={value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"


class DenseShape:
    """The shape facts of an adapter whose change is one dense tensor, ``dense`` (None: a bias-only change), as the
    adapter protocol asks them: no rank, scale 1, and the sizes read off the tensor (None for a 1-D norm's)."""

    @property
    def dense(self) -> Tensor | None:
        raise NotImplementedError

    @property
    def rank(self) -> None:
        return None

    @property
    def scale(self) -> float:
        """Always 1.0: a dense change carries no alpha."""
        return 1.0

    @property
    def out_features(self) -> int:
        return int(self.dense.shape[0])

    @property
    def in_features(self) -> int | None:
        """None for a 1-D (norm) tensor."""
        d = self.dense
        return int(d.shape[1]) if d is not None and d.ndim > 1 else None

    @property
    def kernel_size(self) -> tuple[int, ...] | None:
        d = self.dense
        return tuple(d.shape[2:]) if d is not None and d.ndim > 2 else None

    @property
    def fan_in(self) -> int | None:
        d = self.dense
        return math.prod(d.shape[1:]) if d is not None and d.ndim > 1 else None
