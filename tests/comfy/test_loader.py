"""Loom LoRA Loader on a real ComfyUI model: same weights as core's loader, originals restored."""

import pytest
import torch
from conftest import SD15_LORA, patched_state


def _core_load(model, clip, strength_model, strength_clip):
    import comfy.sd
    import comfy.utils
    import folder_paths

    sd = comfy.utils.load_torch_file(folder_paths.get_full_path("loras", SD15_LORA))
    return comfy.sd.load_lora_for_models(model, clip, sd, strength_model, strength_clip)


def test_loader_matches_core_and_unpatches_to_original(pack, sd15):
    model, clip, _ = sd15
    original = {k: v.clone() for k, v in model.model.state_dict().items()}
    loader = pack.nodes.load.loader.LoomLoraLoader
    out = loader.execute(model=model, clip=clip, lora_name=SD15_LORA, strength_model=0.8, strength_clip=0.5)
    loom_model, loom_clip, report = out.result
    # q/k/v/out of 14 UNet attention modules and 12 CLIP-L layers
    assert report == f"{SD15_LORA}: 104/104 modules matched, 104 weights patched"
    core_model, core_clip = _core_load(model, clip, 0.8, 0.5)

    ours, core = patched_state(loom_model), patched_state(core_model)
    changed = [k for k in ours if not torch.equal(ours[k], original[k])]
    assert len(changed) == 56  # to_q/k/v/out.0 of 14 attention modules
    for k in ours:
        torch.testing.assert_close(ours[k], core[k], rtol=0, atol=2e-3)  # fp32 UNet on CPU; fp16 LoRA factors
    # The input model is untouched (nodes clone), and unpatching restores bit-exact originals.
    after = model.model.state_dict()
    assert all(torch.equal(after[k], original[k]) for k in original)

    ours_clip, core_clip_sd = patched_state(loom_clip.patcher), patched_state(core_clip.patcher)
    clip_original = clip.patcher.model.state_dict()
    assert sum(not torch.equal(ours_clip[k], clip_original[k]) for k in ours_clip) == 48  # q/k/v/out of 12 layers
    for k in ours_clip:
        torch.testing.assert_close(ours_clip[k], core_clip_sd[k], rtol=0, atol=2e-3)


def test_zero_strength_returns_inputs_unchanged(pack, sd15):
    model, clip, _ = sd15
    out = pack.nodes.load.loader.LoomLoraLoader.execute(
        model=model, clip=clip, lora_name=SD15_LORA, strength_model=0.0, strength_clip=0.0
    )
    assert out.result[0] is model and out.result[1] is clip


def test_unknown_lora_name_is_a_clear_error(pack, sd15):
    model, clip, _ = sd15
    with pytest.raises(ValueError, match="lora_name: LoRA 'nope.safetensors' is not in any `loras` folder"):
        pack.nodes.load.loader.LoomLoraLoader.execute(
            model=model, clip=clip, lora_name="nope.safetensors", strength_model=1.0, strength_clip=1.0
        )


@pytest.mark.parametrize(
    "bad", ["/etc/passwd", "../checkpoints/loom-tiny-sd15.safetensors", "a/../../x.safetensors", ""]
)
def test_paths_outside_the_loras_folders_are_refused(pack, sd15, bad):
    model, clip, _ = sd15
    with pytest.raises(ValueError, match="lora_name: .* is not a LoRA name.*no absolute paths, no '..'"):
        pack.nodes.load.loader.LoomLoraLoader.execute(
            model=model, clip=clip, lora_name=bad, strength_model=1, strength_clip=1
        )
