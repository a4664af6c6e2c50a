"""The loader's patches on a CUDA-resident model: applied on load, originals restored bit-exact."""

import torch


def test_loader_patches_on_gpu_and_restores(pack):
    import comfy.model_management as mm
    import comfy.sd
    import folder_paths

    ckpt = folder_paths.get_full_path("checkpoints", "loom-tiny-sd15.safetensors")
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(ckpt)
    out = pack.nodes.loader.LoomLoraLoader.execute(
        model=model, clip=clip, lora_name="loom-tiny-sd15-lora.safetensors", strength_model=1.0, strength_clip=1.0
    )
    patched = out.result[0]
    mm.load_models_gpu([model], force_full_load=True)
    original = {k: v.detach().clone() for k, v in model.model.state_dict().items()}
    assert next(iter(original.values())).is_cuda
    mm.load_models_gpu([patched], force_full_load=True)
    changed = [k for k, v in patched.model.state_dict().items() if not torch.equal(v, original[k])]
    assert len(changed) == 56
    patched.unpatch_model()
    mm.load_models_gpu([model], force_full_load=True)
    assert all(torch.equal(v, original[k]) for k, v in model.model.state_dict().items())
