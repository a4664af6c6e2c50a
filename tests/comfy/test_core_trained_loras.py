"""LoRAs written by ComfyUI's own trainer load in Loom, and Loom re-saves them as kohya files with metadata.

Core's ``TrainLoraNode`` trains every Linear/Conv of the model plus the biases and the norm weights, and its
``SaveLoRA`` writes them under the model's own names: ``diffusion_model.….lora_up.weight`` / ``lora_down`` /
``alpha``, ``….diff`` for 1-D weights (norms) and ``….diff_b`` for biases, no metadata. Both nodes run here for real
(two steps, on the tiny SD1.5), then:
- Loom's loader matches every module and patches exactly what core's LoraLoader patches;
- Loom Merge LoRAs (exact, the one file as a stack) → Loom Save LoRA writes a kohya file (``lora_unet_…`` names,
  ``.diff``/``.diff_b`` kept, ``ss_*``/``modelspec.*`` metadata) that core's LoraLoader applies the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import comfy.sd
import comfy.utils
import folder_paths
import pytest
import torch
from conftest import patched_state


def core_train(model, clip, steps: int = 2, rank: int = 4) -> dict:
    """Core's TrainLoraNode with every other input at its default, on two tiny latents (0.3.75 needs a list of
    latents: with one it fails on ``multi_res``, see shared/docs/comfyui-runtime.md)."""
    import comfy_extras.nodes_train as nodes_train

    schema = nodes_train.TrainLoraNode.define_schema()
    kw = {inp.id: getattr(inp, "default", None) for inp in schema.inputs}
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a shape"))
    gen = torch.Generator().manual_seed(0)
    latents = [{"samples": torch.randn(1, 4, 8, 8, generator=gen)} for _ in range(2)]
    # fp32 (the CPU has no fast bf16 here); a large learning rate so that two steps move every factor and diff
    kw.update(steps=steps, rank=rank, learning_rate=0.02, training_dtype="fp32", lora_dtype="fp32")
    kw.update(gradient_checkpointing=False, seed=0)
    if schema.is_input_list:  # 0.3.75's V3 node takes every input as a list
        kw = {k: [v] for k, v in kw.items()}
        kw.update(model=[model], latents=latents, positive=[cond, cond])
    else:
        kw.update(model=model, latents={"samples": torch.cat([x["samples"] for x in latents])}, positive=cond)
    with torch.inference_mode():
        out = nodes_train.TrainLoraNode.execute(**kw)
    result = out.result if hasattr(out, "result") else out
    return next(r for r in result if isinstance(r, dict) and any(k.endswith(".lora_up.weight") for k in r))


@pytest.fixture(scope="module")
def core_file(sd15, loras, tmp_path_factory):
    """The LoRA core trained, written by core's SaveLoRA, moved into the ``loras`` folder."""
    import comfy_extras.nodes_train as nodes_train

    model, clip, _ = sd15
    lora = core_train(model, clip)
    kinds = {k.rsplit(".", 1)[1] if k.endswith(("diff", "diff_b", "alpha")) else "factor" for k in lora}
    assert kinds == {"factor", "alpha", "diff", "diff_b"}, kinds
    out_dir = tmp_path_factory.mktemp("core_output")
    previous = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(out_dir))
    try:
        nodes_train.SaveLoRA.execute(lora=lora, prefix="core_trained")
    finally:
        folder_paths.set_output_directory(previous)
    (written,) = out_dir.glob("core_trained*.safetensors")
    target = loras / "core_trained.safetensors"
    written.replace(target)
    folder_paths.filename_list_cache.pop("loras", None)
    return target


def core_loader(model, clip, path, sm, sc):
    return comfy.sd.load_lora_for_models(model, clip, comfy.utils.load_torch_file(str(path), safe_load=True), sm, sc)


def _assert_same(got: dict, want: dict, original: dict, at_least: int):
    changed = 0
    for key, w in want.items():
        torch.testing.assert_close(got[key], w, rtol=0, atol=1e-6, msg=key)
        changed += not torch.equal(w, original[key])
    assert changed >= at_least, changed


def test_core_trained_lora_loads_in_loom_as_in_core(pack, sd15, core_file):
    model, clip, _ = sd15
    out = pack.nodes.load.loader.LoomLoraLoader.execute(
        model=model, clip=clip, lora_name=core_file.name, strength_model=0.8, strength_clip=1.0
    )
    loom_model, _, report = out.result
    assert "unmatched" not in report and "modules matched" in report, report
    reference = core_loader(model, None, core_file, 0.8, 0)[0]
    # every weight, bias and norm core trained: the 119 layers, 45 norm weights, 122 biases of this UNet
    _assert_same(patched_state(loom_model), patched_state(reference), model.model.state_dict(), at_least=250)


def test_loom_resaves_a_core_trained_lora_as_kohya_with_metadata(pack, sd15, core_file):
    from lora_loom.lora_math.formats import io

    model, _, _ = sd15
    rows = json.dumps([{"name": core_file.name, "model": 1.0, "clip": 0.0}])
    stack = pack.nodes.load.stack.LoomLoraStack.execute(model=model, rows=rows).result[2]
    lora, text = pack.nodes.tools.merge.LoomMergeLoras.execute(model=model, lora_stack=stack, mode="exact").result
    assert "bias/norm updates are full diffs" in text and len(lora.diffs) == 45 + 122, text
    saved = pack.nodes.files.save_lora.LoomSaveLora.execute(
        lora=lora, filename_prefix="loom-test/core_resaved", overwrite=True
    ).result
    path = Path(folder_paths.get_folder_paths("loras")[0]) / "loom-test" / "core_resaved.safetensors"
    tensors, metadata = io.load_state_dict(path)
    assert all(k.startswith("lora_unet_") for k in tensors), sorted(tensors)[:3]
    assert sum(k.endswith(".diff") for k in tensors) == 45 and sum(k.endswith(".diff_b") for k in tensors) == 122
    assert metadata["ss_network_module"] == "networks.lora" and metadata["modelspec.architecture"], metadata
    assert "core_resaved" in str(saved)
    # core applies the re-saved kohya file as it applies its own (fp16 save: within fp16 rounding of the factors)
    original = model.model.state_dict()
    want = patched_state(core_loader(model, None, core_file, 1.0, 0)[0])
    got = patched_state(core_loader(model, None, path, 1.0, 0)[0])
    changed = 0
    for key, w in want.items():
        scale = float((w - original[key]).abs().max())
        torch.testing.assert_close(got[key], w, rtol=0, atol=2e-3 * scale + 1e-7, msg=key)
        changed += not torch.equal(w, original[key])
    assert changed >= 250
