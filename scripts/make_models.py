"""Write small, seeded-random models with the real key layouts ComfyUI's loaders detect.

These are stand-ins: no weights can be downloaded here, so the demo and the tests run on models that
have the real architectures (ComfyUI's own classes build the key layout), thinned to run on a CPU,
with random weights. Images they produce are noise-like patterns, not pictures.

  .venv/bin/python scripts/make_models.py [--seed N] [--out DIR] [--only NAME ...]

Deterministic: the bytes of every file depend only on the seed and this file's content (each tensor
gets its own generator seeded from (seed, file, key)). Files are regenerated when either changes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfy_env import INPUT, MODELS, flux_dit_config, import_comfy  # noqa: E402

GENERATOR_VERSION = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]

# SD1.5 UNet thinned: one res block and one transformer per level, two levels. Detection needs
# model_channels 320 and context_dim 768; block counts are read from the weights.
SD15_UNET = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[1, 1],
    channel_mult=[1, 2], transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1],
    transformer_depth_middle=1, use_linear_in_transformer=False, context_dim=768, num_heads=8,
    use_spatial_transformer=True, legacy=False, adm_in_channels=None, use_checkpoint=False,
    use_temporal_attention=False, use_temporal_resblock=False,
)  # fmt: skip
# SDXL family: Segmind-Vega's transformer depths (detection matches them exactly) with SDXL's
# SGM key names, 2048-dim cross-attention and size conditioning; channel_mult is free, kept at 1.
SDXL_UNET = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2],
    channel_mult=[1, 1, 1], transformer_depth=[0, 0, 1, 1, 2, 2], transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2],
    transformer_depth_middle=-1, use_linear_in_transformer=True, context_dim=2048, num_head_channels=64,
    use_spatial_transformer=True, legacy=False, num_classes="sequential", adm_in_channels=2816,
    use_checkpoint=False, use_temporal_attention=False, use_temporal_resblock=False,
)  # fmt: skip
# FLUX.1: hidden size 3072 is fixed by detection; one double and one single block.
FLUX_DIT = dict(
    image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=3072,
    mlp_ratio=4.0, num_heads=24, depth=1, depth_single_blocks=1, axes_dim=[16, 56, 56], theta=10000,
    patch_size=2, qkv_bias=True, guidance_embed=True,
)  # fmt: skip
SD_VAE = dict(
    double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
    num_res_blocks=2, attn_resolutions=[], dropout=0.0,
)  # fmt: skip

LORA_RANK = 8
TRIGGER = "loomstyle"


def meta_shapes(module: torch.nn.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def sd15_shapes() -> dict[str, tuple[int, ...]]:
    import comfy.ldm.models.autoencoder
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.ops
    import comfy.sd1_clip

    ops = comfy.ops.disable_weight_init
    with torch.device("meta"):
        unet = openaimodel.UNetModel(**SD15_UNET, operations=ops)
        clip = comfy.sd1_clip.SDClipModel(device="meta")
        vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=SD_VAE, embed_dim=4)
    shapes = meta_shapes(unet, "model.diffusion_model.")
    clip_shapes = meta_shapes(clip.transformer, "cond_stage_model.transformer.")
    # SD1.5 checkpoints carry no text projection; ComfyUI's CLIP-L class has one for SDXL use.
    shapes.update({k: v for k, v in clip_shapes.items() if "text_projection" not in k and "logit_scale" not in k})
    shapes.update(meta_shapes(vae, "first_stage_model."))
    return shapes


def sdxl_shapes() -> dict[str, tuple[int, ...]]:
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.ops

    with torch.device("meta"):
        unet = openaimodel.UNetModel(**SDXL_UNET, operations=comfy.ops.disable_weight_init)
    return meta_shapes(unet)


def flux_shapes() -> dict[str, tuple[int, ...]]:
    import comfy.ldm.flux.model
    import comfy.ops

    with torch.device("meta"):
        dit = comfy.ldm.flux.model.Flux(operations=comfy.ops.disable_weight_init, **flux_dit_config(FLUX_DIT))
    return meta_shapes(dit)


def tensor_seed(seed: int, name: str, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}:{key}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def init_tensor(key: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Fan-in scaled normal weights, zero biases, unit norms: activations stay O(1) through depth."""
    leaf = key.rsplit(".", 1)[-1]
    if leaf in ("bias",) or len(shape) == 0:
        return torch.zeros(shape)
    if len(shape) == 1:  # norm scales and 1-d parameters
        return torch.ones(shape)
    g = torch.Generator().manual_seed(seed)
    if "embedding" in key:
        return torch.randn(shape, generator=g) * 0.02
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=g) / math.sqrt(fan_in)


