"""Static LoRAs where weights must not be written in place (upstream's dynamic VRAM): which mechanism, measured.

Upstream ComfyUI (0.2x+) loads models on NVIDIA with dynamic VRAM by default: each weight is cast and patched by
ComfyUI itself as it is loaded (``LowVramPatch`` → the patch objects' ``calculate_weight``), kept patched while it
stays resident, and re-patched after every strength change (new patches, so every weight reloads) and, for weights
that are not resident, at every model call. The alternative is a low-rank bypass on the layer outputs (what
scheduled LoRAs use): a strength change costs nothing, every model call pays the side paths. On a CPU upstream's
dynamic patcher is a plain one, so the two costs are measured directly, per model call, same process and model:

  merged_call_s        one model call, LoRAs merged (0.3.75's fast path; a resident dynamic weight costs the same)
  repatch_s            patching every targeted weight once, as upstream's loader does after a strength change
                       (``LowVramPatch`` on upstream, ``calculate_weight`` on 0.3.75), Loom's patch objects;
                       ``core_repatch_s`` the same for core's own LoRA adapters
  merge_change_s       0.3.75's fast path for the same strength change (in-place delta merge), for comparison
  lowvram_call_s       one model call with every targeted weight patched inside the call (non-resident weights)
  bypass_call_s        one model call with the LoRAs as a bypass (static strengths)
  sample_*_s           20 steps (euler, cfg 5, 64², cond and uncond batched): merged, and bypass (median)
Short calls are timed as the fastest of their runs: on a shared CPU other work only adds time.
CPU: the small SDXL-class stand-in (Segmind-Vega depths), rank 8 LoRAs on its 140 attention projections. Kernel
counts of the same choice on full-size SDXL: bench/launches.py.
"""

from __future__ import annotations

import time

from _common import ATTN, bridge, device_name, emit, parse_args, setup, timed, write_loras


