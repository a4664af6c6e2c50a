"""Write ``lora_math/keytables/{sd15,sdxl,flux}.json.gz``: the LoRA-targetable weight keys of real models.

Each table maps a ComfyUI ModelPatcher key (``diffusion_model.…weight``, ``clip_l.transformer.…weight``,
``clip_g.transformer.…``, ``t5xxl.transformer.…``) to its shape, for the weights of ``Linear`` and ``Conv`` modules
(and their biases): the only weights a LoRA file can target. The models are ComfyUI's own classes, built on the
``meta`` device from the published SD1.5 / SDXL / FLUX.1-dev configurations, so nothing is allocated and no weights
are downloaded. The output holds key names and shapes only.

Run with the project venv and a ComfyUI tree (default ``.runtime/ComfyUI``, or ``COMFYUI_DIR``)::

    .venv/bin/python scripts/make_keytables.py [--comfyui DIR] [--out lora_math/keytables]
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

# What ComfyUI's detection must call each config; a mismatch means the config above is wrong.
EXPECTED_MODEL_CLASS = {"sd15": "SD15", "sdxl": "SDXL", "flux": "Flux"}


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


def unet_config(arch: str) -> dict:
    from comfy_env import flux_dit_config  # scripts/ is on the path: this file lives there

    config = dict(UNET_CONFIGS[arch])
    return flux_dit_config(config) if arch == "flux" else config


def build_table(arch: str, comfy, torch) -> dict[str, list[int]]:
    """Build the ``arch`` model (denoiser + its text encoders) on ``meta`` and collect the targetable keys."""
    model_config = comfy.model_detection.model_config_from_unet_config(unet_config(arch))
    found = type(model_config).__name__ if model_config is not None else None
    if found != EXPECTED_MODEL_CLASS[arch]:
        raise SystemExit(f"{arch}: ComfyUI detected {found!r}, expected {EXPECTED_MODEL_CLASS[arch]!r}")
    with torch.device("meta"):
        model = model_config.get_model({}, device="meta")
        clip_target = model_config.clip_target()
        clip = clip_target.clip(device="meta", dtype=torch.float16, **clip_target.params)
    table = targetable_shapes(model, torch)
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
    parser.add_argument("--arch", choices=sorted(UNET_CONFIGS), action="append", help="only these (repeatable)")
    args = parser.parse_args(argv)

    comfy, torch = import_comfy(args.comfyui)
    try:
        from comfyui_version import __version__ as comfy_version
    except ImportError:
        comfy_version = "unknown"
    args.out.mkdir(parents=True, exist_ok=True)
    for arch in args.arch or sorted(UNET_CONFIGS):
        table = build_table(arch, comfy, torch)
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
