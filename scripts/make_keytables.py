"""Write ``lora_math/names/keytables/<arch>.json.gz``: the LoRA-targetable weight keys of real models.

Each table maps a ComfyUI ModelPatcher key (``diffusion_model.…weight``, ``clip_l.transformer.…weight``,
``clip_g.transformer.…``, ``t5xxl.transformer.…``) to its shape, for the weights of ``Linear`` and ``Conv`` modules
(and their biases): the weights a LoRA file can target; for FLUX.1 also the attention q/k RMSNorm scales, which BFL's
control LoRAs replace (named ``….scale`` as in the checkpoints and ComfyUI 0.3.75; upstream's RMSNorm calls the
same tensor ``….weight``, and the key mapping accepts both). The models are ComfyUI's own classes, built on the
``meta`` device, so nothing is allocated and no weights are downloaded. The output holds key names and shapes only.

SD1.5 / SDXL / FLUX.1-dev come from their published configurations. The newer families (FLUX.2 dev and klein,
Chroma, Z-Image, Qwen-Image, SD3.5 Large and Medium) come from ComfyUI's own detection run on a *skeleton*: the few
keys and shapes of the real checkpoint that ``comfy.model_detection`` reads (see :data:`SKELETONS`), so the table is
whatever that ComfyUI builds for the real file. Their text encoders are LLMs nobody trains LoRAs for (FLUX.2,
Z-Image, Qwen-Image) or T5 (Chroma): denoiser only, except SD3.5, whose CLIP-L/G and T5 are included.

Run with the project venv and a ComfyUI tree (default ``.runtime/ComfyUI``, or ``COMFYUI_DIR``)::

    .venv/bin/python scripts/make_keytables.py [--comfyui DIR] [--out lora_math/names/keytables]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Published UNet / DiT configurations (the numbers ComfyUI's detection yields for the full-size checkpoints).
UNET_CONFIGS: dict[str, dict] = {
    "sd15": {
        "use_checkpoint": False,
        "image_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 320,
        "num_res_blocks": [2, 2, 2, 2],
        "channel_mult": [1, 2, 4, 4],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "transformer_depth_middle": 1,
        "use_spatial_transformer": True,
        "use_linear_in_transformer": False,
        "context_dim": 768,
        "num_heads": 8,
        "legacy": False,
        "adm_in_channels": None,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    },
    "sdxl": {
        "use_checkpoint": False,
        "image_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 320,
        "num_res_blocks": [2, 2, 2],
        "channel_mult": [1, 2, 4],
        "transformer_depth": [0, 0, 2, 2, 10, 10],
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
        "transformer_depth_middle": 10,
        "use_spatial_transformer": True,
        "use_linear_in_transformer": True,
        "context_dim": 2048,
        "num_head_channels": 64,
        "legacy": False,
        "num_classes": "sequential",
        "adm_in_channels": 2816,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    },
    "flux": {
        "image_model": "flux",
        "in_channels": 16,
        "out_channels": 16,
        "patch_size": 2,
        "vec_in_dim": 768,
        "context_in_dim": 4096,
        "hidden_size": 3072,
        "mlp_ratio": 4.0,
        "num_heads": 24,
        "depth": 19,
        "depth_single_blocks": 38,
        "axes_dim": [16, 56, 56],
        "theta": 10000,
        "qkv_bias": True,
        "guidance_embed": True,
    },
}


def _blocks(prefix: str, count: int) -> dict[str, tuple[int, ...]]:
    """One key per numbered block: ComfyUI's detection counts blocks by key prefix."""
    return {f"{prefix}{i}.x": (1,) for i in range(count)}


