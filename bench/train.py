"""LoRA training speed: the Loom training engine vs ComfyUI core's `TrainLoraNode`, same model, same run.

Both trainers get the same latents (random, `--images` of them, one size) and the same conditioning (random SDXL
cross-attention [1,77,2048] + pooled [1,1280] with width/height per image; FLUX: T5 [1,512,4096] + pooled [1,768],
guidance 1), rank 16, batch 1, the same learning rate, AdamW, the same number of steps, and the same model dtype.
"Matched settings" means same rank / batch / resolution / steps / optimizer / precision, not the same layers: core
trains every weight of the model (a LoRA on each Linear and Conv, plus full-size diffs of every bias and norm
weight), Loom only the attention projections (its default target preset); the JSON says how many of each (`what`).

Core: `TrainLoraNode.execute(...)` called in-process as ComfyUI runs it (lists for its is_input_list inputs, a list
of single-image latents: one batched LATENT trips its `multi_res` bug). Loom: the engine API without VAE or CLIP,
`nodes.train.engine.Item` objects built from the latents and the model's own `extra_conds`, then `train(Run(...))`.

Timing: a global AdamW step hook timestamps every optimizer step, so each step's time is the interval between two
optimizer steps (forward, backward, optimizer, the trainer's own per-step bookkeeping); the first `--warmup` steps
(and the setup before step 1) are dropped, and s/step is the median over the `--steps` timed ones (every step does
the same work, so the median is the steady-state step; on a shared machine it ignores steps slowed by other jobs;
the mean, min, max and every step are in `runs`, with the load average and this process's CPU use per wall second).
The fixed cost of each call (setup, model load, teardown) is reported separately (`setup_s`, `teardown_s`).

Memory: on CUDA, `torch.cuda.max_memory_allocated` after a reset right before each trainer's call (weights resident
on the GPU included). On the CPU, the process max RSS from `resource.getrusage` after each trainer's phase (Loom runs
first, so the core figure is a max over both), and the peak RSS sampled every 10 ms during each trainer's call.

CPU (default): the small SDXL-class stand-in `loom-tiny-sdxl` (Segmind-Vega depths), fp32, 128x128 px, no gradient
checkpointing on either side. `--gpu`: full-size SDXL UNet with random bf16 weights on CUDA, 1024x1024, gradient
checkpointing on for both (and one Loom run without, unless `--no-nockpt`). `--flux` picks the FLUX family instead:
with `--gpu` the full-size FLUX.1-dev DiT (19 double + 38 single blocks, random bf16 weights), 1024x1024, Loom with
checkpointing (and without), then core unless `--skip-core`; without `--gpu` the tiny FLUX stand-in `loom-tiny-flux`
(1 + 1 blocks) in fp32 at 64x64 on the CPU, a cheap check of the FLUX path.
Cheap GPU runs: `--steps 5 --warmup 2`, `--skip-core`, `--no-nockpt`.

A run that fails (CUDA out of memory, an autograd error) is recorded under `errors` with its traceback on stderr,
the other runs still report, and the exit status is 1. Known on ComfyUI 0.3.75: its FLUX blocks add to the residual
stream in place (`x += …`) after a LayerNorm saved it for backward, so training FLUX without checkpointing fails in
backward (core and Loom alike); core's checkpointing wrapper happens to avoid it.
"""

from __future__ import annotations

import gc
import importlib
import math
import sys
import time
import traceback

from _common import FLUX_FULL, SDXL_FULL, device_name, emit, parse_args, setup
from _measure import GIB, StepClock, log, measure, profile
from _trainers import core_call, core_what, loom_items


def options(ap) -> None:
    ap.add_argument("--flux", action="store_true", help="FLUX DiT (full size with --gpu, the tiny stand-in on CPU)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per trainer (default 20 CPU, 10 GPU)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before the timed ones")
    ap.add_argument("--size", type=int, default=None, help="image side in px (default 1024 GPU; CPU 128, FLUX 64)")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-core", action="store_true", help="Loom only")
    ap.add_argument("--skip-loom", action="store_true", help="core only")
    ap.add_argument("--no-nockpt", action="store_true", help="GPU: leave out the Loom run without checkpointing")
    ap.add_argument(
        "--checkpointing", choices=("on", "off"), default=None, help="gradient checkpointing (default off CPU, on GPU)"
    )
    ap.add_argument("--core-lora-dtype", choices=("bf16", "fp32"), default=None, help="default fp32 CPU, bf16 GPU")
    ap.add_argument(
        "--compile",
        choices=("off", "default", "max-autotune"),
        default="off",
        help="also time Loom with torch.compile in this mode (both Loom runs then use PyTorch's SDPA attention)",
    )
    ap.add_argument(
        "--profile", type=int, default=0, metavar="K", help="afterwards, profile K steady-state steps of each trainer"
    )