def main() -> None:
    args = parse_args(__doc__, lambda ap: ap.add_argument("--steps", type=int, default=20))
    pack = setup(False)
    import comfy.lora
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sample
    import comfy.sd
    import comfy.utils
    import folder_paths
    import torch
    from comfy_env import comfyui_version
    from lora_loom.lora_math.schedule import parse_schedule

    t_start = time.perf_counter()
    b, lora_files = bridge(pack), pack.nodes.files.lora_files
    model = comfy.sd.load_diffusion_model(folder_paths.get_full_path("diffusion_models", "loom-tiny-sdxl.safetensors"))
    names = write_loras(model, 3, 8)
    parsed = [lora_files.load(n) for n in names]
    targets = sum(1 for k in model.model.state_dict() if k.endswith(ATTN))
    has_prepare = hasattr(comfy.model_patcher.LowVramPatch, "prepare")

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([500.0, 500.0])
    context, y = torch.randn(2, 77, 2048, generator=g), torch.randn(2, 2816, generator=g)
    diffusion_model = model.model.diffusion_model

    def call():
        with torch.no_grad():
            diffusion_model(x, t, context=context, y=y)

    def specs(n, bump=0.0, schedule=None):
        return [b.LoraSpec(names[i], parsed[i], 0.6 + 0.1 * i + bump, 0.0, schedule=schedule) for i in range(n)]

    def as_dynamic(patcher):
        class Dynamic(comfy.model_patcher.ModelPatcher):
            def is_dynamic(self):
                return True

        patcher.__class__ = Dynamic
        return patcher

    def sample(patcher):
        latent = torch.zeros(1, 4, 8, 8)
        noise = comfy.sample.prepare_noise(latent, 0)
        pooled = {"pooled_output": torch.zeros(1, 1280)}  # SDXL's conditioning adds the size embeddings to it
        pos = [[torch.randn(1, 77, 2048, generator=torch.Generator().manual_seed(1)), pooled]]
        neg = [[torch.randn(1, 77, 2048, generator=torch.Generator().manual_seed(2)), pooled]]
        comfy.sample.sample(patcher, noise, args.steps, 5.0, "euler", "normal", pos, neg, latent, disable_pbar=True)

    def repatch(patcher):
        """Every patched weight once, through the path upstream's dynamic loader takes."""
        keys = list(patcher.patches)
        originals = {k: comfy.utils.get_attr(model.model, k).detach().float() for k in keys}

        def run():
            for key in keys:
                weight = originals[key].clone()
                if has_prepare:
                    comfy.model_patcher.LowVramPatch(key, patcher.patches)(weight)
                else:
                    comfy.lora.calculate_weight(patcher.patches[key], weight, key, intermediate_dtype=weight.dtype)

        return timed(run, args.repeat, best=True)

    def per_call(loaders: dict, rounds: int) -> dict:
        """Fastest call of each setup, the setups measured in turns (drift on a shared CPU hits all alike)."""
        best = dict.fromkeys(loaders, float("inf"))
        for _ in range(rounds):
            for label, load in loaders.items():
                load()
                best[label] = min(best[label], timed(call, 3, best=True))
        return best

    cases = {}
    for n in (1, 3):
        case = {}
        mm.unload_all_models()
        merged = b.apply_stack(model, None, specs(n))[0]
        dynamic = b.apply_stack(as_dynamic(model.clone()), None, specs(n))[0]
        ramp = parse_schedule("0:0.9, 1:1")  # any curve takes the bypass; its cost does not depend on the values
        bypassed = b.apply_stack(model, None, specs(n, schedule=ramp))[0]

        def load_merged(m=merged):
            mm.load_models_gpu([m], force_full_load=True)

        def load_lowvram(d=dynamic):
            mm.unload_all_models()
            d.load(torch.device("cpu"), lowvram_model_memory=1)  # every weight patched inside each call

        def load_bypass(m=bypassed, d=dynamic):
            d.unpatch_model()
            mm.load_models_gpu([m], force_full_load=True)
            b.schedule_bypass.installed_on(m.model).set_progress(0.5)

        calls = per_call({"merged": load_merged, "lowvram": load_lowvram, "bypass": load_bypass}, args.repeat)
        dynamic.unpatch_model()
        mm.unload_all_models()
        case.update({f"{k}_call_s": v for k, v in calls.items()})

        load_merged()
        case["sample_merged_s"] = timed(lambda m=merged: sample(m), args.repeat)
        changed = b.apply_stack(model, None, specs(n, 0.25))[0]

        def change(m=merged, c=changed):
            b.merge_injection.reconcile(c)
            b.merge_injection.reconcile(m)

        case["merge_change_s"] = timed(change, args.repeat, best=True) / 2
        mm.unload_all_models()
        case["repatch_s"] = repatch(dynamic)
        core = model.clone()
        for name in names[:n]:
            core = comfy.sd.load_lora_for_models(core, None, comfy.utils.load_torch_file(
                folder_paths.get_full_path("loras", name)), 0.7, 0)[0]  # fmt: skip
        case["core_repatch_s"] = repatch(core)
        load_bypass()
        case["sample_bypass_s"] = timed(lambda m=bypassed: sample(m), args.repeat)
        mm.unload_all_models()
        case["bypass_over_merged_call"] = round(case["bypass_call_s"] / case["merged_call_s"], 3)
        case["lowvram_over_merged_call"] = round(case["lowvram_call_s"] / case["merged_call_s"], 3)
        # A strength change then one image: per-weight patches pay one re-patch, the bypass its side paths per call.
        case["image_extra_patches_s"] = round(case["repatch_s"], 5)
        case["image_extra_bypass_s"] = round(args.steps * (case["bypass_call_s"] - case["merged_call_s"]), 5)
        cases[f"{n}_lora"] = {k: round(v, 5) if isinstance(v, float) else v for k, v in case.items()}
    emit(
        {
            "bench": "dynamic",
            "comfyui": comfyui_version(),
            "what": f"small SDXL-class stand-in, {targets} attention projections, rank 8, {args.steps} steps 64²",
            "device": device_name(False),
            "cases": cases,
            "seconds": round(time.perf_counter() - t_start, 1),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
