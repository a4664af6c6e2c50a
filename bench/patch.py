"""Re-patch time after a LoRA strength change: Loom LoRA Loader vs ComfyUI core's LoraLoader.

A model with a LoRA is loaded; then the same LoRA at another strength is applied to a clone and the
model is loaded again (ComfyUI unpatches and re-patches the weights). Both paths are timed in the
same process on the same model. CPU: tiny SD1.5 stand-in; --gpu: full-size SDXL UNet fp16, rank 32.
"""

from __future__ import annotations

import math

from _common import REPO, device_name, emit, parse_args, setup, timed

TINY_LORA = "loom-tiny-sd15-lora.safetensors"


def sdxl_full_size_on_gpu(rank: int):
    """Full-size SDXL UNet (random fp16 weights on CUDA) and a kohya LoRA on its attention projections."""
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.ops
    import comfy.sd
    import torch

    cfg = dict(
        image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2],
        channel_mult=[1, 2, 4], transformer_depth=[0, 0, 2, 2, 10, 10], context_dim=2048, num_head_channels=64,
        transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], transformer_depth_middle=10,
        use_linear_in_transformer=True, use_spatial_transformer=True, legacy=False, num_classes="sequential",
        adm_in_channels=2816, use_temporal_attention=False, use_temporal_resblock=False,
    )  # fmt: skip
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in openaimodel.UNetModel(**cfg, operations=comfy.ops.disable_weight_init)
                  .state_dict().items()}  # fmt: skip
    g = torch.Generator(device="cuda").manual_seed(0)
    sd = {}
    for k, s in shapes.items():
        t = torch.empty(s, device="cuda", dtype=torch.float16)
        sd[k] = t.normal_(0, 1 / math.sqrt(max(1, math.prod(s[1:]))), generator=g) if len(s) > 1 else t.fill_(0)
    model = comfy.sd.load_diffusion_model_state_dict(sd)
    lora = {}
    for k, s in shapes.items():
        if k.endswith((".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight")):
            name = "lora_unet_" + k[: -len(".weight")].replace(".", "_")
            lora[f"{name}.lora_down.weight"] = torch.randn(rank, s[1], generator=g, device="cuda").half() / 30
            lora[f"{name}.lora_up.weight"] = torch.randn(s[0], rank, generator=g, device="cuda").half() / 30
            lora[f"{name}.alpha"] = torch.tensor(float(rank))
    return model, lora


def main() -> None:
    args = parse_args(__doc__, lambda ap: ap.add_argument("--rank", type=int, default=32))
    pack = setup(args.gpu)
    import comfy.model_management as mm
    import comfy.sd
    import comfy.utils
    import folder_paths
    from safetensors.torch import save_file

    if args.gpu:
        model, lora_sd = sdxl_full_size_on_gpu(args.rank)
        tmp_dir = REPO / ".runtime" / "bench"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.cpu().contiguous() for k, v in lora_sd.items()}, str(tmp_dir / "bench-sdxl-lora.safetensors"))
        folder_paths.add_model_folder_path("loras", str(tmp_dir))
        lora_name, clip = "bench-sdxl-lora.safetensors", None
        what = f"SDXL UNet full size fp16, rank {args.rank}"
    else:
        ckpt = folder_paths.get_full_path("checkpoints", "loom-tiny-sd15.safetensors")
        model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(ckpt)
        lora_name = TINY_LORA
        lora_sd = comfy.utils.load_torch_file(folder_paths.get_full_path("loras", lora_name))
        what = "tiny SD1.5 stand-in (fp16 weights), rank 8"

    targets = len(comfy.sd.load_lora_for_models(model, None, lora_sd, 1.0, 0)[0].patches)
    strengths = iter([0.5 + 0.01 * i for i in range(1000)])

    def repatch(make):
        patched = make(next(strengths))
        mm.load_models_gpu([patched], force_full_load=True)
        patched.unpatch_model()

    def core(s):
        return comfy.sd.load_lora_for_models(model, None, lora_sd, s, 0)[0]

    def loom(s):
        return pack.nodes.loader.LoomLoraLoader.execute(
            model=model, clip=None, lora_name=lora_name, strength_model=s, strength_clip=0
        ).result[0]

    core_s = timed(lambda: repatch(core), args.repeat)
    loom_s = timed(lambda: repatch(loom), args.repeat)
    emit(
        {
            "bench": "patch",
            "what": what,
            "device": device_name(args.gpu),
            "targets": targets,
            "core_repatch_s": round(core_s, 5),
            "loom_repatch_s": round(loom_s, 5),
            "core_over_loom": round(core_s / loom_s, 3),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
