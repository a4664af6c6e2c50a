"""Other names a LoRA file may use for a model's weights, derived from the model's own keys: one module per family.

    unet.py    SD1/SD2/SDXL: diffusers block names <-> LDM/SGM (kohya SD1/SD2 files, diffusers, PEFT)
    flux.py    FLUX.1, FLUX.2 and Chroma: diffusers / xlabs / FLUX.2 names -> BFL names, fused layers as row slices
    sd3.py     SD3 / SD3.5: diffusers MMDiT names -> ``joint_blocks`` (fused qkv as row slices)
    zimage.py  Z-Image (Lumina 2 NextDiT): diffusers / musubi-tuner names -> fused ``attention.qkv`` row slices
Qwen-Image needs none: ComfyUI names its weights as diffusers does. Each builder returns only aliases whose target
exists in the model, so thinned models and variants map correctly, and families never collide (their block names
differ).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Alias", "derived_aliases"]


@dataclass(frozen=True)
class Alias:
    """Where another module name lands: ``module`` (the model's own path), optional ``rows=(start, stop)`` of its
    output axis (a slice of a fused weight), ``swap_halves`` (diffusers shift/scale -> BFL scale/shift)."""

    module: str
    rows: tuple[int, int] | None = None
    swap_halves: bool = False


def derived_aliases(weight_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Alias]:
    """``{other name: Alias}`` for a DiT denoiser; ``weight_shapes``: its module paths (no ``diffusion_model.``, no
    ``.weight``) -> weight shape. UNets are ``unet.ldm_to_diffusers``'s business."""
    from . import flux, sd3, zimage

    out: dict[str, Alias] = {}
    for builder in (flux.flux_aliases, sd3.sd3_aliases, zimage.zimage_aliases):
        for name, alias in builder(weight_shapes).items():
            out.setdefault(name, alias)
    return out
