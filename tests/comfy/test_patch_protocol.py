"""Every patch object Loom hands ComfyUI honours upstream's weight-adapter protocol, for every adapter kind.

Upstream (0.2x+) loads models with dynamic VRAM by default on NVIDIA. Its loader puts every patched weight behind a
``LowVramPatch``: ``memory_required()`` sizes a prefetch buffer from the patch objects' tensors, ``prepare()`` copies
them into it and rebuilds each adapter as ``type(p)(p.loaded_keys, weights)`` (``comfy.lora.prefetch_prepared_value``),
and calling the ``LowVramPatch`` patches the weight from the rebuilt objects. On a CPU upstream's dynamic patcher is a
plain ModelPatcher, so this test drives that protocol itself, on the patch objects Loom adds for a CLIP (always core
patches) and for a dynamic-VRAM model (``as_dynamic``), and holds every result bit-equal to the legacy
``comfy.lora.calculate_weight`` path (fp32 weights: both run the same fp32 math on the same factors).

0.3.75 has no ``prepare``: there the rebuild is checked alone.
"""

from __future__ import annotations

from functools import partial

import comfy.lora
import comfy.model_patcher
import lora_writers as lw
import pytest
import torch
from comfy.weight_adapter.base import WeightAdapterBase
from conftest import as_dynamic, tiny_flux

HAS_PREPARE = hasattr(comfy.model_patcher.LowVramPatch, "prepare")
if HAS_PREPARE:
    from comfy.memory_management import vram_aligned_size as aligned_size

# (id, writer, strengths (model, clip)): every adapter kind the pack hands ComfyUI.
CASES = [
    ("lora", lw.kohya, (0.8, -0.6)),
    ("locon-tucker", lw.locon, (1.0, 1.0)),
    ("loha-tucker", lw.loha, (0.7, 0.5)),
    ("lokr", lw.lokr, (1.1, 0.9)),
    ("dora-out", partial(lw.dora, axis="out"), (0.6, 1.0)),
    ("dora-in", partial(lw.dora, axis="in"), (0.6, 1.0)),
    ("full-diff-and-bias", lw.full_diff, (0.5, -0.7)),
]


def _rebuilt(patches: list) -> list:
    """``patches`` with every weight adapter rebuilt the way upstream's prefetch does."""
    out = []
    for strength, value, strength_model, offset, function in patches:
        if isinstance(value, WeightAdapterBase):
            value = type(value)(value.loaded_keys, value.weights)
        out.append((strength, value, strength_model, offset, function))
    return out


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, WeightAdapterBase):
        return _tensors(value.weights)
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def check_protocol(patcher, original: dict) -> int:
    """Every Loom-patched key of ``patcher``: rebuild, size, prepare and call give the legacy weights. Returns how
    many keys were checked."""
    from lora_loom.nodes.comfy_bridge.weight_patch import LoomWeightPatch

    checked = 0
    for key, patches in patcher.patches.items():
        if not any(isinstance(p[1], LoomWeightPatch) for p in patches):
            continue
        weight = original[key].float()
        legacy = comfy.lora.calculate_weight(patches, weight.clone(), key)
        assert not torch.equal(legacy, weight), f"{key}: the patch changed nothing"
        rebuilt = comfy.lora.calculate_weight(_rebuilt(patches), weight.clone(), key)
        assert torch.equal(rebuilt, legacy), f"{key}: a rebuilt patch object patches differently"
        if HAS_PREPARE:
            lowvram = comfy.model_patcher.LowVramPatch(key, patcher.patches)
            size = lowvram.memory_required()
            tensors = [t for p in patches for t in _tensors(p[1])]
            assert size == sum(aligned_size(t) for t in tensors), key
            buffer = torch.zeros(size, dtype=torch.uint8)
            prepared = lowvram.prepare(buffer, None, copy=True, commit=True)
            # Upstream's copies live in its buffer, not in the file's tensors.
            for p in prepared:
                for t in _tensors(p[1]):
                    start = t.untyped_storage().data_ptr()
                    assert buffer.data_ptr() <= start < buffer.data_ptr() + size, f"{key}: a tensor was not prefetched"
            assert torch.equal(lowvram(weight.clone()), legacy), f"{key}: the prefetched patch differs from legacy"
            lowvram.clear_prepared()
        checked += 1
    return checked


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_clip_and_dynamic_model_patches_follow_the_protocol(case, pack, sd15, loras):
    _, write, (sm, sc) = case
    model, clip, _ = sd15
    written = write(model, clip, loras, CASES.index(case))
    dynamic = as_dynamic(model.clone())
    out_model, out_clip, report = pack.nodes.load.loader.LoomLoraLoader.execute(
        model=dynamic, clip=clip, lora_name=written.name, strength_model=sm, strength_clip=sc
    ).result
    assert "unmatched" not in report, report
    assert out_model.get_attachment("lora_loom") is None  # no in-place merge on a dynamic patcher
    model_keys = check_protocol(out_model, model.model.state_dict())
    clip_keys = check_protocol(out_clip.patcher, clip.patcher.model.state_dict())
    expected = {c: {e.key for e in written.expected if e.component == c} for c in ("model", "clip")}
    assert model_keys == len(expected["model"]) and clip_keys == len(expected["clip"])


def test_fused_qkv_slices_follow_the_protocol(pack, loras):
    """diffusers FLUX names land on row slices of the fused ``qkv`` / ``linear1`` weights (an offset per patch)."""
    flux = tiny_flux(0)
    written = lw.flux_diffusers(flux, loras, 0)
    out = pack.nodes.load.loader.LoomLoraLoader.execute(
        model=as_dynamic(flux.clone()), clip=None, lora_name=written.name, strength_model=0.9, strength_clip=0
    ).result[0]
    sliced = [k for k, ps in out.patches.items() if any(p[3] is not None for p in ps)]
    assert any(k.endswith("img_attn.qkv.weight") for k in sliced) and any(k.endswith("linear1.weight") for k in sliced)
    assert check_protocol(out, flux.model.state_dict()) == len({e.key for e in written.expected})
