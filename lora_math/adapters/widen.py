"""Which model weights a LoRA may widen: a BFL FLUX control LoRA's ``img_in`` (see ``formats.control``).

The widened weight is the model's zero-padded to the file's shape, plus the delta: its first columns read the noisy
latent as before, the new ones the control latent. Only FLUX.1 models take that input: ComfyUI's
``model_base.Flux.concat_cond`` sizes the conditioning from ``img_in``'s width, and the FLUX.1 [dev] blocks are what
the file was trained on. Chroma and FLUX.2 share the class but not the blocks (Chroma has no per-block modulation,
FLUX.2 another latent), so a control LoRA is refused there, as on any other model, before anything is patched.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["CONTROL_FAMILIES", "widen_problem"]

CONTROL_FAMILIES = ("flux",)


def _fmt(shape) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def widen_problem(
    name: str,
    delta_shape: tuple[int, ...],
    key: str | None,
    shapes: Mapping[str, tuple[int, ...]],
    family: str,
) -> str | None:
    """Why module ``name``, whose delta is ``delta_shape``, cannot widen the model weight ``key`` (None: the model
    lacks it) of a model of ``family``; None when it can (the weight is no wider than the delta, same rows)."""
    what = (
        f"{name}: this FLUX.1 control LoRA's {name} takes {delta_shape[1]} input features ({name}.lora_A.weight: "
        "the image latent and the control image's latent side by side)"
    )
    fix = "load it with a FLUX.1 [dev] model (its Depth/Canny LoRAs are made for it)"
    if key is None:
        return f"{what}, but this model ({family}) has no {name} weight; {fix}"
    shape = tuple(shapes[key])
    if family not in CONTROL_FAMILIES:
        return f"{what}, but this model is {family} ({key} {_fmt(shape)}), whose input cannot take it; {fix}"
    if len(shape) != 2 or shape[0] != delta_shape[0] or shape[1] > delta_shape[1]:
        return (
            f"{what}: {key} {_fmt(shape)} cannot be widened to {_fmt(delta_shape)} (it needs {delta_shape[0]} rows "
            f"and at most {delta_shape[1]} columns); {fix}"
        )
    return None
