"""Parse any supported LoRA state dict into one adapter per module: :func:`parse` -> :class:`ParsedLoRA`.

Families read (see ``docs/lora-formats.md``): kohya / sd-scripts (SD1/SD2/SDXL/FLUX, LoCon, Tucker ``lora_mid``),
LyCORIS LoHa / LoKr / full diffs, DoRA (``dora_scale``, PEFT ``lora_magnitude_vector``), diffusers attention
processors and ``lora_linear_layer`` (2023), diffusers ``lora.down/up``, diffusers / PEFT ``lora_A/lora_B`` with any
component prefix, FLUX BFL / ai-toolkit, FLUX diffusers, xlabs, OneTrainer, SimpleTuner (incl. ``lycoris_``),
Wan-Fun, BFL control LoRA bias diffs. Refused: cloneofsimo legacy files and state dicts with no adapter keys.

Parsing only groups and validates tensors; which model weight each module patches is ``lora_math.keymap``'s job.
Alpha: the module's ``.alpha`` tensor; for ``lora_A/B`` files without one, PEFT's config (header
``lora_adapter_metadata`` or a sidecar ``adapter_config.json``), else alpha = rank. Other files without ``.alpha``
get ``alpha=None`` (scale 1): diffusers ``lora.down/up`` and attention processors, xlabs, kohya without alpha.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ..errors import LoraFormatError
from .alpha import PeftAlpha
from .build import build_adapters, module_rank
from .detect import family_of, format_name, refuse_legacy, refuse_unknown
from .keys import group_keys
from .parsed import ParsedLoRA

__all__ = ["ParsedLoRA", "parse"]

_PEFT_SUFFIXES = ("lora_A", "lora_B")


def _alphas(modules, peft: PeftAlpha) -> dict[str, float | None]:
    """Alpha per module: its ``.alpha`` tensor; PEFT rules for ``lora_A/B`` modules; else None (scale 1)."""
    out: dict[str, float | None] = {}
    for name, mp in modules.items():
        alpha = mp.parts.get("shared", {}).get("alpha")
        if alpha is not None:
            if alpha.numel() != 1:
                raise LoraFormatError(
                    f"{mp.keys[('shared', 'alpha')]}: alpha must be a single number, found shape {list(alpha.shape)}"
                )
            out[name] = float(alpha.float().item())
            continue
        rank = module_rank(mp)
        if rank is not None and any(s.startswith(_PEFT_SUFFIXES) for s in mp.suffixes):
            out[name] = peft.alpha(name, rank)
        else:
            out[name] = None
    return out


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
    suffixes = set().union(*(mp.suffixes for mp in modules.values()))
    family = family_of((n for n in adapters if not n.endswith(".bias")), suffixes)
    return ParsedLoRA(
        format=format_name(family, adapters),
        modules=adapters,
        metadata=metadata,
        ignored=tuple(sorted(unknown + leftover)),
    )
