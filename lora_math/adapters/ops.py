"""The layer ops a bypass forward runs: ``F.linear`` / ``F.conv{1,2,3}d`` with the patched layer's conv settings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor

__all__ = ["CONV_DIMS", "KINDS", "ConvArgs", "Kind", "layer_op", "parse_conv_args"]

Kind = Literal["linear", "conv1d", "conv2d", "conv3d"]
CONV_DIMS: dict[str, int] = {"conv1d": 1, "conv2d": 2, "conv3d": 3}
KINDS: tuple[str, ...] = ("linear", *CONV_DIMS)
_CONV_FNS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_KEYS = ("stride", "padding", "dilation", "groups", "padding_mode", "kernel_size")


@dataclass(frozen=True)
class ConvArgs:
    """Normalised ``conv_args``. ``padding`` may stay a string ("same"/"valid"), as ``torch.nn.Conv*`` allows.

    ``kernel_size`` is only needed when neither the adapter nor the caller's ``weight=`` tells the kernel (a LoHa/LoKr
    stored flattened as ``[rank, in * kh * kw]``).
    """

    nd: int
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    groups: int = 1
    padding_mode: str = "zeros"
    kernel_size: tuple[int, ...] | None = None


def _tuple(name: str, value: Any, nd: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * nd
    items = tuple(int(v) for v in value)
    if len(items) != nd:
        raise ValueError(f"conv_args[{name!r}]: expected an int or {nd} ints for a {nd}-D conv, found {value!r}")
    return items


def parse_conv_args(conv_args: Mapping[str, Any] | None, nd: int) -> ConvArgs:
    """Validate a ``conv_args`` dict (keys as on ``torch.nn.Conv2d``: stride, padding, dilation, groups,
    padding_mode, plus optional kernel_size). Missing keys take the ``torch.nn.Conv*`` defaults."""
    args = dict(conv_args or {})
    unknown = sorted(set(args) - set(_CONV_KEYS))
    if unknown:
        raise ValueError(f"conv_args has unknown keys {unknown}; expected a subset of {list(_CONV_KEYS)}")
    padding = args.get("padding", 0)
    kernel = args.get("kernel_size")
    return ConvArgs(
        nd=nd,
        stride=_tuple("stride", args.get("stride", 1), nd),
        padding=padding if isinstance(padding, str) else _tuple("padding", padding, nd),
        dilation=_tuple("dilation", args.get("dilation", 1), nd),
        groups=int(args.get("groups", 1)),
        padding_mode=str(args.get("padding_mode", "zeros")),
        kernel_size=None if kernel is None else _tuple("kernel_size", kernel, nd),
    )


def _pad_pairs(padding: Sequence[int]) -> list[int]:
    # F.pad wants (last_lo, last_hi, ..., first_lo, first_hi), the reverse of the conv's per-dim order.
    pairs: list[int] = []
    for p in reversed(padding):
        pairs += [p, p]
    return pairs


def layer_op(x: Tensor, weight: Tensor, conv: ConvArgs | None, *, spatial: bool = True) -> Tensor:
    """``F.linear(x, weight)`` when ``conv`` is None, else the conv with ``conv``'s settings (no bias).

    ``spatial=False`` runs a pointwise conv (stride 1, no padding, groups 1): the 1x1 projections of a factorised
    LoRA, which must not re-apply the layer's stride or padding.
    """
    if conv is None:
        return F.linear(x, weight)
    fn = _CONV_FNS[conv.nd]
    if not spatial:
        return fn(x, weight)
    if conv.padding_mode != "zeros" and not isinstance(conv.padding, str):
        # Same as torch.nn.Conv*._conv_forward for reflect/replicate/circular padding.
        x = F.pad(x, _pad_pairs(conv.padding), mode=conv.padding_mode)
        return fn(x, weight, None, conv.stride, 0, conv.dilation, conv.groups)
    return fn(x, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