def random_state_dict(name: str, shapes: dict[str, tuple[int, ...]], seed: int, dtype: torch.dtype):
    out = {}
    for key in sorted(shapes):
        t = init_tensor(key, shapes[key], tensor_seed(seed, name, key))
        # Integer buffers (e.g. CLIP position ids) keep their meaning.
        if key.endswith("position_ids"):
            t = torch.arange(shapes[key][-1]).reshape(shapes[key])
        else:
            t = t.to(dtype)
        out[key] = t.contiguous()
    return out


def sd15_loha(seed: int, unet_keys: list[tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """A LyCORIS LoHa (kohya names) on the tiny SD1.5 UNet's attention projections, rank 4."""
    import comfy.utils

    ldm_to_diffusers = {v: k for k, v in comfy.utils.unet_to_diffusers(SD15_UNET).items()}
    tensors: dict[str, torch.Tensor] = {}
    for key, (out_f, in_f) in unet_keys:
        ldm = key[len("model.diffusion_model.") :]
        name = "lora_unet_" + ldm_to_diffusers[ldm][: -len(".weight")].replace(".", "_")
        g = torch.Generator().manual_seed(tensor_seed(seed, "loha", name))
        for half in ("1", "2"):
            tensors[f"{name}.hada_w{half}_a"] = (torch.randn(out_f, 4, generator=g) * 0.3).half()
            tensors[f"{name}.hada_w{half}_b"] = (torch.randn(4, in_f, generator=g) / math.sqrt(in_f)).half()
        tensors[f"{name}.alpha"] = torch.tensor(4.0).half()
    return tensors


def sd15_lora(seed: int, unet_keys: list[str], clip_keys: list[str]) -> tuple[dict, dict]:
    """A kohya-format LoRA for the tiny SD1.5 model: attention projections of UNet and CLIP-L.

    kohya names SD1 UNet modules by their diffusers names; the map from the thinned LDM layout to
    diffusers names comes from ComfyUI's own converter for this UNet config.
    """
    import comfy.utils

    ldm_to_diffusers = {v: k for k, v in comfy.utils.unet_to_diffusers(SD15_UNET).items()}
    tensors: dict[str, torch.Tensor] = {}

    def add(name: str, out_f: int, in_f: int):
        g = torch.Generator().manual_seed(tensor_seed(seed, "lora", name))
        tensors[f"{name}.lora_down.weight"] = (torch.randn(LORA_RANK, in_f, generator=g) / math.sqrt(in_f)).half()
        tensors[f"{name}.lora_up.weight"] = (torch.randn(out_f, LORA_RANK, generator=g) * 0.5).half()
        tensors[f"{name}.alpha"] = torch.tensor(float(LORA_RANK / 2)).half()

    for key, shape in unet_keys:
        ldm = key[len("model.diffusion_model.") :]
        if ldm in ldm_to_diffusers:
            add("lora_unet_" + ldm_to_diffusers[ldm][: -len(".weight")].replace(".", "_"), shape[0], shape[1])
    for key, shape in clip_keys:
        name = key[len("cond_stage_model.transformer.") : -len(".weight")]
        add("lora_te_" + name.replace(".", "_"), shape[0], shape[1])
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(LORA_RANK),
        "ss_network_alpha": str(LORA_RANK / 2),
        "ss_base_model_version": "sd_v1",
        "ss_tag_frequency": json.dumps({"loom": {TRIGGER: 10}}),
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.title": "LoRA Loom tiny demo LoRA (random weights)",
        "modelspec.trigger_phrase": TRIGGER,
        "loom.note": "seeded random stand-in written by scripts/make_models.py; not a trained LoRA",
    }
    return tensors, metadata


def is_attention_projection(key: str) -> bool:
    return key.endswith((".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight"))


def is_clip_attention(key: str) -> bool:
    return "self_attn." in key and key.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight"))


def build(name: str, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    meta = {"loom.generator": GENERATOR_VERSION, "loom.seed": str(seed), "loom.note": "seeded random stand-in"}
    if name == "loom-tiny-sd15":
        return random_state_dict(name, sd15_shapes(), seed, torch.float16), meta
    if name == "loom-tiny-sdxl":
        return random_state_dict(name, sdxl_shapes(), seed, torch.float16), meta
    if name == "loom-tiny-flux":
        return random_state_dict(name, flux_shapes(), seed, torch.bfloat16), meta
    if name == "loom-tiny-sd15-lora":
        shapes = sd15_shapes()
        unet = [(k, s) for k, s in sorted(shapes.items()) if k.startswith("model.") and is_attention_projection(k)]
        clip = [(k, s) for k, s in sorted(shapes.items()) if k.startswith("cond_stage_model.") and is_clip_attention(k)]
        tensors, lora_meta = sd15_lora(seed, unet, clip)
        return tensors, {**lora_meta, **meta}
    if name in ("loom-tiny-sd15-lora-b", "loom-tiny-sd15-loha"):
        shapes = sd15_shapes()
        unet = [(k, s) for k, s in sorted(shapes.items()) if k.startswith("model.") and is_attention_projection(k)]
        extra = {"loom.note": "seeded random stand-in (UNet only)", "ss_base_model_version": "sd_v1"}
        if name.endswith("-b"):
            tensors, _ = sd15_lora(seed + 1, unet, [])
            return tensors, {**meta, **extra, "ss_network_module": "networks.lora"}
        return sd15_loha(seed, unet), {
            **meta,
            **extra,
            "ss_network_module": "lycoris.kohya",
            "ss_network_args": '{"algo": "loha"}',
        }
    raise KeyError(name)


# name -> ComfyUI model folder (see comfy_env.MODEL_FOLDERS)
OUTPUTS = {
    "loom-tiny-sd15": "checkpoints",
    "loom-tiny-sdxl": "unet",
    "loom-tiny-flux": "unet",
    "loom-tiny-sd15-lora": "loras",
    "loom-tiny-sd15-lora-b": "loras",
    "loom-tiny-sd15-loha": "loras",
}


def write_atomic(path: Path, tensors: dict, metadata: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


CONCEPT = "loom_concept"


def write_concept_images(out: Path, count: int = 8) -> None:
    """A tiny training set for the trainer demo: a red disc on blue, jittered, sizes varying; kohya .txt captions."""
    from PIL import Image, ImageDraw

    folder = out / CONCEPT
    if len(list(folder.glob("*.png"))) == count:
        return
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(1234)
    for i in range(count):
        w, h = (96, 64) if i % 3 == 0 else (64, 64)
        r = torch.randint(14, 22, (1,), generator=g).item()
        cx = w // 2 + torch.randint(-8, 9, (1,), generator=g).item()
        cy = h // 2 + torch.randint(-8, 9, (1,), generator=g).item()
        img = Image.new("RGB", (w, h), (30, 60, 200))
        ImageDraw.Draw(img).ellipse((cx - r, cy - r, cx + r, cy + r), fill=(220, 40, 30))
        tmp = folder / f".{i:02d}.png.tmp"
        img.save(tmp, format="PNG")
        tmp.replace(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text("a photo of {trigger}, red disc on blue\n")
    print(f"[models] wrote {count} training images to {folder}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=int(os.environ.get("LOOM_MODEL_SEED", "0")))
    ap.add_argument("--out", type=Path, default=MODELS)
    ap.add_argument("--only", nargs="*", choices=sorted(OUTPUTS), help="write only these models")
    ap.add_argument("--force", action="store_true", help="rewrite even when the stamp is current")
    args = ap.parse_args(argv)

    import_comfy(cpu=True)
    stamp_path = args.out / ".loom-models.json"
    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        stamp = {}
    want = {"generator": GENERATOR_VERSION, "seed": args.seed}
    for name in args.only or sorted(OUTPUTS):
        path = args.out / OUTPUTS[name] / f"{name}.safetensors"
        if not args.force and path.exists() and stamp.get(name) == want:
            continue
        t0 = time.perf_counter()
        tensors, metadata = build(name, args.seed)
        write_atomic(path, tensors, metadata)
        stamp[name] = want
        stamp_path.parent.mkdir(parents=True, exist_ok=True)
        stamp_path.write_text(json.dumps(stamp, indent=1, sort_keys=True))
        n = sum(t.numel() for t in tensors.values())
        print(f"[models] wrote {path} ({n / 1e6:.0f} M params, {time.perf_counter() - t0:.1f} s)", flush=True)
    write_concept_images(INPUT)
    print(f"[models] ready in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
