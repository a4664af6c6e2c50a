"""What the trainer trains in a ComfyUI model: its family and prediction, and the layers each target preset names."""

from __future__ import annotations

import re

import comfy.model_base
import torch

from ...lora_math.names import families

TARGETS = ("attention", "attention_mlp")
# Which layers each target preset trains, by the layer names of ComfyUI's model classes (one pattern per family
# group: FLUX.1, FLUX.2 and Chroma share BFL names, SD3 and SD3.5 the MMDiT ones). FLUX single blocks fuse q, k, v
# and the MLP input into ``linear1``, so "attention" trains all of it (as sd-scripts and musubi-tuner do). FLUX.2's
# modulation is shared outside the blocks and Z-Image's refiners run before the main layers: neither is trained,
# as musubi-tuner's and OneTrainer's default Z-Image and FLUX.2 targets leave them out.
_PATTERNS = {
    "unet": {
        "attention": r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$",
        "attention_mlp": r"\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2))$",
    },
    "flux": {
        "attention": r"(double_blocks\.\d+\.(img|txt)_attn\.(qkv|proj)|single_blocks\.\d+\.(linear1|linear2))$",
        "attention_mlp": r"(double_blocks\.\d+\.(img_attn\.(qkv|proj)|txt_attn\.(qkv|proj)|img_mlp\.[02]|txt_mlp\.[02])"
        r"|single_blocks\.\d+\.(linear1|linear2))$",
    },
    "sd3": {
        "attention": r"joint_blocks\.\d+\.(x_block|context_block)\.attn2?\.(qkv|proj)$",
        "attention_mlp": r"joint_blocks\.\d+\.(x_block|context_block)\.(attn2?\.(qkv|proj)|mlp\.fc[12])$",
    },
    "z_image": {
        "attention": r"^layers\.\d+\.attention\.(qkv|out)$",
        "attention_mlp": r"^layers\.\d+\.(attention\.(qkv|out)|feed_forward\.w[123])$",
    },
    "qwen_image": {
        "attention": r"^transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_[qkv]_proj|to_add_out)$",
        "attention_mlp": r"^transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_[qkv]_proj|to_add_out)"
        r"|(img|txt)_mlp\.net\.(0\.proj|2))$",
    },
}
_PATTERN_GROUP = {
    "sd15": "unet", "sd2": "unet", "sdxl": "unet", "flux": "flux", "chroma": "flux", "flux2": "flux",
    "flux2_klein_4b": "flux", "flux2_klein_9b": "flux", "sd3": "sd3", "sd35_large": "sd3", "sd35_medium": "sd3",
    "z_image": "z_image", "qwen_image": "qwen_image",
}  # fmt: skip
_PREDICTION = {
    comfy.model_base.ModelType.EPS: "eps",
    comfy.model_base.ModelType.V_PREDICTION: "v",
    comfy.model_base.ModelType.FLOW: "flow",  # SD3, Z-Image
    comfy.model_base.ModelType.FLUX: "flow",  # FLUX.1/.2, Chroma, Qwen-Image: flow matching with their shift
}

# Distilled-guidance models (FLUX.1/FLUX.2 dev) are trained at guidance 1, as ai-toolkit trains FLUX.1 dev, and
# sampled without CFG; every other model gets the guidance its ``extra_conds`` gives a plain prompt (Chroma: 0).
TRAIN_GUIDANCE = 1.0


def distilled_guidance(base_model) -> bool:
    """True for a model with a guidance embedding (FLUX.1 dev, FLUX.2 dev; not schnell, klein or Chroma)."""
    return bool(getattr(getattr(base_model.diffusion_model, "params", None), "guidance_embed", False))


def family(base_model) -> tuple[str, str]:
    """(model family, prediction) of a ComfyUI BaseModel; ValueError names ``model``."""
    arch = arch_of(base_model)
    prediction = _PREDICTION.get(base_model.model_type)
    if prediction is None:
        raise ValueError(f"model: prediction type {base_model.model_type.name} is not supported for training")
    return arch, prediction


def arch_of(base_model) -> str:
    """The family (``lora_math.families``) of a ComfyUI BaseModel, from its weight names and shapes; ValueError
    names ``model`` for a family LoRA Loom does not train or save LoRAs for."""
    keys = {f"diffusion_model.{k}": tuple(v.shape) for k, v in base_model.diffusion_model.state_dict().items()}
    arch = families.from_model_keys(keys)
    if arch not in _PATTERN_GROUP:
        raise ValueError(
            f"model: {type(base_model).__name__} ({arch}) is not a model family LoRA Loom trains or saves LoRAs for "
            "(SD1.x/SD2, SDXL, FLUX.1, FLUX.2, Chroma, SD3/SD3.5, Z-Image, Qwen-Image); load one of those"
        )
    return arch


def group(arch: str) -> str | None:
    """The layer-name group of a family (``unet``, ``flux``, ``sd3``, ``z_image``, ``qwen_image``), None if untrained."""
    return _PATTERN_GROUP.get(arch)


def target_modules(base_model, arch: str, target: str) -> dict[str, torch.nn.Module]:
    """ComfyUI weight key (``diffusion_model.….weight``) -> Linear module, for the chosen target preset."""
    if target not in TARGETS:
        raise ValueError(f"target: {target!r} is not one of {', '.join(TARGETS)}")
    pattern = re.compile(_PATTERNS[_PATTERN_GROUP[arch]][target])
    found = {
        f"diffusion_model.{name}.weight": m
        for name, m in base_model.diffusion_model.named_modules()
        if isinstance(m, torch.nn.Linear) and pattern.search(name)
    }
    if not found:
        raise ValueError(f"target: no {target} layers found in this {arch} model")
    return found