_FLUX_NORM = {"double_blocks.0.img_attn.norm.key_norm.scale": (128,)}
_SD3_TEXT = {  # what SD3's clip_target looks for (CLIP-L, CLIP-G, T5-XXL present)
    "text_encoders.clip_l.transformer.text_model.final_layer_norm.weight": (768,),
    "text_encoders.clip_g.transformer.text_model.final_layer_norm.weight": (1280,),
    "text_encoders.t5xxl.transformer.encoder.final_layer_norm.weight": (4096,),
}
# The keys (and shapes) of each full-size checkpoint that ComfyUI's detection reads, by arch.
SKELETONS: dict[str, dict[str, tuple[int, ...]]] = {
    "flux2": {  # FLUX.2 [dev], 32 B: 8 double + 48 single blocks, hidden 6144, Mistral 3 text features 3 × 5120
        **_FLUX_NORM, "img_in.weight": (6144, 128), "txt_in.weight": (6144, 15360),
        "double_stream_modulation_img.lin.weight": (1,), "guidance_in.in_layer.weight": (6144, 256),
        **_blocks("double_blocks.", 8), **_blocks("single_blocks.", 48),
    },
    "flux2_klein_4b": {  # FLUX.2 [klein] 4B: 5 + 20 blocks, hidden 3072, Qwen3-4B features 3 × 2560, no guidance
        **_FLUX_NORM, "img_in.weight": (3072, 128), "txt_in.weight": (3072, 7680),
        "double_stream_modulation_img.lin.weight": (1,), **_blocks("double_blocks.", 5), **_blocks("single_blocks.", 20),
    },
    "flux2_klein_9b": {  # FLUX.2 [klein] 9B: 8 + 24 blocks, hidden 4096, Qwen3-8B features 3 × 4096
        **_FLUX_NORM, "img_in.weight": (4096, 128), "txt_in.weight": (4096, 12288),
        "double_stream_modulation_img.lin.weight": (1,), **_blocks("double_blocks.", 8), **_blocks("single_blocks.", 24),
    },
    "chroma": {  # Chroma (FLUX.1-schnell derived, 8.9 B): 19 + 38 blocks, the distilled guidance approximator
        **_FLUX_NORM, "img_in.weight": (3072, 64), "txt_in.weight": (3072, 4096),
        "distilled_guidance_layer.norms.0.scale": (5120,), **_blocks("double_blocks.", 19), **_blocks("single_blocks.", 38),
    },
    "z_image": {  # Z-Image (Lumina 2 NextDiT, 6.2 B): dim 3840, 30 layers, Qwen3-4B features 2560
        "cap_embedder.1.weight": (3840, 2560), "cap_pad_token": (1, 3840), "noise_refiner.0.attention.k_norm.weight": (128,),
        **_blocks("layers.", 30),
    },
    "qwen_image": {  # Qwen-Image (20 B): 60 blocks, hidden 3072, Qwen2.5-VL-7B features 3584
        "txt_norm.weight": (3584,), "img_in.weight": (3072, 64), **_blocks("transformer_blocks.", 60),
    },
    "sd35_large": {  # SD3.5 Large (8 B MMDiT): 38 blocks × 64, 192² position grid, RMS q/k norms
        "joint_blocks.0.context_block.attn.qkv.weight": (1,), "x_embedder.proj.weight": (2432, 16, 2, 2),
        "final_layer.linear.weight": (64, 2432), "y_embedder.mlp.0.weight": (2432, 2048),
        "context_embedder.weight": (2432, 4096), "pos_embed": (1, 36864, 2432),
        "joint_blocks.0.context_block.attn.ln_q.weight": (64,), **_SD3_TEXT,
    },
    "sd35_medium": {  # SD3.5 Medium (2.2 B MMDiT-X): 24 blocks, a second image attention in blocks 0-12, 384² grid
        "joint_blocks.0.context_block.attn.qkv.weight": (1,), "x_embedder.proj.weight": (1536, 16, 2, 2),
        "final_layer.linear.weight": (64, 1536), "y_embedder.mlp.0.weight": (1536, 2048),
        "context_embedder.weight": (1536, 4096), "pos_embed": (1, 147456, 1536),
        "joint_blocks.0.context_block.attn.ln_q.weight": (64,),
        **{f"joint_blocks.{i}.x_block.attn2.qkv.weight": (1,) for i in range(13)}, **_SD3_TEXT,
    },
}  # fmt: skip
ARCHES = (*UNET_CONFIGS, *SKELETONS)

# What ComfyUI's detection must call each config; a mismatch means the config above is wrong.
EXPECTED_MODEL_CLASS = {
    "sd15": "SD15", "sdxl": "SDXL", "flux": "Flux", "flux2": "Flux2", "flux2_klein_4b": "Flux2",
    "flux2_klein_9b": "Flux2", "chroma": "Chroma", "z_image": "ZImage", "qwen_image": "QwenImage",
    "sd35_large": "SD3", "sd35_medium": "SD3",
}  # fmt: skip


def import_comfy(comfyui_dir: Path):
    """Import ComfyUI from ``comfyui_dir`` in CPU mode; returns the modules the script uses."""
    sys.path.insert(0, str(comfyui_dir))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_detection
    import comfy.model_management  # noqa: F401  (must follow the cpu flag)
    import torch

    return comfy, torch


def targetable_shapes(module, torch, prefix: str = "") -> dict[str, list[int]]:
    """Shapes of the weights and biases of every Linear / Conv submodule of ``module``."""
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    out: dict[str, list[int]] = {}
    for name, sub in module.named_modules():
        if not isinstance(sub, kinds):
            continue
        for pname in ("weight", "bias"):
            param = getattr(sub, pname, None)
            if param is not None:
                out[f"{prefix}{name}.{pname}"] = list(param.shape)
    return out


# Archs whose LoRAs may replace the q/k norm scales: FLUX.1, for BFL's Depth/Canny control LoRAs.
QK_NORM_ARCHES = ("flux",)


