"""LoRA utilities: merge a stack into one LoRA, extract a LoRA from two models; vs the dense way, same run.

merge:   three rank-r LoRAs on every attention projection merged into one rank-2r LoRA with Loom Merge LoRAs
         (factored SVD: two thin QRs and a 3r×3r SVD per weight) vs the dense way sd-scripts' svd_merge_lora
         takes (materialise Σ sΔW per weight, full SVD, truncate), on the same device. Both give the optimal
         rank-2r approximation; the relative errors are printed to show it.
extract: the attention projections of two models (fine-tuned minus base) at rank 32 with Loom Extract LoRA vs
         ComfyUI core's extraction math (``comfy_extras.nodes_lora_extract.extract_lora``: a full SVD per weight,
         factors clamped at their 99th percentile) on the same differences, precomputed for core (Loom's time
         includes reading both models' weights); relative errors overall, ‖ΔW − ΔW_r‖/‖ΔW‖; peak VRAM on the GPU.
CPU: the small SDXL-class stand-in (Segmind-Vega depths), "fine-tuned" = stand-in + a Loom stack of three LoRAs.
--gpu: the full-size SDXL UNet with random fp16 weights; extract from two such UNets (different seeds).
"""

from __future__ import annotations

import time

from _common import ATTN, bridge, device_name, emit, full_size_sdxl_on_gpu, parse_args, setup, sync, timed, write_loras


def main() -> None:
    args = parse_args(__doc__, lambda ap: ap.add_argument("--rank", type=int, default=None))
    pack = setup(args.gpu)
    import comfy.model_management as mm
    import comfy.sd
    import folder_paths
    import torch
    from comfy_extras.nodes_lora_extract import extract_lora

    lowrank = pack.lora_math.lowrank.delta
    tools, stack, patching = pack.nodes.tools, pack.nodes.load.stack, bridge(pack)
    if args.gpu:
        base, what = full_size_sdxl_on_gpu(), "SDXL UNet full size, random fp16 weights"
        rank, extract_rank = args.rank or 32, 32
    else:
        path = folder_paths.get_full_path("diffusion_models", "loom-tiny-sdxl.safetensors")
        base, what = comfy.sd.load_diffusion_model(path), "small SDXL-class stand-in (Segmind-Vega depths)"
        rank, extract_rank = args.rank or 8, 8
    names = write_loras(base, 3, rank)
    entries = [stack.LoraStackEntry(n, s, 0.0) for n, s in zip(names, (1.0, 0.7, -0.5), strict=True)]
    keys = [k for k in base.model.state_dict() if k.endswith(ATTN)]
    device = mm.get_torch_device()

    # --- merge ------------------------------------------------------------------------------------------------------
    def loom_merge():
        return tools.merge.LoomMergeLoras.execute(model=base, lora_stack=entries, mode="compressed", rank=2 * rank)

    lora, report = loom_merge().result  # warm: files parsed, key matches cached (as after a first run)
    merge_s = timed(loom_merge, args.repeat)
    specs = pack.nodes.tools.stack_updates.specs_of(base, None, entries)
    updates = pack.nodes.tools.stack_updates.stack_updates(base, None, specs, device)

    def dense_merge() -> float:
        """Overall relative error ‖ΔW − ΔW_k‖/‖ΔW‖ over all weights, as Loom reports it."""
        lost = total = 0.0
        for w in updates.weights:
            dense = lowrank.sum_deltas([d for d in w.deltas if d is not None]).matrix()
            u, s, vh = torch.linalg.svd(dense, full_matrices=False)
            k = 2 * rank
            approx = (u[:, :k] * s[:k]) @ vh[:k]
            lost += float((dense - approx).pow(2).sum())
            total += float(dense.pow(2).sum())
        return (lost / total) ** 0.5

    dense_s = timed(dense_merge, max(1, args.repeat // 2))
    dense_error = dense_merge()
    loom_error = float(lora.notes["relative_error"])

    # --- extract ----------------------------------------------------------------------------------------------------
    if args.gpu:
        tuned = full_size_sdxl_on_gpu(seed=1)
    else:
        tuned = stack.LoomLoraStack.execute(model=base, rows="[]", lora_stack=entries).result[0]
    sync()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        resident = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    extracted, extract_report = tools.extract.LoomExtractLora.execute(
        model_tuned=tuned, model_base=base, target="attention", method="rank", rank=extract_rank
    ).result
    sync()
    loom_extract_s = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

    diffs = [patching.effective_weight(tuned, k, device) - patching.effective_weight(base, k, device) for k in keys]
    sync()
    t0 = time.perf_counter()
    outs = [extract_lora(diff, extract_rank) for diff in diffs]
    sync()
    core_extract_s = time.perf_counter() - t0
    lost = sum(float((d - up.float() @ down.float()).pow(2).sum()) for d, (up, down) in zip(diffs, outs, strict=True))
    core_error = (lost / sum(float(d.pow(2).sum()) for d in diffs)) ** 0.5  # overall, as Loom reports it
    del diffs, outs

    result = {
        "bench": "utilities",
        "what": f"{what}; 3 LoRAs rank {rank} on {len(keys)} attention projections",
        "device": device_name(args.gpu),
        f"merge_3xr{rank}_to_r{2 * rank}_s": round(merge_s, 4),
        "merge_dense_svd_s": round(dense_s, 4),
        "merge_speedup": round(dense_s / merge_s, 1),
        "merge_relative_error_loom": round(loom_error, 6),
        "merge_relative_error_dense": round(dense_error, 6),
        f"extract_r{extract_rank}_s": round(loom_extract_s, 3),
        "extract_core_math_s": round(core_extract_s, 3),
        "extract_speedup": round(core_extract_s / loom_extract_s, 2),
        "extract_modules": len(extracted.modules),
        "extract_relative_error_loom": extracted.notes["relative_error"],
        "extract_relative_error_core": round(core_error, 6),
    }
    if peak is not None:
        result["extract_peak_vram_gib"] = round(peak / 2**30, 2)
        result["extract_peak_above_models_gib"] = round((peak - resident) / 2**30, 2)
    emit(result, args.json)


if __name__ == "__main__":
    main()
