"""The loader's patches on a CUDA-resident model: applied on load, originals restored bit-exact."""

import torch


def test_loader_patches_on_gpu_and_restores(pack):
    import comfy.model_management as mm
    import comfy.sd
    import folder_paths

    ckpt = folder_paths.get_full_path("checkpoints", "loom-tiny-sd15.safetensors")
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(ckpt)
    out = pack.nodes.load.loader.LoomLoraLoader.execute(
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


def test_strength_change_on_gpu_updates_resident_weights_and_restores(pack):
    import comfy.model_management as mm
    import comfy.sd
    import comfy.utils
    import folder_paths

    ckpt = folder_paths.get_full_path("checkpoints", "loom-tiny-sd15.safetensors")
    model = comfy.sd.load_checkpoint_guess_config(ckpt)[0]
    loader = pack.nodes.load.loader.LoomLoraLoader
    lora = "loom-tiny-sd15-lora.safetensors"

    def loom(s):
        return loader.execute(model=model, clip=None, lora_name=lora, strength_model=s, strength_clip=0).result[0]

    mm.load_models_gpu([model], force_full_load=True)
    original = {k: v.detach().clone() for k, v in model.model.state_dict().items()}
    first = loom(0.4)
    mm.load_models_gpu([first], force_full_load=True)
    ptrs = {k: v.data_ptr() for k, v in first.model.state_dict().items()}
    second = loom(1.1)
    mm.load_models_gpu([second], force_full_load=True)
    after = {k: v.detach().clone() for k, v in second.model.state_dict().items()}
    assert {k: v.data_ptr() for k, v in second.model.state_dict().items()} == ptrs  # no reload
    sd = comfy.utils.load_torch_file(folder_paths.get_full_path("loras", lora))
    core = comfy.sd.load_lora_for_models(model, None, sd, 1.1, 0)[0]
    mm.load_models_gpu([core], force_full_load=True)
    reference = {k: v.detach().clone() for k, v in core.model.state_dict().items()}
    for k in reference:
        # fp16 weights on CUDA: one rounding per update on our side, one on core's
        torch.testing.assert_close(after[k].float(), reference[k].float(), rtol=0, atol=4e-3)
    mm.load_models_gpu([model], force_full_load=True)
    assert all(torch.equal(v, original[k]) for k, v in model.model.state_dict().items())