def qk_norm_shapes(module, prefix: str = "") -> dict[str, list[int]]:
    """``….query_norm.scale`` / ``….key_norm.scale`` of every attention's QKNorm, whatever this ComfyUI calls the
    parameter (``scale`` on 0.3.75, ``weight`` upstream)."""
    out: dict[str, list[int]] = {}
    for name, sub in module.named_modules():
        if name.endswith((".query_norm", ".key_norm")):
            param = getattr(sub, "scale", None)
            if param is None:
                param = sub.weight
            out[f"{prefix}{name}.scale"] = list(param.shape)
    return out


def unet_config(arch: str) -> dict:
    from comfy_env import flux_dit_config  # scripts/ is on the path: this file lives there

    config = dict(UNET_CONFIGS[arch])
    return flux_dit_config(config) if arch == "flux" else config


class CannotBuild(Exception):
    """This ComfyUI cannot build the arch (its detection or model class does not support it)."""


def model_config_for(arch: str, comfy, torch):
    """ComfyUI's model config for ``arch``: from its published config, or detected from its skeleton."""
    if arch in UNET_CONFIGS:
        model_config = comfy.model_detection.model_config_from_unet_config(unet_config(arch))
        state_dict: dict = {}
    else:
        state_dict = {k: torch.empty(shape, device="meta") for k, shape in SKELETONS[arch].items()}
        unet = {k: v for k, v in state_dict.items() if not k.startswith("text_encoders.")}
        model_config = comfy.model_detection.model_config_from_unet(unet, "")
    found = type(model_config).__name__ if model_config is not None else None
    if found != EXPECTED_MODEL_CLASS[arch]:
        raise CannotBuild(f"{arch}: ComfyUI detected {found!r}, expected {EXPECTED_MODEL_CLASS[arch]!r}")
    return model_config, state_dict


def build_table(arch: str, comfy, torch) -> dict[str, list[int]]:
    """Build the ``arch`` model (denoiser + the text encoders a LoRA may target) on ``meta`` and collect the
    targetable keys. Raises :class:`CannotBuild` when this ComfyUI cannot build it."""
    model_config, state_dict = model_config_for(arch, comfy, torch)
    try:
        with torch.device("meta"):
            model = model_config.get_model(state_dict, device="meta")
            clip_target = (
                model_config.clip_target(state_dict) if arch in UNET_CONFIGS or arch.startswith("sd35") else None
            )
            clip = (
                None
                if clip_target is None
                else clip_target.clip(device="meta", dtype=torch.float16, **clip_target.params)
            )
    except (ValueError, AssertionError, TypeError, KeyError) as e:  # e.g. a head count its detection got wrong
        raise CannotBuild(f"{arch}: ComfyUI's model class refused the detected config ({type(e).__name__}: {e})") from e
    table = targetable_shapes(model, torch)
    if arch in QK_NORM_ARCHES:
        table.update(qk_norm_shapes(model))
    if clip is not None:
        table.update(targetable_shapes(clip, torch))
    return dict(sorted(table.items()))


def write_table(path: Path, arch: str, table: dict[str, list[int]], comfy_version: str) -> None:
    """Write one gzip'd JSON table deterministically (fixed mtime) so regenerating leaves git clean."""
    doc = {
        "arch": arch,
        "source": f"ComfyUI {comfy_version} model classes on the meta device (scripts/make_keytables.py)",
        "keys": table,
    }
    raw = json.dumps(doc, separators=(",", ":"), sort_keys=False).encode()
    with open(path, "wb") as fh, gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) as gz:
        gz.write(raw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_dir = os.environ.get("COMFYUI_DIR", str(REPO / ".runtime" / "ComfyUI"))
    parser.add_argument("--comfyui", type=Path, default=Path(default_dir), help="ComfyUI tree to import")
    parser.add_argument("--out", type=Path, default=REPO / "lora_math" / "keytables", help="output folder")
    parser.add_argument("--arch", choices=ARCHES, action="append", help="only these (repeatable)")
    args = parser.parse_args(argv)

    comfy, torch = import_comfy(args.comfyui)
    try:
        from comfyui_version import __version__ as comfy_version
    except ImportError:
        comfy_version = "unknown"
    args.out.mkdir(parents=True, exist_ok=True)
    for arch in args.arch or ARCHES:
        try:
            table = build_table(arch, comfy, torch)
        except CannotBuild as e:
            print(f"skipped {e} (build it with a ComfyUI that can: COMFYUI_DIR=…)")
            continue
        path = args.out / f"{arch}.json.gz"
        write_table(path, arch, table, comfy_version)
        parts: dict[str, int] = {}
        for key in table:
            head = key.split(".", 1)[0]
            parts[head] = parts.get(head, 0) + 1
        print(f"{path}: {len(table)} keys {parts} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
