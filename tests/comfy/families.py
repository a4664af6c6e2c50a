"""Small stand-ins of the newer model families, built from ComfyUI's own model classes (random seeded weights, fp32).

Each is the family's real ComfyUI model class (``supported_models`` config -> ``get_model``) with the widths and
depths shrunk so it runs on a CPU in milliseconds: FLUX.2 (dev-shaped: gated MLPs, shared modulation, guidance),
FLUX.2 klein-shaped (no guidance), Chroma, Z-Image, Qwen-Image, SD3.5 Medium-shaped (an extra image attention in
block 0) and Large-shaped. The configs are passed to the class directly, not through detection: 0.3.75's FLUX.2
detection fixes 48 heads, which no small model can have. ``tiny(name)`` returns a ModelPatcher.
"""

from __future__ import annotations

import torch

_COMMON_FLUX2 = dict(
    image_model="flux2", in_channels=128, out_channels=128, vec_in_dim=None, context_in_dim=64, hidden_size=256,
    mlp_ratio=3.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[32, 32, 32, 32], theta=2000, patch_size=1,
    qkv_bias=False, global_modulation=True, mlp_silu_act=True, ops_bias=False, default_ref_method="index",
    ref_index_scale=10.0,
)  # fmt: skip
CONFIGS: dict[str, tuple[str, dict]] = {
    "flux2": ("Flux2", {**_COMMON_FLUX2, "guidance_embed": True}),
    "flux2_klein": ("Flux2", {**_COMMON_FLUX2, "guidance_embed": False}),
    "chroma": ("Chroma", dict(
        image_model="chroma", in_channels=64, out_channels=64, context_in_dim=64, hidden_size=128, mlp_ratio=4.0,
        num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[16, 24, 24], theta=10000, patch_size=2, qkv_bias=True,
        in_dim=64, out_dim=128, hidden_dim=256, n_layers=2, vec_in_dim=None,
    )),
    "z_image": ("ZImage", dict(
        image_model="lumina2", patch_size=2, in_channels=16, dim=384, cap_feat_dim=64, n_layers=2, qk_norm=True,
        n_heads=3, n_kv_heads=3, axes_dims=[32, 48, 48], axes_lens=[64, 64, 64], rope_theta=256.0,
        ffn_dim_multiplier=8.0 / 3.0, z_image_modulation=True, time_scale=1000.0, n_refiner_layers=1,
    )),
    "qwen_image": ("QwenImage", dict(
        image_model="qwen_image", in_channels=64, out_channels=16, num_layers=2, attention_head_dim=32,
        num_attention_heads=2, joint_attention_dim=64, axes_dims_rope=(8, 12, 12),
    )),
    "sd35_medium": ("SD3", dict(
        in_channels=16, pos_embed_scaling_factor=None, patch_size=2, depth=2, adm_in_channels=64, out_channels=16,
        context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 64, "out_features": 128}},
        num_patches=1024, pos_embed_max_size=32, qk_norm="rms", x_block_self_attn_layers=[0],
    )),
    "sd35_large": ("SD3", dict(
        in_channels=16, pos_embed_scaling_factor=None, patch_size=2, depth=2, adm_in_channels=64, out_channels=16,
        context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 64, "out_features": 128}},
        num_patches=1024, pos_embed_max_size=32, qk_norm="rms", x_block_self_attn_layers=[],
    )),
}  # fmt: skip


def _fit(config: dict, params_class) -> dict:
    """Leave out fields this ComfyUI's params dataclass lacks, add the ones upstream requires (``txt_ids_dims``)."""
    fields = getattr(params_class, "__dataclass_fields__", None)
    out = dict(config)
    if fields is not None:
        if "txt_ids_dims" in fields:
            out.setdefault("txt_ids_dims", [3] if out.get("image_model") == "flux2" else [])
        out = {k: v for k, v in out.items() if k in fields or k == "image_model"}
    return out


def _params_class(name: str):
    if name in ("flux2", "flux2_klein"):
        import comfy.ldm.flux.model

        return comfy.ldm.flux.model.FluxParams
    if name == "chroma":
        import comfy.ldm.chroma.model

        return comfy.ldm.chroma.model.ChromaParams
    return None


# Z-Image at the width where diffusers' ``ZImageTransformer2DModel`` has the same layer sizes as ComfyUI's class
# (its timestep MLP is 1024 wide and its FFN int(8·dim/3), ComfyUI's min(dim, 1024) and a multiple of 256): the
# library-oracle test copies weights between the two. Everywhere else the narrower 384 keeps the tests fast.
DIFFUSERS_SIZED = {"z_image": dict(dim=1152, n_heads=9, n_kv_heads=9)}


def tiny(name: str, seed: int = 0, dtype=torch.float32, **overrides):
    """A ModelPatcher of the small stand-in ``name`` (see :data:`CONFIGS`, changed by ``overrides``), weights seeded
    from ``seed``."""
    import comfy.model_patcher
    import comfy.supported_models

    cls_name, config = CONFIGS[name]
    config = _fit({**config, **overrides}, _params_class(name))
    model_config = getattr(comfy.supported_models, cls_name)(config)
    model_config.set_inference_dtype(dtype, None)
    base = model_config.get_model({})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in base.diffusion_model.named_parameters():
            if pname.endswith((".scale", "norm.weight", "_norm.weight")) or ".norm" in pname and p.ndim == 1:
                p.fill_(1.0)
            elif p.ndim == 1:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / max(p[0].numel(), 1) ** 0.5)
        for bname, b in base.diffusion_model.named_buffers():
            if bname == "pos_embed":  # SD3 makes it with torch.empty and expects the checkpoint's values
                b.copy_(0.02 * torch.randn(b.shape, generator=g))
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(base, load_device=cpu, offload_device=cpu)


# What sampling feeds each stand-in: latent shape (channels of its latent format; Qwen-Image's are video-shaped,
# [B, C, T, H, W]), the text-feature width its CONFIGS give, and the conditioning extras its ``extra_conds`` reads
# (FLUX-family models encode a pooled vector even when unused; FLUX.2 dev and SD3.5 use theirs).
SAMPLING: dict[str, tuple[tuple[int, ...], int, dict]] = {
    "flux2": ((1, 128, 4, 4), 64, {"guidance": 3.5, "pooled_output": (1, 768)}),
    "flux2_klein": ((1, 128, 4, 4), 64, {"pooled_output": (1, 768)}),
    "chroma": ((1, 16, 8, 8), 64, {"pooled_output": (1, 768)}),
    "z_image": ((1, 16, 8, 8), 64, {}),
    "qwen_image": ((1, 16, 1, 8, 8), 64, {}),
    "sd35_medium": ((1, 16, 8, 8), 64, {"pooled_output": (1, 64)}),
    "sd35_large": ((1, 16, 8, 8), 64, {"pooled_output": (1, 64)}),
}


def sampling_inputs(name: str, seed: int = 1):
    """(empty latent, positive, negative) conditioning for ``comfy.sample.sample`` on ``tiny(name)``: seeded text
    features of 7 tokens, the family's extras (tensor shapes in :data:`SAMPLING` become seeded tensors)."""
    shape, width, extras = SAMPLING[name]
    g = torch.Generator().manual_seed(seed)

    def cond():
        extra = {k: torch.randn(v, generator=g) if isinstance(v, tuple) else v for k, v in extras.items()}
        return [[torch.randn(1, 7, width, generator=g), extra]]

    return torch.zeros(shape), cond(), cond()
