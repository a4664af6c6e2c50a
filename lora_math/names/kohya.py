"""Write-side names: the kohya module name of every weight Loom saves, and each family's ids in ``ss_*`` and
``modelspec.*`` metadata.

Names (what kohya's sd-scripts writes, checked against real files in the tests):

- SD1.x / SD2 UNets: ``lora_unet_`` + the *diffusers* module path with ``.`` -> ``_``
  (``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``). The diffusers path is derived from the
  ComfyUI (LDM) path by :func:`lora_math.unet_names.ldm_to_diffusers`, which reads the block layout from the model's
  *full* key list (resnets and downsamplers decide the numbering), so callers pass every weight key of the model.
- SDXL, FLUX, SD3: ``lora_unet_`` + the ComfyUI/SGM/BFL module path with ``.`` -> ``_``
  (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``, ``lora_unet_double_blocks_0_img_attn_qkv``,
  ``lora_unet_single_blocks_0_linear1``, ``lora_unet_joint_blocks_0_x_block_attn_qkv``): sd-scripts trains those
  families on the original (SGM/BFL/MMDiT) module tree.
- FLUX.2 (dev, klein) and Z-Image: the same, on ComfyUI's module tree (``lora_unet_double_blocks_0_img_attn_qkv``,
  ``lora_unet_single_blocks_0_linear1``, ``lora_unet_layers_0_attention_qkv``, ``lora_unet_layers_0_feed_forward_w1``),
  the one style written. ComfyUI core maps ``lora_unet_<path>`` onto every model's weights (0.3.75 and upstream), and
  diffusers (0.42) converts it in ``Flux2Pipeline`` / ``ZImagePipeline.lora_state_dict`` (its kohya FLUX.2 converter;
  its Z-Image converter splits the fused ``qkv`` into ``to_q/to_k/to_v``). For FLUX.2 it is also what musubi-tuner
  (kohya's trainer for these families) writes: BFL names. musubi-tuner's Z-Image files name the unfused
  ``attention.to_q/to_k/to_v/to_out.0``, which ComfyUI core does not map under ``lora_unet_``; ComfyUI's fused
  ``qkv`` is what both main loaders read. A diffusers/PEFT-named file (``transformer.…lora_A``) would have to split
  the fused layers into three modules each, for no loader that lacks the kohya style.
- CLIP text encoders (ComfyUI CLIP patcher keys ``clip_l.transformer.text_model.encoder.layers.N.…``):
  ``lora_te_`` + the path for SD1.x (clip_l) / SD2 (clip_h), ``lora_te1_`` / ``lora_te2_`` for SDXL's and SD3's
  clip_l / clip_g and FLUX's clip_l; only the encoder layers' attention and MLP projections. T5 has no kohya name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from .unet import ldm_to_diffusers

UNET_PREFIX = "diffusion_model."
_DIFFUSERS_NAMED = ("sd15", "sd2")  # kohya uses diffusers paths for these; SGM/BFL/MMDiT paths for the rest
_IMPL_STABILITY = "https://github.com/Stability-AI/generative-models"
_IMPL_FLUX = "https://github.com/black-forest-labs/flux"
_IMPL_FLUX2 = "https://github.com/black-forest-labs/flux2"


class ArchIds(NamedTuple):
    ss_version: str  # ss_base_model_version as sd-scripts writes it
    spec: str  # modelspec.architecture without "/lora"
    implementation: str  # modelspec.implementation as sd-scripts writes it for a LoRA
    resolution: int  # default training resolution


ARCHES: dict[str, ArchIds] = {
    "sd15": ArchIds("sd_v1", "stable-diffusion-v1", "diffusers", 512),
    "sd2": ArchIds("sd_v2", "stable-diffusion-v2-512", "diffusers", 512),
    "sdxl": ArchIds("sdxl_base_v1-0", "stable-diffusion-xl-v1-base", _IMPL_STABILITY, 1024),
    "flux": ArchIds("flux1", "flux-1-dev", _IMPL_FLUX, 1024),
    "chroma": ArchIds("chroma", "chroma", "https://huggingface.co/lodestones/Chroma", 1024),
    # FLUX.2 and Z-Image: the architecture ids musubi-tuner writes (no SAI spec names them)
    "flux2": ArchIds("flux2", "Flux.2-dev", _IMPL_FLUX2, 1024),
    "flux2_klein_4b": ArchIds("flux2_klein_4b", "Flux.2-klein-4b", _IMPL_FLUX2, 1024),
    "flux2_klein_9b": ArchIds("flux2_klein_9b", "Flux.2-klein-9b", _IMPL_FLUX2, 1024),
    "z_image": ArchIds("z_image", "Z-Image", "https://github.com/Tongyi-MAI/Z-Image", 1024),
    "qwen_image": ArchIds("qwen_image", "qwen-image", "https://github.com/QwenLM/Qwen-Image", 1328),
    "sd3": ArchIds("sd3", "stable-diffusion-3", _IMPL_STABILITY, 1024),
    "sd35_large": ArchIds("sd3.5_large", "stable-diffusion-v3.5-large", _IMPL_STABILITY, 1024),
    "sd35_medium": ArchIds("sd3.5_medium", "stable-diffusion-v3.5-medium", _IMPL_STABILITY, 1024),
}


def arch_ids(arch: str) -> ArchIds:
    if arch not in ARCHES:
        raise ValueError(f"arch: {arch!r} is not a base model LoRA Loom can save for; one of {', '.join(ARCHES)}")
    return ARCHES[arch]


def _module_path(key: str) -> str:
    """``diffusion_model.X.weight`` -> ``X``; ValueError for anything else."""
    if not key.startswith(UNET_PREFIX) or not key.endswith(".weight"):
        raise ValueError(
            f"{key}: not a denoiser weight key (diffusion_model.….weight); only UNet/DiT weights can be saved"
        )
    return key[len(UNET_PREFIX) : -len(".weight")]


# kohya prefix of each CLIP text encoder, by arch, as sd-scripts names them (``lora_te_`` for the single text encoder
# of SD1.x/SD2, ``lora_te1_``/``lora_te2_`` for SDXL's CLIP-L/CLIP-G, lora_flux/lora_sd3's ``lora_te1_``/``lora_te2_``)
# and as ComfyUI's ``model_lora_keys_clip`` maps them back. T5 and other encoders have no kohya names here.
TEXT_ENCODER_PREFIXES: dict[str, dict[str, str]] = {
    "sd15": {"clip_l": "lora_te_"},
    "sd2": {"clip_h": "lora_te_"},
    "sdxl": {"clip_l": "lora_te1_", "clip_g": "lora_te2_"},
    "flux": {"clip_l": "lora_te1_"},
    "sd3": {"clip_l": "lora_te1_", "clip_g": "lora_te2_"},
    "sd35_large": {"clip_l": "lora_te1_", "clip_g": "lora_te2_"},
    "sd35_medium": {"clip_l": "lora_te1_", "clip_g": "lora_te2_"},
}
# The CLIP weights kohya names (sd-scripts targets CLIPAttention and CLIPMLP; ComfyUI's LORA_CLIP_MAP): ComfyUI loads
# ``lora_te…`` names for these and nothing else.
CLIP_LAYER = re.compile(r"text_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])")


def _text_encoder_name(key: str, arch: str) -> str:
    """``clip_l.transformer.text_model.encoder.layers.N.self_attn.q_proj.weight`` -> the kohya name for ``arch``."""
    encoder, _, rest = key.partition(".transformer.")
    prefixes = TEXT_ENCODER_PREFIXES[arch]
    if not rest or "." in encoder or encoder not in prefixes:
        known = ", ".join(f"{e}.transformer.…" for e in prefixes)
        what = f"{encoder!r}" if rest and "." not in encoder else "that encoder"
        raise ValueError(
            f"{key}: not a denoiser weight key (diffusion_model.….weight) nor a text encoder key this {arch} LoRA can "
            f"name ({known}); text-encoder LoRA for {what} cannot be saved in kohya format"
        )
    path = rest.removesuffix(".weight")
    if not rest.endswith(".weight") or not CLIP_LAYER.fullmatch(path):
        raise ValueError(
            f"{key}: kohya text-encoder names cover only the CLIP encoder layers' self_attn q/k/v/out_proj and mlp "
            "fc1/fc2 weights; text-encoder LoRA on other weights cannot be saved in kohya format"
        )
    return prefixes[encoder] + path.replace(".", "_")


def kohya_names(model_keys: Iterable[str], arch: str, all_model_keys: Iterable[str] | None = None) -> dict[str, str]:
    """``{ComfyUI model key: kohya module name}`` for the keys of ``model_keys``.

    Denoiser keys (``diffusion_model.….weight``) get ``lora_unet_…`` names. CLIP keys as ComfyUI's CLIP patcher names
    them (``clip_l.transformer.text_model.encoder.layers.N.self_attn.q_proj.weight``, ``….mlp.fc1.weight`` …) get
    ``lora_te_…`` (sd15: clip_l, sd2: clip_h), ``lora_te1_…`` (sdxl, sd3, flux: clip_l) or ``lora_te2_…`` (sdxl,
    sd3: clip_g); any other key (t5xxl, unknown prefixes) is a ValueError naming it.

    ``all_model_keys``: every weight key of the model (``model.model.state_dict()`` keys; biases and norms welcome).
    SD1.x/SD2 names need it: the diffusers numbering depends on the resnets and downsamplers around the targeted
    layers, which a list of attention keys alone does not show. Defaults to ``model_keys`` itself, which is only
    right when that already holds the whole model; for SD UNets a list without any downsampler is refused.
    """
    arch_ids(arch)
    keys = list(dict.fromkeys(model_keys))
    out = {k: _text_encoder_name(k, arch) for k in keys if not k.startswith(UNET_PREFIX)}
    paths = {k: _module_path(k) for k in keys if k.startswith(UNET_PREFIX)}
    if arch not in _DIFFUSERS_NAMED:
        out |= {k: "lora_unet_" + p.replace(".", "_") for k, p in paths.items()}
    elif paths:
        out |= _diffusers_names(paths, arch, keys if all_model_keys is None else list(all_model_keys))
    out = {k: out[k] for k in keys}  # in the order given
    if len(set(out.values())) != len(out):
        raise ValueError(f"two {arch} modules got the same kohya name; the model key list is inconsistent")
    return out


def _diffusers_names(paths: Mapping[str, str], arch: str, layout_keys: list[str]) -> dict[str, str]:
    """``lora_unet_`` + the diffusers path of each SD1.x/SD2 UNet module (``paths``: key -> LDM module path)."""
    layout = {re.sub(r"\.(weight|bias)$", "", k[len(UNET_PREFIX) :]) for k in layout_keys if k.startswith(UNET_PREFIX)}
    if any(p.startswith("input_blocks.") for p in layout) and not any(re.search(r"\.0\.op$", p) for p in layout):
        raise ValueError(
            f"{arch} LoRA names need the model's full list of weight keys (the block layout decides the diffusers "
            "numbering) and the list given has no downsampler; pass every key of model.model.state_dict() "
            "(LoomLoRA.base['model_keys'])"
        )
    diffusers = ldm_to_diffusers(layout | set(paths.values()))
    out: dict[str, str] = {}
    for key, path in paths.items():
        target = diffusers.get(path)
        if target is None:
            raise ValueError(f"{key}: no diffusers name for this {arch} UNet module; is the arch right?")
        out[key] = "lora_unet_" + target.replace(".", "_")
    return out
