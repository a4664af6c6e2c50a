"""A stack's FLUX control LoRAs (``lora_math.formats.control``): checked against the rest before anything is patched.

Such a LoRA replaces the q/k norm scales and widens ``img_in`` (a Loom ``Replace`` adapter; a patch with a
``shape``). ComfyUI applies both itself, at load time, so they never take the in-place merge path. What cannot work
is refused here, naming the row and the file: a schedule on them (a replacement has no strength to follow; the
widened weight decides whether the model reads the control latent at all), and a LoRA that patches the narrow
``img_in`` after a control LoRA widened it (its delta no longer fits: core's loader drops it with a log line), or
through a scheduled bypass, which runs on the widened layer whatever the stack order.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...lora_math.adapters import Replace
from ...lora_math.names import keymap
from . import compat, model_info


def _live(spec, match: keymap.KeyMatch, own: dict) -> list[keymap.Patch]:
    """The spec's model patches that are applied at all (strength and block weight not 0)."""
    if spec.strength_model == 0:
        return []
    weight = spec.block_weight
    return [p for p in match.patches if p.key in own and (weight is None or float(weight(p.key)) != 0)]


def _scheduled(spec) -> bool:
    return spec.schedule is not None and not spec.schedule.is_constant


def _fmt(shape) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def check(model, specs: Sequence, matches: Sequence[keymap.KeyMatch]) -> frozenset[str]:
    """Raise ValueError for what cannot work (module docstring); returns the model keys that are or will be
    widened (by this stack, or by patches the model already carries from an earlier loader)."""
    if model is None:
        return frozenset()
    own = model_info.info(model).keys
    widened: dict[str, tuple[tuple[int, ...], str]] = {}  # key -> (shape, who widens it)
    for key, patches in model.patches.items():
        if key in own and (shape := compat.patched_shape(patches, key, own[key])) != own[key]:
            widened[key] = (shape, "an earlier LoRA loader on this model")
    seen = set(widened)  # widened before the stack's next LoRA is applied
    live = [_live(spec, match, own) for spec, match in zip(specs, matches, strict=True)]
    for spec, patches in zip(specs, live, strict=True):
        for p in patches:
            if p.shape is not None and p.key not in widened:
                widened[p.key] = (p.shape, f"'{spec.name}'")
    for spec, patches in zip(specs, live, strict=True):
        special = [p for p in patches if p.shape is not None or isinstance(p.adapter, Replace)]
        if special and _scheduled(spec):
            raise ValueError(
                f"{spec.input_name}: '{spec.name}' is a FLUX control LoRA ({special[0].key} and "
                f"{len(special) - 1} more are replaced or widened, not added to); those cannot follow a strength "
                "schedule: apply it without a schedule (or with a constant one)"
            )
        for p in patches:
            if p.key not in widened or p.shape is not None or isinstance(p.adapter, Replace):
                continue
            if p.key in seen or _scheduled(spec):
                shape, who = widened[p.key]
                raise ValueError(
                    f"{spec.input_name}: '{spec.name}' patches {p.key} as the model has it, {_fmt(own[p.key])}, but "
                    f"{who} widens it to {_fmt(shape)} (a FLUX control LoRA: image and control latent); "
                    + (
                        "a scheduled LoRA runs on the widened layer: apply it without a schedule, before the "
                        "control LoRA"
                        if _scheduled(spec)
                        else "apply it before the control LoRA (earlier in the stack or the chain of loaders)"
                    )
                )
        seen.update(p.key for p in patches if p.shape is not None)
    return frozenset(widened)
