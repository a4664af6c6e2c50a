"""Applying an adapter: :func:`merged_weight` (patch the weight) and :func:`bypass_forward` (patch the output).

Both give the same layer output up to rounding; the unit tests hold them to a per-dtype tolerance table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import LoraShapeError
from . import lora as lora_mod
from .dora import weight_decompose
from .full import Full
from .loha import LoHa
from .lokr import LoKr
from .lora import LoRA
from .ops import CONV_DIMS, KINDS, ConvArgs, layer_op, parse_conv_args
from .replace import Replace
from .shapes import fmt_shape, fp32

__all__ = ["Adapter", "bypass_delta", "bypass_forward", "merged_bias", "merged_weight"]

Adapter = LoRA | LoHa | LoKr | Full | Replace


def _merged_fp32(weight: Tensor, adapter: Adapter, strength: float) -> Tensor:
    if isinstance(adapter, Replace):
        return adapter.replaced(weight.shape, device=weight.device)
    delta = adapter.delta_weight(weight.shape, device=weight.device)
    dora_scale = getattr(adapter, "dora_scale", None)
    if dora_scale is None:
        return fp32(weight) + strength * delta
    return weight_decompose(weight, delta, dora_scale, strength, owner=repr(adapter))


def merged_weight(weight: Tensor, adapter: Adapter, strength: float) -> Tensor:
    """A new tensor ``W + strength * ΔW`` (or the DoRA merge, see ``dora.py``) in ``weight.dtype``.

    weight: the layer weight ``[out, in, *k]`` (any float dtype; left untouched, so keeping it is the unpatch).
    ΔW carries alpha/rank already (``adapter.delta_weight``); ``strength`` is applied here. A :class:`Replace` gives
    its value whatever the strength (as core's "set" patch).
    """
    # Everything is computed in fp32 and cast to the weight's dtype exactly once, here: casting the delta first and
    # adding in fp16/bf16 would round twice and lose small deltas against large weights.
    return _merged_fp32(weight, adapter, strength).to(weight.dtype)


def merged_bias(bias: Tensor, adapter: Adapter, strength: float) -> Tensor:
    """``bias + strength * diff_b`` for a :class:`Full` with ``diff_b`` (fp32 math, one cast); otherwise ``bias``."""
    if isinstance(adapter, Full) and adapter.diff_b is not None:
        return (fp32(bias) + strength * adapter.delta_bias(bias.shape, device=bias.device)).to(bias.dtype)
    return bias


def _channel_dim(x: Tensor, kind: str) -> int:
    return -1 if kind == "linear" else -(CONV_DIMS[kind] + 1)


def _weight_shape(adapter: Adapter, x: Tensor, kind: str, conv: ConvArgs | None) -> tuple[int, ...]:
    """The patched layer's weight shape, from the adapter and the input when the caller did not pass ``weight=``."""
    in_channels = int(x.shape[_channel_dim(x, kind)])
    if conv is None:
        return (adapter.out_features, in_channels)
    in_per_group = in_channels // conv.groups
    kernel = conv.kernel_size or adapter.kernel_size
    if kernel is None:
        if adapter.fan_in not in (None, in_per_group):
            raise LoraShapeError(
                f"{adapter!r}: stores a conv kernel flattened ({adapter.fan_in} columns for {in_per_group} input "
                "channels per group), so its kernel size is unknown; pass weight=<layer weight> or "
                "conv_args['kernel_size']"
            )
        kernel = (1,) * conv.nd
    return (adapter.out_features, in_per_group, *kernel)


def _check_io(adapter: Adapter, x: Tensor, base_out: Tensor, kind: str, shape: Sequence[int]) -> None:
    dim = _channel_dim(x, kind)
    if base_out.shape[dim] != shape[0]:
        raise LoraShapeError(
            f"{adapter!r}: the layer outputs {base_out.shape[dim]} features (base_out {fmt_shape(base_out.shape)}) "
            f"but the adapter produces {shape[0]}; it was mapped to the wrong layer or made for another model"
        )
    if kind != "linear":
        return  # conv fan-in mismatches surface as LoraShapeError from delta_weight / lora.bypass
    expected = adapter.fan_in if adapter.fan_in is not None else shape[1]
    if x.shape[-1] != expected or x.shape[-1] != shape[1]:
        raise LoraShapeError(
            f"{adapter!r}: expected inputs with {expected} features, found x of shape {fmt_shape(x.shape)}"
        )


def bypass_forward(
    adapter: Adapter,
    x: Tensor,
    base_out: Tensor,
    strength: float,
    *,
    kind: str,
    conv_args: Mapping[str, Any] | None = None,
    weight: Tensor | None = None,
) -> Tensor:
    """``base_out + strength * Δ(x)``: the layer output with the adapter applied, weight untouched.

    x: layer input (linear ``[..., in]``, conv ``[N, C_in, *spatial]``); base_out: the unpatched layer's output
    (bias included). kind: "linear", "conv1d", "conv2d" or "conv3d". conv_args: the layer's ``stride``, ``padding``,
    ``dilation``, ``groups``, ``padding_mode`` (``torch.nn.Conv*`` defaults when missing) and optionally
    ``kernel_size``. weight: the layer's base weight; optional, except for DoRA. See :func:`bypass_delta`.
    """
    return base_out + bypass_delta(adapter, x, base_out, strength, kind=kind, conv_args=conv_args, weight=weight)


def bypass_delta(
    adapter: Adapter,
    x: Tensor,
    base_out: Tensor,
    strength: float,
    *,
    kind: str,
    conv_args: Mapping[str, Any] | None = None,
    weight: Tensor | None = None,
) -> Tensor:
    """``strength * Δ(x)`` in ``base_out.dtype``, the adapter's contribution to the layer output; ``base_out`` is only
    read for its shape (checked against the adapter) and dtype. Arguments as :func:`bypass_forward`.

    LoRA runs factored, ``up(mid(down(x)))`` with strength * alpha/rank on the rank-r activation, never building ΔW
    (grouped convs excepted). LoHa, LoKr and Full materialise ΔW (fp32, scaled, times strength, cast once to
    ``x.dtype``) and run the layer op with it; Full's ``diff_b`` is added as a bias. DoRA needs the base weight, since
    its magnitude rescales the whole of ``W + ΔW``: it materialises ``merged - W`` in fp32 and runs the op with that.
    Without ``weight=`` a DoRA adapter raises NotImplementedError (patch the weight with :func:`merged_weight`).
    Every case is linear in ``strength`` (DoRA's too: ``W + s·(W' − W)``).
    """
    if kind not in KINDS:
        raise ValueError(f"bypass_forward: kind must be one of {list(KINDS)}, found {kind!r}")
    if isinstance(adapter, Replace):
        raise NotImplementedError(
            f"{adapter!r} replaces the layer's weight whatever the strength, so it has no output-side form: patch the "
            "weight with merged_weight() instead"
        )
    conv = parse_conv_args(conv_args, CONV_DIMS[kind]) if kind != "linear" else None
    if conv is None and conv_args:
        raise ValueError(f"bypass_forward: conv_args {dict(conv_args)} given for a linear layer")
    shape = tuple(weight.shape) if weight is not None else _weight_shape(adapter, x, kind, conv)
    _check_io(adapter, x, base_out, kind, shape)

    dora_scale = getattr(adapter, "dora_scale", None)
    if dora_scale is not None:
        if weight is None:
            raise NotImplementedError(
                f"{adapter!r}: DoRA rescales the whole weight W + ΔW, so bypass_forward needs the layer's base weight: "
                "pass weight=<layer weight>, or patch the weight with merged_weight() instead"
            )
        w = weight.to(device=x.device)
        effective = _merged_fp32(w, adapter, strength) - fp32(w)  # fp32: strength * (W' - W)
        delta_out = layer_op(x, effective.to(x.dtype), conv)  # the one cast, to the activation dtype
    elif isinstance(adapter, LoRA) and (conv is None or conv.groups == 1):
        kernel = shape[2:] if conv is not None else None
        delta_out = lora_mod.bypass(x, adapter, strength * adapter.scale, conv, kernel)
    elif isinstance(adapter, Full) and adapter.diff is None:
        delta_out = torch.zeros((), dtype=x.dtype, device=x.device)  # bias-only: only diff_b, added below
    else:
        effective = adapter.delta_weight(shape, device=x.device) * strength  # fp32, alpha/rank and strength applied
        delta_out = layer_op(x, effective.to(x.dtype), conv)  # the one cast, to the activation dtype

    if isinstance(adapter, Full) and adapter.diff_b is not None:
        bias = (adapter.delta_bias((shape[0],), device=x.device) * strength).to(x.dtype)
        delta_out = delta_out + (bias if conv is None else bias.reshape(-1, *[1] * conv.nd))
    return delta_out.to(base_out.dtype)
