"""Parse any supported LoRA state dict into one adapter per module: :func:`parse` -> :class:`ParsedLoRA`.

Families read (see ``docs/lora-formats.md``): kohya / sd-scripts (SD1/SD2/SDXL/FLUX, LoCon, Tucker ``lora_mid``),
LyCORIS LoHa / LoKr / full diffs, DoRA (``dora_scale``, PEFT ``lora_magnitude_vector``), diffusers attention
processors and ``lora_linear_layer`` (2023), diffusers ``lora.down/up``, diffusers / PEFT ``lora_A/lora_B`` with any
component prefix, FLUX BFL / ai-toolkit, FLUX diffusers, xlabs, OneTrainer, SimpleTuner (incl. ``lycoris_``),
Wan-Fun, BFL FLUX control LoRAs (bias diffs, norm replacements, the widened ``img_in``: ``control``). Refused: cloneofsimo legacy files and state dicts with no adapter keys.

Parsing only groups and validates tensors; which model weight each module patches is ``lora_math.keymap``'s job.
Alpha: the module's ``.alpha`` tensor; for PEFT / diffusers key styles (``lora_A/B``, ``lora.down/up``,
``lora_linear_layer``) without one, the PEFT config (header ``lora_adapter_metadata``, per component, or a sidecar
``adapter_config.json``), else alpha = rank for ``lora_A/B`` and none for the others (scale 1 either way). Other files
without ``.alpha`` get ``alpha=None`` (scale 1): attention processors, xlabs, kohya without alpha. A ``.alpha`` that
the config contradicts is refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ..errors import LoraFormatError
from . import control
from .alpha import METADATA_KEY, PeftAlpha
from .build import build_adapters, module_rank
from .detect import family_of, format_name, refuse_legacy, refuse_unknown
from .keys import group_keys
from .parsed import ParsedLoRA

__all__ = ["ParsedLoRA", "parse"]

# Key styles whose writers (PEFT, diffusers) keep alpha out of the tensors: in ``lora_adapter_metadata`` (diffusers
# writes it for every component and key style it saves, old ``lora.down``/``lora_linear_layer`` names included) or in
# a sidecar ``adapter_config.json``.
_CONFIG_SUFFIXES = ("lora_A", "lora_B", "lora.down", "lora.up", "lora_linear_layer.")


def _alphas(modules, peft: PeftAlpha) -> dict[str, float | None]:
    """Alpha per module: its ``.alpha`` tensor; the PEFT config for PEFT/diffusers key styles; else None (scale 1).

    A ``.alpha`` tensor that a config contradicts (another scale for the same module) is refused, naming the key:
    which of the two the writer meant cannot be told, and half of the file at the wrong scale is worse than none."""
    out: dict[str, float | None] = {}
    for name, mp in modules.items():
        rank = module_rank(mp)
        alpha = mp.parts.get("shared", {}).get("alpha")
        if alpha is not None:
            key = mp.keys[("shared", "alpha")]
            if alpha.numel() != 1:
                raise LoraFormatError(f"{key}: alpha must be a single number, found shape {list(alpha.shape)}")
            out[name] = float(alpha.float().item())
            configured = peft.configured(name, rank) if rank is not None else None
            if configured is not None and not math.isclose(configured, out[name], rel_tol=1e-5, abs_tol=1e-8):
                raise LoraFormatError(
                    f"{key} = {out[name]:g} but the file's PEFT config ({METADATA_KEY} in the header, or "
                    f"adapter_config.json beside it) gives this module alpha {configured:g} "
                    f"(scale {configured / rank:g} against {out[name] / rank:g}); the file contradicts itself: "
                    "re-export it, or drop one of the two"
                )
            continue
        if rank is not None and any(s.startswith(_CONFIG_SUFFIXES) for s in mp.suffixes):
            out[name] = peft.alpha(name, rank) if peft.has_config else _default(mp, rank)
        else:
            out[name] = None
    return out


def _default(mp, rank: int) -> float | None:
    """No config: PEFT's ``lora_A/B`` default is alpha = r (scale 1); diffusers' other styles carry no alpha (None,
    scale 1 too)."""
    return float(rank) if any(s.startswith(("lora_A", "lora_B")) for s in mp.suffixes) else None


def parse(
    state_dict: Mapping[str, Tensor],
    metadata: Mapping[str, str] | None,
    sidecar_config: Mapping[str, Any] | None = None,
) -> ParsedLoRA:
    """Parse a LoRA state dict (tensors as stored) and its safetensors header metadata.

    ``sidecar_config``: the parsed ``adapter_config.json`` found beside a PEFT file, if any.
    Raises :class:`LoraFormatError` for refused or unrecognisable files and for incomplete modules, and
    :class:`LoraShapeError` when a module's own tensors disagree (e.g. up ``[out, 8]`` with down ``[4, in]``).
    """
    metadata = dict(metadata or {})
    keys = list(state_dict)
    refuse_legacy(keys)
    modules, unknown = group_keys(state_dict)
    if not modules:
        refuse_unknown(keys)
    adapters, leftover = build_adapters(modules, _alphas(modules, PeftAlpha(metadata, sidecar_config)))
    if not adapters:
        refuse_unknown(keys)
    widened: dict[str, tuple[int, ...]] = {}
    if control.is_control(keys):
        replacements, unknown = control.norm_replacements(state_dict, unknown)
        adapters.update(replacements)
        widened = control.widened_shapes(adapters)
        family = "flux-control"
    else:
        suffixes = set().union(*(mp.suffixes for mp in modules.values()))
        family = family_of((n for n in adapters if not n.endswith(".bias")), suffixes)
    return ParsedLoRA(
        format=format_name(family, adapters),
        modules=adapters,
        metadata=metadata,
        ignored=tuple(sorted(unknown + leftover)),
        widened=widened,
    )
