"""diffusers Z-Image (``ZImageTransformer2DModel``) and musubi-tuner module names -> ComfyUI's Lumina 2 NextDiT names.

ComfyUI fuses each attention's q, k and v into ``attention.qkv`` (``[3*H, H]``) and names its output projection
``attention.out``; diffusers keeps ``attention.to_q/to_k/to_v`` and ``attention.to_out.0``, and musubi-tuner's own
Z-Image LoRAs use those names under its kohya prefix (``lora_unet_layers_0_attention_to_q``; its ComfyUI converter
writes ``…_attention_qkv``, the model's own name). The same holds in the noise and context refiners. diffusers'
patch embedder and final layer carry the patch size: ``all_x_embedder.2-1`` = ``x_embedder``,
``all_final_layer.2-1.*`` = ``final_layer.*``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from . import Alias

__all__ = ["zimage_aliases"]

_BLOCK = re.compile(r"^((?:layers|noise_refiner|context_refiner)\.\d+)\.attention\.qkv$")
_TOP = {
    "all_x_embedder.2-1": "x_embedder",
    "all_final_layer.2-1.linear": "final_layer.linear",
    "all_final_layer.2-1.adaLN_modulation.1": "final_layer.adaLN_modulation.1",
}


def zimage_aliases(weight_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Alias]:
    """``{diffusers module path: Alias}`` for ComfyUI's NextDiT (``weight_shapes``: module path -> weight shape)."""
    if "cap_embedder.1" not in weight_shapes:
        return {}
    out: dict[str, Alias] = {}
    for path, shape in weight_shapes.items():
        m = _BLOCK.match(path)
        if not m:
            continue
        block, h = m.group(1), shape[0] // 3
        for j, name in enumerate(("to_q", "to_k", "to_v")):
            out[f"{block}.attention.{name}"] = Alias(path, (j * h, (j + 1) * h))
        if f"{block}.attention.out" in weight_shapes:
            out[f"{block}.attention.to_out.0"] = Alias(f"{block}.attention.out")
    for src, dst in _TOP.items():
        if dst in weight_shapes:
            out[src] = Alias(dst)
    return out