def is_oom(e: BaseException | None) -> bool:
    """A CUDA out-of-memory error, also when a trainer re-raised it as its own error."""
    import torch

    while e is not None:
        if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower():
            return True
        e = e.__cause__ or e.__context__
    return False


# --- models -------------------------------------------------------------------------------------------------------


def random_model_on_gpu(build_meta, dtype):
    """A ComfyUI ModelPatcher detected from a random state dict made on CUDA (fan-in normal weights, zero biases,
    unit norm scales, as the CPU stand-ins), loaded in `dtype`."""
    import comfy.sd
    import torch

    with torch.device("meta"):
        module = build_meta()
    shapes = {k: (v.shape, v.dtype) for k, v in module.state_dict().items()}
    del module
    g = torch.Generator(device="cuda").manual_seed(0)
    sd = {}
    for k, (shape, meta_dtype) in shapes.items():
        if not meta_dtype.is_floating_point:
            sd[k] = torch.zeros(shape, device="cuda", dtype=meta_dtype)
            continue
        t = torch.empty(shape, device="cuda", dtype=dtype)
        if len(shape) > 1:
            sd[k] = t.normal_(0, 1 / math.sqrt(math.prod(shape[1:])), generator=g)
        else:
            sd[k] = t.fill_(0 if k.endswith("bias") else 1)
    patcher = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": dtype})
    del sd
    torch.cuda.empty_cache()
    return patcher


def build_model(args):
    import comfy.ops
    import comfy.sd
    import folder_paths
    import torch

    if args.flux and args.gpu:
        import comfy.ldm.flux.model
        from comfy_env import flux_dit_config

        def flux():
            return comfy.ldm.flux.model.Flux(operations=comfy.ops.disable_weight_init, **flux_dit_config(FLUX_FULL))

        return random_model_on_gpu(flux, torch.bfloat16), "FLUX.1-dev DiT full size (19+38 blocks), random bf16"
    if args.gpu:
        import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel

        def unet():
            return openaimodel.UNetModel(**SDXL_FULL, operations=comfy.ops.disable_weight_init)

        return random_model_on_gpu(unet, torch.bfloat16), "SDXL UNet full size, random bf16"
    name = "loom-tiny-flux" if args.flux else "loom-tiny-sdxl"
    path = folder_paths.get_full_path("diffusion_models", f"{name}.safetensors")
    if path is None:
        raise SystemExit(f"bench/train.py: {name}.safetensors is missing: run `make models` first")
    model = comfy.sd.load_diffusion_model(path, model_options={"dtype": torch.float32})
    if args.flux:
        return model, "tiny FLUX-class stand-in loom-tiny-flux (1 double + 1 single block), fp32"
    return model, "small SDXL-class stand-in loom-tiny-sdxl (Segmind-Vega depths), fp32"


