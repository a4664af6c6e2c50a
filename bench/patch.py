"""Apply and re-apply a LoRA stack: Loom LoRA Stack path vs ComfyUI core's LoraLoader chain, same run.

apply:   the base model is loaded; a stack of N LoRAs is applied and the model loaded for sampling.
reapply: a stack is loaded; the same LoRAs at new strengths are applied and the model loaded again
         (what happens when a user moves a strength slider and queues again).
Files are parsed once on both sides (core's LoraLoader node also keeps its last file in memory), so
the figures are the patch work. CPU: the small SDXL-class stand-in (Segmind-Vega depths), rank 8.
--gpu: full-size SDXL UNet, random fp16 weights, rank 32 on every attention projection, peak VRAM.
"""

from __future__ import annotations

import statistics
import time

from _common import ATTN, bridge, device_name, emit, full_size_sdxl_on_gpu, parse_args, setup, sync, write_loras


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
    patching, lora_files = bridge(pack), pack.nodes.files.lora_files
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
