"""diffusers FLUX.1 / FLUX.2 / Chroma module names -> BFL/ComfyUI fused module names, with row slices.

ComfyUI keeps FLUX the BFL way: ``double_blocks.N.img_attn.qkv`` holds q, k and v stacked on the output axis
(``[3*H, H]``), and ``single_blocks.N.linear1`` holds q, k, v and the MLP input (``[3*H + M, H]``, FLUX.1: 21504).
diffusers splits them (``transformer_blocks.N.attn.to_q`` …, ``single_transformer_blocks.N.proj_mlp``), so a
diffusers LoRA module lands on a row slice of the fused weight. ``H`` and ``M`` are read from the model's own shapes.

The final ``norm_out.linear`` of diffusers stores (shift, scale) where BFL's ``final_layer.adaLN_modulation.1``
stores (scale, shift): those targets carry ``swap_halves``.

xlabs files name the fused layers ``double_blocks.N.processor.{qkv,proj}_lora{1,2}`` (1 = image, 2 = text stream);
USO-style single blocks use ``single_blocks.N.processor.{qkv,proj}_lora``. They are listed here as aliases too.

FLUX.2 (``Flux2Transformer2DModel``): the same double-block names with ``ff.linear_in/out`` MLPs (gated: ``img_mlp.0``
holds gate and up, 2 × mlp rows), single blocks keep their fused layers whole (``attn.to_qkv_mlp_proj`` = ``linear1``,
``attn.to_out`` = ``linear2``), shared modulations (``double_stream_modulation_img.linear`` = ``….lin``) and
``time_guidance_embed``. Chroma (``ChromaTransformer2DModel``): FLUX.1's blocks without per-block modulation, plus the
``distilled_guidance_layer`` (``layers.N.linear_1/2`` = ``in_layer/out_layer``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from . import Alias

__all__ = ["flux_aliases"]

FluxAlias = Alias


_DOUBLE_PLAIN = {
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
    "norm1.linear": "img_mod.lin",
    "norm1_context.linear": "txt_mod.lin",
    "ff.net.0.proj": "img_mlp.0",
    "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
    # LyCORIS (SimpleTuner) and FLUX.2 writers name the MLPs by their diffusers FeedForward fields
    "ff.linear_in": "img_mlp.0",
    "ff.linear_out": "img_mlp.2",
    "ff_context.linear_in": "txt_mlp.0",
    "ff_context.linear_out": "txt_mlp.2",
}
_DOUBLE_QKV = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
_XLABS = {
    "processor.qkv_lora1": "img_attn.qkv",
    "processor.proj_lora1": "img_attn.proj",
    "processor.qkv_lora2": "txt_attn.qkv",
    "processor.proj_lora2": "txt_attn.proj",
}
_SINGLE_PLAIN = {
    "norm.linear": "modulation.lin",
    "proj_out": "linear2",
    "processor.proj_lora": "linear2",
    # FLUX.2's diffusers single blocks keep the fused layers whole
    "attn.to_qkv_mlp_proj": "linear1",
    "attn.to_out": "linear2",
}
# FLUX.2's shared modulation layers, and Chroma's guidance approximator
_SHARED = {
    "double_stream_modulation_img.linear": "double_stream_modulation_img.lin",
    "double_stream_modulation_txt.linear": "double_stream_modulation_txt.lin",
    "single_stream_modulation.linear": "single_stream_modulation.lin",
    "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_guidance_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_guidance_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_guidance_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
}
_APPROXIMATOR = re.compile(r"^distilled_guidance_layer\.layers\.(\d+)\.(in_layer|out_layer)$")
_TOP = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "proj_out": "final_layer.linear",
}
_BLOCK = re.compile(r"^(double_blocks|single_blocks)\.(\d+)\.")


def flux_aliases(weight_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, FluxAlias]:
    """Return ``{diffusers or xlabs module path: FluxAlias}`` for a BFL FLUX denoiser.

    ``weight_shapes`` maps BFL module paths (no ``diffusion_model.``, no ``.weight``) to weight shapes. Only aliases
    whose BFL target exists are returned, so thinned models (fewer blocks) and FLUX variants map correctly.
    """
    out: dict[str, FluxAlias] = {}
    blocks: dict[tuple[str, int], None] = {}
    for path in weight_shapes:
        m = _BLOCK.match(path)
        if m:
            blocks[(m.group(1), int(m.group(2)))] = None

    for kind, n in blocks:
        if kind == "double_blocks":
            bfl = f"double_blocks.{n}"
            dif = f"transformer_blocks.{n}"
            for fused, names in _DOUBLE_QKV.items():
                shape = weight_shapes.get(f"{bfl}.{fused}")
                if shape is None:
                    continue
                h = shape[0] // 3
                for j, name in enumerate(names):
                    out[f"{dif}.{name}"] = FluxAlias(f"{bfl}.{fused}", (j * h, (j + 1) * h))
            for src, dst in _DOUBLE_PLAIN.items():
                if f"{bfl}.{dst}" in weight_shapes:
                    out[f"{dif}.{src}"] = FluxAlias(f"{bfl}.{dst}")
            for src, dst in _XLABS.items():
                if f"{bfl}.{dst}" in weight_shapes:
                    out[f"{bfl}.{src}"] = FluxAlias(f"{bfl}.{dst}")
        else:
            bfl = f"single_blocks.{n}"
            dif = f"single_transformer_blocks.{n}"
            shape = weight_shapes.get(f"{bfl}.linear1")
            if shape is not None:
                h = shape[1]
                for j, name in enumerate(("attn.to_q", "attn.to_k", "attn.to_v")):
                    out[f"{dif}.{name}"] = FluxAlias(f"{bfl}.linear1", (j * h, (j + 1) * h))
                out[f"{dif}.proj_mlp"] = FluxAlias(f"{bfl}.linear1", (3 * h, shape[0]))
                out[f"{bfl}.processor.qkv_lora"] = FluxAlias(f"{bfl}.linear1", (0, 3 * h))
                out[f"{bfl}.linear1_qkv"] = FluxAlias(f"{bfl}.linear1", (0, 3 * h))  # core's name for the qkv rows
            for src, dst in _SINGLE_PLAIN.items():
                if f"{bfl}.{dst}" in weight_shapes:
                    prefix = bfl if src.startswith("processor.") else dif
                    out[f"{prefix}.{src}"] = FluxAlias(f"{bfl}.{dst}")

    if not blocks:  # not a FLUX-family model: its other layers are someone else's business
        return out
    for src, dst in (*_TOP.items(), *_SHARED.items()):
        if dst in weight_shapes:
            out.setdefault(src, FluxAlias(dst))
    for path in weight_shapes:
        m = _APPROXIMATOR.match(path)
        if m:
            name = "linear_1" if m.group(2) == "in_layer" else "linear_2"
            out[f"distilled_guidance_layer.layers.{m.group(1)}.{name}"] = FluxAlias(path)
    if "final_layer.adaLN_modulation.1" in weight_shapes:
        out["norm_out.linear"] = FluxAlias("final_layer.adaLN_modulation.1", swap_halves=True)
    return out
