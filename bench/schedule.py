"""Strength scheduling during sampling: Loom scheduled LoRAs vs static LoRAs vs ComfyUI core hook keyframes, same run.

One sampling run is ComfyUI's own sampler (`comfy.sample.sample`, what KSampler calls): euler, cfg 5 with cond and
uncond batched as ComfyUI does, random SDXL conditioning (pooled output plus width/height, so the adm path runs), the
same seed and noise in every case. Cases, each on the same base model:
  base        no LoRA;
  static      one rank-32 LoRA on every attention projection (to_q/to_k/to_v/to_out.0), Loom `apply_stack`;
  scheduled   the same LoRA with LoraSpec(schedule="0:0.2, 1:1"): a linear ramp, a new strength at every step;
  scheduled_late  the same LoRA at strength 0 for the first half of the steps, then ramping to 1 (what a skipped
              zero-strength layer would save: the bypass runs the same ops every step, graph-safe);
  static3     three such LoRAs (other seeds), static;
  scheduled3  the three, scheduled: ramp up, ramp down, smooth pulse;
  core_hooks  core's hook scheduling of the one LoRA: `create_hook_lora` and one `HookKeyframe` per step on the same
              ramp, attached to positive and negative as the Cond Pair Set Props node does.
Each case: a warm-up run, the median of --repeat timed runs, then an untimed check run that measures, on one attention
projection and at every model call, the strength each LoRA really had (least squares of the layer's output change on
the LoRAs' directions, so it works for merged weights, bypass and core hooks alike) and compares it with the schedule.
CPU: the small SDXL-class stand-in (Segmind-Vega depths), 64x64 px. --gpu: full-size SDXL UNet, random fp16 weights,
1024x1024, peak VRAM per case over its timed runs.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import statistics
import sys
import time

from _common import ATTN, bridge, device_name, emit, full_size_sdxl_on_gpu, parse_args, setup, sync, write_loras

SCHEDULES = ("0:0.2, 1:1.0", "0:1.0, 1:0.2", "smooth: 0:0.2, 0.5:1.0, 1:0.2")  # ramp up, ramp down, smooth pulse
CASES = ("base", "static", "scheduled", "scheduled_late", "static3", "scheduled3", "core_hooks")
LATE = "0:0, 0.5:0, 1:1"
CHECK_TOLERANCE = {"cpu": 0.01, "gpu": 0.05}  # strength units; fp16 activations on the GPU


def options(ap) -> None:
    ap.set_defaults(repeat=3)
    ap.add_argument("--repeats", dest="repeat", type=int, help="timed runs per case (median; default 3)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--size", type=int, default=None, help="image side in pixels (default 64 on CPU, 1024 on GPU)")
    ap.add_argument("--sampler", default="euler")
    ap.add_argument("--scheduler", default="simple")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-core", action="store_true", help="leave out core hooks (about 19 s a run at full size)")
    ap.add_argument("--skip-scheduled", action="store_true", help="leave out the Loom scheduled cases")
    ap.add_argument("--no-check", action="store_true", help="no per-step strength check runs")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")


def log(text: str) -> None:
    print(f"[bench/schedule] {text}", file=sys.stderr, flush=True)


class StrengthProbe:
    """The strength each LoRA has at every model call, read from one projection's output, whatever the mechanism.

    y - (W0 x + b0) = sum_k s_k * scale_k * up_k (down_k x): the s_k are solved by least squares over the call's
    whole batch, from the original weight W0 (taken before any case ran) and the LoRAs' own factors.
    """

    def __init__(self, base_model, key: str, lora_sds: list[dict]):
        import comfy.utils

        module_path = key[: -len(".weight")]
        self.key = key
        self.module = comfy.utils.get_attr(base_model.model, module_path)
        self.w0 = self.module.weight.detach().float().cpu().clone()
        bias = getattr(self.module, "bias", None)
        self.b0 = None if bias is None else bias.detach().float().cpu().clone()
        name = "lora_unet_" + module_path[len("diffusion_model.") :].replace(".", "_")
        self.factors = []
        for sd in lora_sds:
            down, up = sd[f"{name}.lora_down.weight"].float(), sd[f"{name}.lora_up.weight"].float()
            self.factors.append((down, up, float(sd[f"{name}.alpha"]) / down.shape[0]))
        self.unet = base_model.model.diffusion_model
        self.calls: list[tuple[float, list[float]]] = []
        self._t = math.nan
        self._device = None
        self.count = 1

    def _on_device(self, device) -> None:
        if self._device != device:
            self.w0 = self.w0.to(device)
            self.b0 = None if self.b0 is None else self.b0.to(device)
            self.factors = [(d.to(device), u.to(device), s) for d, u, s in self.factors]
            self._device = device

    def _timestep(self, module, args, kwargs) -> None:
        t = args[1] if len(args) > 1 else kwargs.get("timesteps")
        self._t = float(t.flatten()[0])

    def _forward(self, module, args, output) -> None:
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            x = args[0].float()
            self._on_device(x.device)
            e = (output.float() - F.linear(x, self.w0, self.b0)).reshape(-1)
            dirs = [F.linear(F.linear(x, d), u).reshape(-1) * s for d, u, s in self.factors[: self.count]]
            D = torch.stack(dirs, dim=1).double()
            s = torch.linalg.solve(D.T @ D, D.T @ e.double())
        self.calls.append((self._t, s.tolist()))

    def run(self, count: int, sample) -> tuple[list[list[float]], float, object]:
        """Sample once with the probe on; per step the mean strength of the first `count` LoRAs, calls per step."""
        self.calls, self.count = [], count
        handles = [
            self.unet.register_forward_pre_hook(self._timestep, with_kwargs=True),
            self.module.register_forward_hook(self._forward),
        ]
        try:
            out = sample()
        finally:
            for h in handles:
                h.remove()
        steps: dict[float, list[list[float]]] = {}
        for t, s in self.calls:
            steps.setdefault(t, []).append(s)
        per_step = [[statistics.fmean(c[k] for c in calls) for k in range(count)] for calls in steps.values()]
        return per_step, len(self.calls) / max(1, len(steps)), out


def rel_diff(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def main() -> None:
    t_start = time.perf_counter()
    args = parse_args(__doc__, options)
    pack = setup(args.gpu)
    import comfy.hooks
    import comfy.sample
    import comfy.sd
    import comfy.utils
    import folder_paths
    import torch
    from comfy_env import PACK_MODULE, comfyui_dir, comfyui_version

    patching, lora_files = bridge(pack), pack.nodes.files.lora_files
    schedule_mod = importlib.import_module(f"{PACK_MODULE}.lora_math.schedule")
    has_schedule = "schedule" in {f.name for f in dataclasses.fields(patching.LoraSpec)}
    wanted = {c.strip() for c in args.cases.split(",") if c.strip()}
    if wanted - set(CASES):
        raise SystemExit(f"bench/schedule.py: unknown case(s) {sorted(wanted - set(CASES))}; known: {', '.join(CASES)}")
    cases = [c for c in CASES if c in wanted and not (args.skip_core and c == "core_hooks")]
    if args.skip_scheduled:
        cases = [c for c in cases if not c.startswith("scheduled")]
    if not has_schedule and any(c.startswith("scheduled") for c in cases):
        raise SystemExit(
            "bench/schedule.py: nodes.comfy_bridge.LoraSpec has no `schedule` field, so the scheduled-LoRA path "
            "(issue 4) is not in this tree yet. Run with --skip-scheduled to measure base, static and core hooks only."
        )

    if args.gpu:
        model, what = full_size_sdxl_on_gpu(), "SDXL UNet full size, random fp16 weights"
    else:
        path = folder_paths.get_full_path("diffusion_models", "loom-tiny-sdxl.safetensors")
        if path is None:
            raise SystemExit("bench/schedule.py: loom-tiny-sdxl.safetensors is missing: run `make models` first")
        model, what = comfy.sd.load_diffusion_model(path), "small SDXL-class stand-in (Segmind-Vega depths)"
    size = args.size or (1024 if args.gpu else 64)
    steps = args.steps
    keys = sorted(k for k in model.model.state_dict() if k.endswith(ATTN))
    names = write_loras(model, 3, args.rank)
    lora_sds = [comfy.utils.load_torch_file(folder_paths.get_full_path("loras", n), safe_load=True) for n in names]
    parsed = [lora_files.load(n) for n in names]
    schedules = [schedule_mod.parse_schedule(text) for text in SCHEDULES]
    ramps = [s.values(steps) for s in schedules]
    probe_key = next((k for k in keys if k.endswith("attn1.to_q.weight")), keys[0])
    probe = StrengthProbe(model, probe_key, lora_sds)  # before any case touches the weights

    late = schedule_mod.parse_schedule(LATE)

    def spec(i: int, scheduled: bool, schedule=None):
        extra = {"schedule": schedule or schedules[i]} if scheduled else {}
        return patching.LoraSpec(names[i], parsed[i], 1.0, 0.0, **extra)

    def loom(count: int, scheduled: bool):
        return patching.apply_stack(model, None, [spec(i, scheduled) for i in range(count)])[0]

    # Conditioning as CLIPTextEncode leaves it for SDXL: cross-attention tokens, pooled output, image size.
    g = torch.Generator().manual_seed(args.seed + 1)

    def cond():
        extra = {"pooled_output": torch.randn(1, 1280, generator=g), "width": size, "height": size}
        return [[torch.randn(1, 77, 2048, generator=g), extra]]

    positive, negative = cond(), cond()
    latent = torch.zeros(1, 4, size // 8, size // 8)
    noise = comfy.sample.prepare_noise(latent, args.seed)

    def core_hooks_conds():
        # CreateHookLoraModelOnly -> CreateHookKeyframe per step -> SetHookKeyframes -> PairConditioningSetProperties
        hooks = comfy.hooks.create_hook_lora(lora=lora_sds[0], strength_model=1.0, strength_clip=0.0)
        keyframes = comfy.hooks.HookKeyframeGroup()
        for i, strength in enumerate(ramps[0]):
            keyframes.add(comfy.hooks.HookKeyframe(strength=strength, start_percent=i / steps))
        hooks = hooks.clone()
        hooks.set_keyframes_on_hooks(hook_kf=keyframes)
        pos, neg = comfy.hooks.set_conds_props(
            conds=[positive, negative], strength=1.0, set_cond_area="default", hooks=hooks
        )
        return pos, neg

    def build(case: str):
        """(patcher, positive, negative, expected strengths per LoRA per step) of a case."""
        ones, zeros = [1.0] * steps, [0.0] * steps
        if case == "base":
            return model, positive, negative, [zeros]
        if case == "static":
            return loom(1, False), positive, negative, [ones]
        if case == "scheduled":
            return loom(1, True), positive, negative, ramps[:1]
        if case == "scheduled_late":
            patched = patching.apply_stack(model, None, [spec(0, True, late)])[0]
            return patched, positive, negative, [late.values(steps)]
        if case == "static3":
            return loom(3, False), positive, negative, [ones] * 3
        if case == "scheduled3":
            return loom(3, True), positive, negative, ramps
        return (model, *core_hooks_conds(), ramps[:1])

    result: dict = {
        "bench": "schedule",
        "device": device_name(args.gpu),
        "comfyui_version": comfyui_version(comfyui_dir()),
        "torch": torch.__version__,
        "steps": steps,
        "cfg": args.cfg,
        "size": f"{size}x{size}",
        "latent": f"{size // 8}x{size // 8}",
        "sampler": args.sampler,
        "scheduler": args.scheduler,
        "rank": args.rank,
        "repeats": args.repeat,
        "seed": args.seed,
        "schedules": list(SCHEDULES),
        "probe_key": probe_key,
    }
    check: dict = {}
    outputs: dict = {}
    warnings: list[str] = []
    tolerance = CHECK_TOLERANCE["gpu" if args.gpu else "cpu"]
    for case in cases:
        patcher, pos, neg, expected = build(case)

        def sample(patcher=patcher, pos=pos, neg=neg):
            return comfy.sample.sample(
                patcher, noise, steps, args.cfg, args.sampler, args.scheduler, pos, neg, latent,
                seed=args.seed, disable_pbar=True,
            )  # fmt: skip

        outputs[case] = sample()  # warm-up: loads/patches the model for this case
        if args.gpu:
            sync()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.repeat):
            sync()
            t0 = time.perf_counter()
            outputs[case] = sample()
            sync()
            times.append(time.perf_counter() - t0)
        result[f"{case}_s"] = round(statistics.median(times), 4)
        result[f"{case}_runs_s"] = [round(t, 4) for t in times]
        if args.gpu:
            result[f"peak_vram_{case}_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        if not torch.isfinite(outputs[case]).all():
            warnings.append(f"{case}: the sampled latent has NaN/Inf values")
        log(f"{case}: median {result[f'{case}_s']:.4f} s of {[round(t, 3) for t in times]}")
        if not args.no_check:
            measured, calls_per_step, out = probe.run(len(expected), sample)
            err = max(
                (abs(m[k] - expected[k][i]) for i, m in enumerate(measured[:steps]) for k in range(len(expected))),
                default=math.inf,
            )
            entry = {"max_strength_error": float(f"{err:.3g}"), "calls_per_step": round(calls_per_step, 2)}
            # the checked run did what the timed runs did
            entry["rerun_rel_diff"] = float(f"{rel_diff(out, outputs[case]):.3g}")
            if case in ("scheduled", "core_hooks"):
                entry["strengths"] = [round(m[0], 4) for m in measured]
            if len(measured) != steps:
                warnings.append(f"{case}: the check saw {len(measured)} distinct model timesteps, not {steps} steps")
            if not err <= tolerance:
                warnings.append(
                    f"{case}: per-step strengths differ from the expected ones by up to {err:.4f} (tolerance "
                    f"{tolerance}); the LoRA did not run at the scheduled strengths"
                )
            check[case] = entry
    if check:
        result["check"] = check
    result["check_tolerance"] = tolerance

    def ratio(a: str, b: str) -> None:
        if f"{a}_s" in result and f"{b}_s" in result:
            result[f"{a}_over_{b}"] = round(result[f"{a}_s"] / result[f"{b}_s"], 3)

    for a, b in (
        ("static", "base"), ("scheduled", "static"), ("scheduled_late", "static"), ("scheduled_late", "scheduled"),
        ("static3", "static"), ("scheduled3", "static3"), ("core_hooks", "scheduled"), ("core_hooks", "static"),
        ("core_hooks", "base"),
    ):  # fmt: skip
        ratio(a, b)
    if args.gpu and "peak_vram_static_gb" in result:
        for a, b in (("scheduled", "static"), ("scheduled3", "static3")):
            if f"peak_vram_{a}_gb" in result:
                result[f"peak_vram_{a}_over_{b}"] = round(result[f"peak_vram_{a}_gb"] / result[f"peak_vram_{b}_gb"], 3)

    diffs = {}
    for a, b in (
        ("static", "base"), ("scheduled", "base"), ("scheduled", "static"), ("static3", "static"),
        ("scheduled3", "static3"), ("scheduled3", "scheduled"), ("core_hooks", "base"), ("core_hooks", "static"),
        ("scheduled", "core_hooks"),
    ):  # fmt: skip
        if a in outputs and b in outputs:
            diffs[f"{a}_vs_{b}"] = float(f"{rel_diff(outputs[a], outputs[b]):.3g}")
    result["output_rel_diff"] = diffs
    for a, b, why in (
        ("scheduled", "static", "the schedule did nothing"),
        ("scheduled", "base", "the scheduled LoRA was not applied"),
        ("scheduled3", "static3", "the schedules did nothing"),
        ("static", "base", "the static LoRA was not applied"),
        ("core_hooks", "base", "core hooks did not apply the LoRA"),
    ):
        d = diffs.get(f"{a}_vs_{b}")
        if d is not None and d < 1e-4:
            warnings.append(f"{a} output equals {b} output (relative difference {d:.2g}): {why}")
    if args.skip_scheduled:
        note = "scheduled cases skipped (--skip-scheduled)"
        warnings.append(note if has_schedule else note + "; LoraSpec has no `schedule` field in this tree")
    if warnings:
        result["warnings"] = warnings
    targets = len(keys)
    result["what"] = (
        f"{what}, {size}x{size}, {steps} steps {args.sampler}/{args.scheduler}, cfg {args.cfg}; "
        f"rank-{args.rank} LoRAs on {targets} attention projections"
    )
    result["total_s"] = round(time.perf_counter() - t_start, 1)
    emit(result, args.json)


if __name__ == "__main__":
    main()
