"""Shared bench plumbing: `python bench/<name>.py [--gpu] [--json]` prints one JSON object.

CPU by default, on the small stand-in models; `--gpu` builds full-size architectures with random
weights on CUDA. Every bench measures ComfyUI core in the same process and reports the ratio.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))


def parse_args(description: str, extra=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--gpu", action="store_true", help="full-size model with random weights on CUDA")
    ap.add_argument("--json", action="store_true", help="print one JSON object (default: also a short table)")
    ap.add_argument("--repeat", type=int, default=5)
    if extra:
        extra(ap)
    return ap.parse_args()


def setup(gpu: bool):
    from comfy_env import import_comfy, load_pack, register_model_folders

    import_comfy(cpu=not gpu)
    register_model_folders()
    import torch

    if gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu needs CUDA, and torch sees no GPU here")
    return load_pack()


def device_name(gpu: bool) -> str:
    import torch

    if gpu:
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def sync():
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn, repeat: int, warmup: int = 1, best: bool = False) -> float:
    """Median (``best``: the fastest) wall time of fn() in seconds, GPU work included. The fastest run is the steadier
    figure for short calls on a shared CPU, where other work only ever adds time."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times) if best else statistics.median(times)


def emit(result: dict, as_json: bool) -> None:
    result.setdefault("date", datetime.date.today().isoformat())
    if not as_json:
        for k, v in result.items():
            print(f"{k:>28}: {v}", file=sys.stderr)
    print(json.dumps(result, sort_keys=True))


# --- models and LoRAs shared by the benches -------------------------------------------------------

ATTN = (".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight")
SDXL_FULL = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2],
    channel_mult=[1, 2, 4], transformer_depth=[0, 0, 2, 2, 10, 10], context_dim=2048, num_head_channels=64,
    transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], transformer_depth_middle=10,
    use_linear_in_transformer=True, use_spatial_transformer=True, legacy=False, num_classes="sequential",
    adm_in_channels=2816, use_temporal_attention=False, use_temporal_resblock=False,
)  # fmt: skip

# Full-size FLUX.1-dev DiT (what ComfyUI's detection calls `Flux`): 19 double and 38 single blocks, ~11.9 B params.
FLUX_FULL = dict(
    image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=3072,
    mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38, axes_dim=[16, 56, 56], theta=10000,
    patch_size=2, qkv_bias=True, guidance_embed=True,
)  # fmt: skip


def full_size_sdxl_on_gpu(seed: int = 0):
    """Full-size SDXL UNet with random fp16 weights built on CUDA, detected by ComfyUI as SDXL.

    Fan-in scaled normal weights, zero biases and unit norm scales (as the CPU stand-ins): activations stay
    O(1) through depth, so every layer, a LoRA's attention projections included, shapes the output.
    """
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.ops
    import comfy.sd
    import torch

    with torch.device("meta"):
        unet = openaimodel.UNetModel(**SDXL_FULL, operations=comfy.ops.disable_weight_init)
    g = torch.Generator(device="cuda").manual_seed(seed)
    sd = {}
    for k, v in unet.state_dict().items():
        t = torch.empty(v.shape, device="cuda", dtype=torch.float16)
        if v.dim() > 1:
            sd[k] = t.normal_(0, 1 / math.sqrt(math.prod(v.shape[1:])), generator=g)
        else:
            sd[k] = t.fill_(0 if k.endswith("bias") else 1)
    return comfy.sd.load_diffusion_model_state_dict(sd)


def write_loras(model, count: int, rank: int) -> list[str]:
    """Seeded kohya LoRAs on every attention projection of the model, in a bench `loras` folder."""
    import folder_paths
    import torch
    from safetensors.torch import save_file

    out_dir = REPO / ".runtime" / "bench" / "loras"
    out_dir.mkdir(parents=True, exist_ok=True)
    folder_paths.add_model_folder_path("loras", str(out_dir))
    shapes = {k: v.shape for k, v in model.model.state_dict().items() if k.endswith(ATTN)}
    names = []
    for i in range(count):
        g = torch.Generator().manual_seed(1000 + i)
        sd = {}
        for key, shape in shapes.items():
            name = "lora_unet_" + key[len("diffusion_model.") : -len(".weight")].replace(".", "_")
            sd[f"{name}.lora_down.weight"] = (torch.randn(rank, shape[1], generator=g) / math.sqrt(shape[1])).half()
            sd[f"{name}.lora_up.weight"] = (torch.randn(shape[0], rank, generator=g) * 0.01).half()
            sd[f"{name}.alpha"] = torch.tensor(float(rank))
        path = out_dir / f"bench-{len(shapes)}-r{rank}-{i}.safetensors"
        if not path.exists():
            save_file(sd, str(path))
        names.append(path.name)
    return names


def bridge(pack):
    """The pack's ComfyUI boundary (``nodes.comfy_bridge``; ``nodes.patching`` in checkouts from before it), so a
    bench runs on an older checkout of the pack too, for before/after figures."""
    import importlib

    from comfy_env import PACK_MODULE

    try:
        return importlib.import_module(f"{PACK_MODULE}.nodes.comfy_bridge")
    except ImportError:
        return importlib.import_module(f"{PACK_MODULE}.nodes.patching")