def dataset(args, model, size: int):
    """Raw latents (what VAEEncode gives) and ComfyUI conditionings, one per image, seeded."""
    import torch

    base = model.model
    channels = base.latent_format.latent_channels
    scale = float(getattr(base.latent_format, "scale_factor", 1.0))
    g = torch.Generator().manual_seed(args.seed + 1)
    latents, conds = [], []
    for _ in range(args.images):
        latents.append(torch.randn(1, channels, size // 8, size // 8, generator=g) / scale)
        if args.flux:
            cross = torch.randn(1, 512, 4096, generator=g)
            extra = {"pooled_output": torch.randn(1, 768, generator=g), "guidance": 1.0}
        else:
            cross = torch.randn(1, 77, 2048, generator=g)
            extra = {"pooled_output": torch.randn(1, 1280, generator=g), "width": size, "height": size}
        conds.append([cross, extra])
    return latents, conds


def sdpa_attention() -> None:
    """ComfyUI's attention as on a GPU (``--use-pytorch-cross-attention``), for every model built after this."""
    import comfy.ldm.modules.attention as attention

    for name in ("optimized_attention", "optimized_attention_masked"):
        setattr(attention, name, attention.attention_pytorch)


def main() -> None:
    t_start = time.perf_counter()
    args = parse_args(__doc__, options)
    setup(args.gpu)
    import comfy.model_management as mm
    import comfy.utils
    import torch
    from comfy_env import PACK_MODULE, comfyui_dir, comfyui_version

    training = importlib.import_module(f"{PACK_MODULE}.nodes.train.engine")
    comfy.utils.PROGRESS_BAR_ENABLED = False  # no tqdm lines from core's loop
    gpu = args.gpu
    timed = args.steps or (10 if gpu else 20)
    warmup = max(1, args.warmup)
    steps = warmup + timed
    size = args.size or (1024 if gpu else 64 if args.flux else 128)
    ckpt = (args.checkpointing or ("on" if gpu else "off")) == "on"
    dtype_name = "bf16" if gpu else "fp32"
    core_lora_dtype = args.core_lora_dtype or ("bf16" if gpu else "fp32")

    model, model_what = build_model(args)
    warnings: list[str] = []
    try:
        arch, prediction = training.family(model.model)
    except ValueError as e:
        if not args.flux:
            raise
        arch, prediction = "flux", "flow"  # FLUX is flow matching (ComfyUI's ModelType.FLUX)
        warnings.append(f"nodes.train.engine.family() refused this FLUX model ({e}); the bench passed flux/flow itself")
    latents, conds = dataset(args, model, size)
    clock = StepClock(gpu)
    result: dict = {
        "bench": "train",
        "mode": ("gpu-" if gpu else "cpu-") + ("flux" if args.flux else "sdxl"),
        "device": device_name(gpu),
        "comfyui_version": comfyui_version(comfyui_dir()),
        "torch": torch.__version__,
        "settings": {
            "model": model_what,
            "arch": arch,
            "prediction": prediction,
            "images": args.images,
            "size": f"{size}x{size}",
            "latent": "x".join(str(d) for d in latents[0].shape[1:]),
            "rank": args.rank,
            "batch_size": 1,
            "learning_rate": args.lr,
            "optimizer": "AdamW (weight decay 0.01 both)",
            "warmup_steps": warmup,
            "timed_steps": timed,
            "gradient_checkpointing": ckpt,
            "model_dtype": dtype_name,
            "core_training_dtype": dtype_name,
            "core_lora_dtype": core_lora_dtype,
            "loom_alpha": float(args.rank),
            "loom_lora_dtype": "fp32",
            "seed": args.seed,
        },
        "memory_note": (
            "torch.cuda.max_memory_allocated after a reset before each trainer's call, resident weights included"
            if gpu
            else "CPU: process max RSS from resource.getrusage after each trainer's phase (Loom first, so core's is a "
            "max over both); peak_rss_during_gib: RSS sampled every 10 ms during each call"
        ),
    }
    what: dict = {"matched": "same rank, batch, resolution, steps, optimizer, learning rate and precision; not the "
                  "same layers (core: every weight, Loom: attention projections only)"}  # fmt: skip

    if args.compile != "off":
        sdpa_attention()  # ComfyUI's CPU default (sub-quadratic) breaks a compiled graph; the same for both runs
        result["settings"]["attention"] = "pytorch (SDPA), both Loom runs"

    def loom(checkpointing: bool, n: int, compile_mode: str = "off"):
        items = loom_items(training, model, latents, conds, size)
        settings = training.Settings(
            rank=args.rank, alpha=float(args.rank), steps=n, learning_rate=args.lr, batch_size=1,
            resolution=size, seed=args.seed, gradient_checkpointing=checkpointing, compile=compile_mode,
        )  # fmt: skip

        def call():
            mm.load_models_gpu([model], force_full_load=True)  # as the node does before training
            return training.train(training.Run(model, items, [], settings, arch, prediction))

        return call

    def guarded(label: str, run) -> dict:
        """run(); a trainer that fails (CUDA out of memory, an autograd error) is recorded and the bench goes on, so
        one device session still reports the other runs. The exit status is 1 when any run failed."""
        try:
            return run()
        except Exception as e:  # recorded in the JSON, traceback on stderr
            traceback.print_exc()
            kind = "out of memory" if is_oom(e) else type(e).__name__
            error = f"{kind}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
        gc.collect()
        entry = {"error": error}
        if gpu:
            entry["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 3)
            torch.cuda.empty_cache()
        log(f"{label} failed: {error}")
        return {"entry": entry}

    def timed_run(label: str, call, n_steps: int) -> dict:
        return guarded(label, lambda: measure(label, call, clock, warmup, n_steps - warmup, gpu))

    def profiled(label: str, call) -> dict:
        return guarded(f"profile {label}", lambda: {"entry": profile(label, call, clock, args.profile, gpu)})["entry"]

    runs: dict = {}
    if not args.skip_loom:
        modules = training.target_modules(model.model, arch, "attention")
        what["loom"] = {
            "trains": "attention projections only (preset 'attention': "
            + ("to_q/to_k/to_v/to_out.0" if arch in ("sd15", "sdxl") else "qkv/proj, single-block linear1/linear2")
            + f"), LoRA rank {args.rank}, alpha {args.rank}, fp32 factors",
            "lora_layers": len(modules),
            "params": int(sum(args.rank * (m.weight.shape[0] + m.weight.shape[1]) for m in modules.values())),
        }
        torch.manual_seed(args.seed)
        m = timed_run("loom", loom(ckpt, steps), steps)
        runs["loom"] = m["entry"]
        if m.get("out") is not None:
            history = m["out"].loss_history
            runs["loom"]["loss_first_last"] = [round(history[0], 5), round(history[-1], 5)]
        del m
        if gpu and ckpt and not args.no_nockpt:
            torch.manual_seed(args.seed)
            runs["loom_nockpt"] = timed_run("loom, no checkpointing", loom(False, steps), steps)["entry"]
        if args.compile != "off":  # the first warm-up step compiles (untimed)
            torch.manual_seed(args.seed)
            runs["loom_compiled"] = timed_run(f"loom, compile {args.compile}", loom(ckpt, steps, args.compile), steps)[
                "entry"
            ]
        if args.profile and "error" not in runs["loom"]:
            runs["loom"]["profile"] = profiled("loom", loom(ckpt, args.profile + 2))
    if not args.skip_core:
        torch.manual_seed(args.seed)
        call = core_call(model, latents, conds, args, steps, ckpt, dtype_name, core_lora_dtype)
        m = timed_run("core", call, steps)
        runs["core"] = m["entry"]
        if m.get("out") is not None:
            _, lora_sd, loss_map, _ = m["out"].args
            losses = loss_map["loss"]
            runs["core"]["loss_first_last"] = [round(losses[0], 5), round(losses[-1], 5)]
            what["core"] = core_what(lora_sd)
            del lora_sd
        del m
        if args.profile and "error" not in runs["core"]:
            call = core_call(model, latents, conds, args, args.profile + 2, ckpt, dtype_name, core_lora_dtype)
            runs["core"]["profile"] = profiled("core", call)

    def ok(label: str) -> bool:
        return "s_per_step" in runs.get(label, {})

    mem = "peak_mem_gib" if gpu else "max_rss_gib"
    if ok("loom"):
        result["loom_s_per_step"] = runs["loom"]["s_per_step"]
        result["peak_mem_gib"] = runs["loom"][mem]
    if ok("core"):
        result["core_s_per_step"] = runs["core"]["s_per_step"]
        result["core_peak_mem_gib"] = runs["core"][mem]
    if ok("loom") and ok("core"):
        result["speedup"] = round(runs["core"]["s_per_step"] / runs["loom"]["s_per_step"], 3)
        result["speedup_mean"] = round(runs["core"]["mean_s"] / runs["loom"]["mean_s"], 3)
    if ok("loom_compiled"):
        result["loom_compiled_s_per_step"] = runs["loom_compiled"]["s_per_step"]
        if ok("loom"):
            result["compile_speedup"] = round(runs["loom"]["s_per_step"] / runs["loom_compiled"]["s_per_step"], 3)
    if ok("loom_nockpt"):
        result["loom_nockpt_s_per_step"] = runs["loom_nockpt"]["s_per_step"]
        result["loom_nockpt_peak_mem_gib"] = runs["loom_nockpt"]["peak_mem_gib"]
    if warnings:
        result["warnings"] = warnings
    errors = {k: v["error"] for k, v in runs.items() if "error" in v}
    if errors:
        result["errors"] = errors
    result["runs"] = runs
    result["what"] = what
    result["total_s"] = round(time.perf_counter() - t_start, 1)
    emit(result, args.json)
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
