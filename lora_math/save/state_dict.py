"""The tensors of a saved LoRA, kohya style.

Every module gets ``NAME.lora_down.weight`` (``[r, in]``, conv ``[r, in, kh, kw]``), ``NAME.lora_up.weight``
(``[out, r]``, conv ``[out, r, 1, 1]``) in the save dtype and ``NAME.alpha`` (a 0-dim fp32 tensor: kohya writes it in
the save dtype, but an alpha such as 7.3 would then change in bf16, and every reader takes ``alpha.item()`` whatever
the dtype); ranks and alphas may differ per module (``LoomLoRA.alpha_of``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .result import LoomLoRA


def _cast(name: str, t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` on the CPU in ``dtype``; ValueError when it holds NaN/Inf or overflows ``dtype`` (fp16 tops at 65504)."""
    t = t.detach().to("cpu", torch.float32)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: the factors hold NaN/Inf (did training diverge?); nothing was saved")
    cast = t.to(dtype).contiguous()
    if not torch.isfinite(cast).all():
        raise ValueError(
            f"{name}: values up to {t.abs().max().item():.3g} do not fit {dtype}; use save_dtype bf16 or fp32"
        )
    return cast


def _check_factors(key: str, down: Tensor, up: Tensor) -> None:
    """ValueError naming ``key`` unless ``down``/``up`` are kohya LoRA factors: linear or conv (LoCon)."""
    expected = "down [r, in] and up [out, r] (linear) or down [r, in, kh, kw] and up [out, r, 1, 1] (conv)"
    if (
        down.ndim != up.ndim
        or down.ndim not in (2, 4)
        or down.shape[0] != up.shape[1]
        or down.shape[0] == 0
        or any(d != 1 for d in up.shape[2:])
    ):
        raise ValueError(f"{key}: factors must be {expected}; got {list(down.shape)} and {list(up.shape)}")


def layer_key(key: str) -> str:
    """The layer weight key a model key names: ``X.bias`` -> ``X.weight`` (a bias diff is saved under its layer's
    name), weight keys unchanged."""
    return key[: -len(".bias")] + ".weight" if key.endswith(".bias") else key


def named_keys(lora: LoomLoRA) -> list[str]:
    """The model keys :func:`kohya_names` must name for :func:`to_state_dict`: the modules, and the layers of the
    full diffs."""
    return list(dict.fromkeys([*lora.modules, *(layer_key(k) for k in lora.diffs)]))


def to_state_dict(lora: LoomLoRA, names: Mapping[str, str], dtype: torch.dtype = torch.float16) -> dict[str, Tensor]:
    """kohya tensors: ``NAME.lora_down.weight``, ``NAME.lora_up.weight`` (``dtype``), ``NAME.alpha`` (0-dim fp32);
    full diffs as ``NAME.diff`` (a 1-D weight's) and ``NAME.diff_b`` (a bias's), in ``dtype``.

    Factors are written as given: linear ``down [r, in]``, ``up [out, r]``, or conv (LoCon) ``down [r, in, kh, kw]``,
    ``up [out, r, 1, 1]``; ``NAME.alpha`` is ``lora.alpha_of(key)`` (each module's own alpha when ``module_alpha``
    gives one), so ``ΔW = alpha / r · up @ down`` for every module whatever its rank. ``names``: from
    ``kohya_names(named_keys(lora), …)``.
    """
    if not lora.modules and not lora.diffs:
        raise ValueError("lora: the LoRA holds no modules; nothing to save")
    out: dict[str, Tensor] = {}
    for key, (down, up) in lora.modules.items():
        name = names.get(key)
        if name is None:
            raise ValueError(f"{key}: no kohya name for this module (names were made for another model?)")
        _check_factors(key, down, up)
        for part, t in (("lora_down", down), ("lora_up", up)):
            out[f"{name}.{part}.weight"] = _cast(f"{key} {part}", t, dtype)
        out[f"{name}.alpha"] = torch.tensor(lora.alpha_of(key), dtype=torch.float32)
    for key, diff in lora.diffs.items():
        name = names.get(layer_key(key))
        if name is None:
            raise ValueError(f"{key}: no kohya name for this weight's layer (names were made for another model?)")
        out[f"{name}.diff_b" if key.endswith(".bias") else f"{name}.diff"] = _cast(f"{key} diff", diff, dtype)
    return out
