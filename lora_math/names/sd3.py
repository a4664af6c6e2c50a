"""diffusers SD3 / SD3.5 (``SD3Transformer2DModel``) module names -> ComfyUI's MMDiT names, fused qkv as row slices.

ComfyUI keeps SD3 the reference way: ``joint_blocks.N.{x_block,context_block}.attn.qkv`` holds q, k and v stacked on
the output axis (``[3*H, H]``); diffusers splits them (``transformer_blocks.N.attn.to_q`` …, ``add_q_proj`` … for the
context stream), so a diffusers module lands on a row slice. SD3.5 Medium's second image attention
(``attn2.to_q`` …) lands on ``x_block.attn2.qkv``. The last block's context stream is "pre-only": its modulation is an
AdaLayerNormContinuous in diffusers (``norm1_context.linear``, shift/scale order) and, like ``norm_out.linear``, its
halves are swapped against ComfyUI's ``adaLN_modulation.1`` (scale/shift).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from . import Alias

__all__ = ["sd3_aliases"]

_QKV = {
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
}
_PLAIN = {
    "attn.to_out.0": "x_block.attn.proj",
    "attn.to_add_out": "context_block.attn.proj",
    "attn2.to_out.0": "x_block.attn2.proj",
    "ff.net.0.proj": "x_block.mlp.fc1",
    "ff.net.2": "x_block.mlp.fc2",
    "ff_context.net.0.proj": "context_block.mlp.fc1",
    "ff_context.net.2": "context_block.mlp.fc2",
    "norm1.linear": "x_block.adaLN_modulation.1",
    "norm1_context.linear": "context_block.adaLN_modulation.1",
}
_TOP = {
    "pos_embed.proj": "x_embedder.proj",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
    "context_embedder": "context_embedder",
    "proj_out": "final_layer.linear",
}
_BLOCK = re.compile(r"^joint_blocks\.(\d+)\.")


def sd3_aliases(weight_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Alias]:
    """``{diffusers module path: Alias}`` for ComfyUI's MMDiT (``weight_shapes``: module path -> weight shape)."""
    blocks = sorted({int(m.group(1)) for p in weight_shapes if (m := _BLOCK.match(p))})
    if not blocks:
        return {}
    out: dict[str, Alias] = {}
    last = blocks[-1]
    for n in blocks:
        ours, theirs = f"joint_blocks.{n}", f"transformer_blocks.{n}"
        for fused, names in _QKV.items():
            shape = weight_shapes.get(f"{ours}.{fused}")
            if shape is None:
                continue
            h = shape[0] // 3
            for j, name in enumerate(names):
                out[f"{theirs}.{name}"] = Alias(f"{ours}.{fused}", (j * h, (j + 1) * h))
        for src, dst in _PLAIN.items():
            if f"{ours}.{dst}" in weight_shapes:
                swap = n == last and src == "norm1_context.linear"
                out[f"{theirs}.{src}"] = Alias(f"{ours}.{dst}", swap_halves=swap)
    for src, dst in _TOP.items():
        if dst in weight_shapes:
            out[src] = Alias(dst)
    if "final_layer.adaLN_modulation.1" in weight_shapes:
        out["norm_out.linear"] = Alias("final_layer.adaLN_modulation.1", swap_halves=True)
    return out
