"""Apply and re-apply a LoRA stack: Loom LoRA Stack path vs ComfyUI core's LoraLoader chain, same run.

apply:   the base model is loaded; a stack of N LoRAs is applied and the model loaded for sampling.
reapply: a stack is loaded; the same LoRAs at new strengths are applied and the model loaded again
         (what happens when a user moves a strength slider and queues again).
Files are parsed once on both sides (core's LoraLoader node also keeps its last file in memory), so
the figures are the patch work. CPU: the small SDXL-class stand-in (Segmind-Vega depths), rank 8.
--gpu: full-size SDXL UNet, random fp16 weights, rank 32 on every attention projection, peak VRAM.
"""

from __future__ import annotations

import math
import statistics
import time

from _common import REPO, device_name, emit, parse_args, setup, sync

ATTN = (".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight")
SDXL_FULL = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2],
    channel_mult=[1, 2, 4], transformer_depth=[0, 0, 2, 2, 10, 10], context_dim=2048, num_head_channels=64,
    transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], transformer_depth_middle=10,
    use_linear_in_transformer=True, use_spatial_transformer=True, legacy=False, num_classes="sequential",
    adm_in_channels=2816, use_temporal_attention=False, use_temporal_resblock=False,
)  # fmt: skip


def full_size_sdxl_on_gpu():
    """Full-size SDXL UNet with random fp16 weights built on CUDA, detected by ComfyUI as SDXL."""
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.ops
    import comfy.sd
    import torch

    with torch.device("meta"):
        unet = openaimodel.UNetModel(**SDXL_FULL, operations=comfy.ops.disable_weight_init)
    g = torch.Generator(device="cuda").manual_seed(0)
    sd = {}
    for k, v in unet.state_dict().items():
        t = torch.empty(v.shape, device="cuda", dtype=torch.float16)
        sd[k] = t.normal_(0, 1 / math.sqrt(math.prod(v.shape[1:])), generator=g) if v.dim() > 1 else t.fill_(0)
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


def main() -> None:
    args = parse_args(__doc__, lambda ap: ap.add_argument("--rank", type=int, default=None))
    pack = setup(args.gpu)
    import comfy.model_management as mm
    import comfy.sd
    import comfy.utils
    import folder_paths
    import torch

    if args.gpu:
        model, rank, what = full_size_sdxl_on_gpu(), args.rank or 32, "SDXL UNet full size, fp16"
    else:
        model = comfy.sd.load_diffusion_model(
            folder_paths.get_full_path("diffusion_models", "loom-tiny-sdxl.safetensors")
        )
        rank, what = args.rank or 8, "small SDXL-class stand-in (Segmind-Vega depths)"
    names = write_loras(model, 3, rank)
    state_dicts = {n: comfy.utils.load_torch_file(folder_paths.get_full_path("loras", n)) for n in names}
    patching, lora_files = pack.nodes.patching, pack.nodes.lora_files
    parsed = {n: lora_files.load(n) for n in names}
    targets = sum(1 for k in model.model.state_dict() if k.endswith(ATTN))

    def core(count, strengths):
        m = model
        for n, s in zip(names[:count], strengths, strict=True):
            m = comfy.sd.load_lora_for_models(m, None, state_dicts[n], s, 0)[0]
        return m

    def loom(count, strengths):
        specs = [patching.LoraSpec(n, parsed[n], s, 0) for n, s in zip(names[:count], strengths, strict=True)]
        return patching.apply_stack(model, None, specs)[0]

    def load(patcher):
        mm.load_models_gpu([patcher], force_full_load=True)

    def measure(make, count, reapply: bool) -> float:
        times = []
        for i in range(args.repeat + 1):
            strengths = [0.5 + 0.01 * i + 0.1 * j for j in range(count)]
            load(make(count, [s + 0.3 for s in strengths]) if reapply else model)  # untimed starting state
            sync()
            t0 = time.perf_counter()
            load(make(count, strengths))
            sync()
            if i:  # the first round warms up
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    cases = {}
    for count in (1, 3):
        case = {}
        for label, make in (("core", core), ("loom", loom)):
            mm.unload_all_models()
            case[f"{label}_apply_s"] = round(measure(make, count, reapply=False), 5)
            if args.gpu:
                torch.cuda.reset_peak_memory_stats()
            case[f"{label}_reapply_s"] = round(measure(make, count, reapply=True), 5)
            if args.gpu:
                case[f"{label}_reapply_peak_vram_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        case["speedup_reapply"] = round(case["core_reapply_s"] / case["loom_reapply_s"], 1)
        case["speedup_apply"] = round(case["core_apply_s"] / case["loom_apply_s"], 2)
        cases[f"{count}_lora"] = case
    emit(
        {
            "bench": "patch",
            "what": f"{what}, {len(names)} LoRAs rank {rank} on {targets} attention projections",
            "device": device_name(args.gpu),
            **cases["3_lora"],
            "cases": cases,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
