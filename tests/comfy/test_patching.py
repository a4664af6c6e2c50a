"""The merge injection inside ComfyUI's load/unpatch cycle, on the tiny SD1.5 model (CPU)."""

import comfy.model_management as mm
import torch
from conftest import SD15_LORA, as_dynamic

ATTN = (".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight")


def loom(pack, model, strength, lora=SD15_LORA):
    node = pack.nodes.load.loader.LoomLoraLoader
    return node.execute(model=model, clip=None, lora_name=lora, strength_model=strength, strength_clip=0).result[0]


def core(model, strength):
    import comfy.sd
    import comfy.utils
    import folder_paths

    sd = comfy.utils.load_torch_file(folder_paths.get_full_path("loras", SD15_LORA))
    return comfy.sd.load_lora_for_models(model, None, sd, strength, 0)[0]


def load(patcher) -> dict:
    mm.load_models_gpu([patcher], force_full_load=True)
    return {k: v for k, v in patcher.model.state_dict().items()}


def snapshot(sd: dict) -> dict:
    return {k: v.detach().clone() for k, v in sd.items()}


def test_strength_change_moves_weights_in_place_without_reload(pack, model):
    original = snapshot(model.model.state_dict())
    first = loom(pack, model, 0.5)
    weights = load(first)
    ptrs = {k: v.data_ptr() for k, v in weights.items()}
    second = loom(pack, model, 1.25)
    assert second.patches_uuid == first.patches_uuid != model.patches_uuid
    after = load(second)
    # Same storage: ComfyUI did not unpatch/reload, the injection updated the resident weights.
    assert {k: v.data_ptr() for k, v in after.items()} == ptrs
    reference = snapshot(load(core(model, 1.25)))
    changed = [k for k in original if not torch.equal(reference[k], original[k])]
    assert len(changed) == 56 and all(k.endswith(ATTN) for k in changed)
    for k in changed:
        # one delta from 0.5 to 1.25 on top of the 0.5 merge: two roundings of the fp32 working weights
        torch.testing.assert_close(snapshot({k: after[k]})[k], reference[k], rtol=0, atol=1e-5)


def test_switching_back_to_base_restores_originals_bit_exact(pack, model):
    original = snapshot(model.model.state_dict())
    load(loom(pack, model, 0.8))
    load(loom(pack, model, -0.3))
    base = load(model)
    assert all(torch.equal(base[k], original[k]) for k in original)


def test_core_clone_in_between_is_respected(pack, model):
    original = snapshot(model.model.state_dict())
    load(loom(pack, model, 0.8))
    via_core = snapshot(load(core(model, 0.4)))
    expect_core = {k: v for k, v in via_core.items()}
    again = snapshot(load(loom(pack, model, 0.8)))
    reference_08 = snapshot(load(core(model, 0.8)))
    for k in original:
        torch.testing.assert_close(again[k], reference_08[k], rtol=0, atol=1e-5)
    assert any(not torch.equal(expect_core[k], reference_08[k]) for k in original)
    model.unpatch_model()
    assert all(torch.equal(model.model.state_dict()[k], original[k]) for k in original)


def test_chained_loaders_share_one_injection_and_add_up(pack, model):
    a = loom(pack, model, 0.3)
    ab = loom(pack, a, 0.5)
    assert list(ab.injections) == ["lora_loom"] and len(ab.injections["lora_loom"]) == 1
    assert ab.patches_uuid == a.patches_uuid
    chained = snapshot(load(ab))
    single = snapshot(load(loom(pack, model, 0.8)))
    for k in chained:
        torch.testing.assert_close(chained[k], single[k], rtol=0, atol=1e-5)


def test_model_only_load_reports_clip_modules_as_not_connected(pack, model):
    report = pack.nodes.load.loader.LoomLoraLoader.execute(
        model=model, clip=None, lora_name=SD15_LORA, strength_model=1.0, strength_clip=1.0
    ).result[2]
    assert (
        report
        == f"{SD15_LORA}: 56/56 modules matched, 56 weights patched; 48 modules for a model/CLIP not connected here"
    )


def test_unpatch_restores_bit_exact(pack, model):
    original = snapshot(model.model.state_dict())
    patched = loom(pack, model, 1.0)
    load(patched)
    patched.unpatch_model()
    assert all(torch.equal(model.model.state_dict()[k], original[k]) for k in original)


def test_dynamic_patchers_get_core_patches_not_in_place_writes(pack, model):
    dynamic = as_dynamic(model.clone())
    out = loom(pack, dynamic, 0.8)
    assert "lora_loom" not in out.injections
    assert len(out.patches) == 56


def test_partial_match_warns_once_with_blocks_and_first_unmatched(pack, model, tmp_path, caplog):
    import folder_paths
    from safetensors.torch import load_file, save_file

    src = load_file(folder_paths.get_full_path("loras", SD15_LORA))
    # A module this model does not have (a third UNet level) next to the real ones.
    src["lora_unet_down_blocks_2_attentions_0_proj_in.lora_down.weight"] = torch.zeros(8, 640)
    src["lora_unet_down_blocks_2_attentions_0_proj_in.lora_up.weight"] = torch.zeros(640, 8)
    save_file(src, str(tmp_path / "partial.safetensors"))
    folder_paths.add_model_folder_path("loras", str(tmp_path))
    with caplog.at_level("WARNING", logger="lora_loom"):
        loom(pack, model, 1.0, lora="partial.safetensors")
        out = pack.nodes.load.loader.LoomLoraLoader.execute(
            model=model, clip=None, lora_name="partial.safetensors", strength_model=1.0, strength_clip=0
        ).result[2]
    assert "1 unmatched (first: lora_unet_down_blocks_2_attentions_0_proj_in)" in out
    assert out.endswith("patched per block: IN01 8, IN03 8, MID 8, OUT00 8, OUT01 8, OUT02 8, OUT03 8")
    warnings = [r for r in caplog.records if r.name == "lora_loom"]
    assert len(warnings) == 2 and all(r.getMessage().count("\\n") == 0 for r in warnings)  # one line per load


def test_cached_key_matches_die_with_their_parsed_file(pack, model):
    import gc

    import folder_paths
    from lora_loom.lora_math import formats
    from lora_loom.lora_math.formats import io

    patching = pack.nodes.comfy_bridge
    tensors, metadata = io.load_state_dict(folder_paths.get_full_path("loras", SD15_LORA))
    private = formats.parse(tensors, metadata)
    patching.apply_stack(model, None, [patching.LoraSpec("private", private, 0.5, 0)])
    info = patching.model_info.info(model)
    token = (id(private), id(info))
    assert token in info.matches
    del private, tensors
    gc.collect()
    assert token not in info.matches
