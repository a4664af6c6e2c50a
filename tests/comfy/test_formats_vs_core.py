"""Every LoRA format, on real ComfyUI 0.3.75 models: LoRA Loom's patched weights equal core's.

For each format a seeded-random file is written against the real keys of a stand-in model (``lora_writers``), put in
a ``loras`` folder, and loaded twice from there: by ``LoomLoraLoader`` (through ``lora_files.load``, as a user's file)
and by core's own ``LoraLoader`` / ``LoraLoaderModelOnly`` nodes. Every key of the loaded model and CLIP state dicts
(as ``conftest.patched_state`` gives them) must agree within the rounding of the weight dtype (see
:func:`patched_weights.tolerance`), both must change exactly the weights the file targets, and Loom's report must say
that every module matched.

Where core does not load a format, or loads it wrongly, the comparison is against the hand reference that
``lora_writers`` computes from the file's tensors in plain torch (fp64, ``W + strength * scale * up @ down`` …), and
the case says why core is not the reference.

Models (module-scoped, loaded once): the SD1.5 checkpoint with its CLIP-L, UNet in fp16 (as stored; ComfyUI's CPU
default would upcast it to fp32 and hide the final cast); the SDXL-family UNet in fp16 with SDXL's real CLIP-L +
CLIP-G classes thinned to three layers (the stand-in has no text encoder); FLUX (1 double + 1 single block, hidden
3072) in bf16, UNet only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import lora_writers as lw
import patched_weights as pw
import pytest
import torch
from comfy_env import MODELS
from conftest import SD15

SDXL = MODELS / "unet" / "loom-tiny-sdxl.safetensors"
FLUX = MODELS / "unet" / "loom-tiny-flux.safetensors"


@pytest.fixture(scope="module")
def sd15_fp16():
    import comfy.sd

    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(
        str(SD15), output_vae=False, output_clip=True, model_options={"dtype": torch.float16}
    )
    # SD1.5 files (the stand-in too) carry no CLIP text projection, so ComfyUI leaves that weight uninitialised
    # (torch.empty): NaN garbage in it would make the bit-equality checks depend on what ran before. Set it.
    projection = clip.patcher.model.state_dict()["clip_l.transformer.text_projection.weight"]
    with torch.no_grad():
        projection.copy_(torch.eye(*projection.shape))
    return pw.Base.of(model, clip)


@pytest.fixture(scope="module")
def sdxl():
    import comfy.sd

    model = comfy.sd.load_diffusion_model(str(SDXL), model_options={"dtype": torch.float16})
    return pw.Base.of(model, lw.thin_sdxl_clip(model, seed=0))


@pytest.fixture(scope="module")
def flux():
    import comfy.sd

    return pw.Base.of(comfy.sd.load_diffusion_model(str(FLUX), model_options={"dtype": torch.bfloat16}), None)


# --- the format table -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    model: str  # fixture name
    write: Callable  # (model, clip, folder, seed) -> WrittenLoRA
    strengths: tuple[float, float]
    why_not_core: str | None = None  # set: compared against the hand reference, for this reason


def _unet_only(writer):
    return lambda model, clip, folder, seed: writer(model, folder, seed)


CASES = [
    Case("kohya", "sd15_fp16", lw.kohya, (0.8, 0.6)),
    Case("kohya-negative", "sd15_fp16", lw.kohya, (-0.9, -1.3)),
    Case("locon-tucker", "sd15_fp16", lw.locon, (1.0, 1.0)),
    Case("loha-tucker", "sd15_fp16", lw.loha, (0.7, -0.5)),
    Case("lokr-full-and-factorised", "sd15_fp16", lw.lokr, (1.1, 0.9)),
    Case(
        "lokr-tucker",
        "sd15_fp16",
        partial(lw.lokr, tucker=True),
        (1.1, 0.9),
        why_not_core="core 0.3.75 cannot apply a Tucker `lokr_t2`: torch.kron fails on its non-contiguous einsum "
        "result, core logs 'ERROR lokr … view size is not compatible' and leaves the weight unpatched",
    ),
    Case("dora-input-axis", "sd15_fp16", partial(lw.dora, axis="in"), (0.6, 1.0)),
    Case(
        "dora-output-axis",
        "sd15_fp16",
        partial(lw.dora, axis="out"),
        (0.6, 1.0),
        why_not_core="core 0.3.75 weight_decompose (comfy/weight_adapter/base.py) divides by the row norms of the "
        "ORIGINAL weight ‖W‖ instead of ‖W + ΔW‖ on the output axis; DoRA, PEFT and LyCORIS normalise W + ΔW "
        "(lora_math/adapters/dora.py); on the input axis core is right and is compared above",
    ),
    Case("diffusers-attn-processor", "sd15_fp16", lw.diffusers_processor, (0.9, 0.7)),
    Case(
        "diffusers-lora-layer",
        "sd15_fp16",
        lw.diffusers_lora_layer,
        (0.9, 0.7),
        why_not_core="core's SD1 key map rewrites every `.to_` of a `unet.<diffusers name>` into `.processor.to_` "
        "(the 2023 attention-processor spelling), so the file's attention projections are 'lora key not loaded'; "
        "only its feed-forward and text-encoder modules would load",
    ),
    Case(
        "peft-adapter-metadata",
        "sd15_fp16",
        lw.peft,
        (0.8, 0.6),
        why_not_core="core reads no `lora_adapter_metadata`: it applies scale 1 where PEFT's lora_alpha / r is 2, 4 "
        "(alpha_pattern) and 0.5; and it drops the `unet.<diffusers>` attention projections (see diffusers-lora-layer)",
    ),
    Case("peft-comfy-names", "sd15_fp16", lw.peft_comfy_names, (0.75, 1.25)),
    Case("full-diff", "sd15_fp16", lw.full_diff, (0.5, -0.7)),
    Case("kohya-sgm-te1-te2", "sdxl", partial(lw.kohya, sgm=True), (0.8, 0.6)),
    Case("flux-kohya", "flux", _unet_only(lw.flux_kohya), (0.9, 0.0)),
    Case("flux-bfl-peft", "flux", _unet_only(lw.flux_bfl_peft), (-0.7, 0.0)),
    Case("flux-diffusers-split-qkv", "flux", _unet_only(lw.flux_diffusers), (1.0, 0.0)),
    Case(
        "flux-xlabs",
        "flux",
        _unet_only(lw.flux_xlabs),
        (0.8, 0.0),
        why_not_core="core has no key map for xlabs `processor.qkv_lora1` names; its converter (convert_uso_lora) "
        "only fires for a full 19+38-block file (it tests for double_blocks.18 and single_blocks.37 keys)",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_format_matches_core(case: Case, request, pack, loras):
    base: pw.Base = request.getfixturevalue(case.model)
    seed = CASES.index(case)
    written = case.write(base.model, base.clip, loras, seed)
    sm, sc = case.strengths
    out = pack.nodes.load.loader.LoomLoraLoader.execute(
        model=base.model, clip=base.clip, lora_name=written.name, strength_model=sm, strength_clip=sc
    )
    loom_model, loom_clip, report = out.result
    assert report == pw.report(written, sm, sc)
    loom = pw.states(base, loom_model, loom_clip)
    applied = [(written, sm, sc)]
    if case.why_not_core:
        pw.check(loom, pw.reference(base, applied), base, applied, "reference")
    else:
        pw.check(loom, pw.core(base, applied), base, applied, "core")


STACK_MODEL = (0.7, -0.4, 1.2)
STACK_CLIP = (0.5, 1.1, -0.8)


@pytest.mark.parametrize(
    ("against", "writers"),
    [
        ("core", (lw.kohya, lw.loha, lw.peft_comfy_names)),
        # PEFT with alpha in its metadata: core applies it at scale 1 (see CASES), so the hand reference judges.
        ("reference", (lw.kohya, lw.lokr, lw.peft)),
    ],
    ids=["kohya+loha+peft-vs-core", "kohya+lokr+peft-metadata-vs-reference"],
)
def test_mixed_stack_matches_chained_core_loaders(against, writers, sd15_fp16, pack, loras):
    """Three formats stacked on the same weights, strengths (0.7, -0.4, 1.2) on the model and (0.5, 1.1, -0.8) on
    CLIP, through ``patching.apply_stack``, against three core LoraLoaders chained (or the reference)."""
    patching, lora_files = pack.nodes.comfy_bridge, pack.nodes.files.lora_files
    written = [write(sd15_fp16.model, sd15_fp16.clip, loras, 100 + i) for i, write in enumerate(writers)]
    applied = list(zip(written, STACK_MODEL, STACK_CLIP, strict=True))
    specs = [patching.LoraSpec(w.name, lora_files.load(w.name), sm, sc) for w, sm, sc in applied]
    model, clip, reports = patching.apply_stack(sd15_fp16.model, sd15_fp16.clip, specs)
    assert [r.summary() for r in reports] == [pw.report(w, sm, sc) for w, sm, sc in applied]
    shared = pw.expected_keys(applied[:1], "model") & pw.expected_keys(applied[1:2], "model")
    assert shared, "the stack must put several LoRAs on the same weights"
    loom = pw.states(sd15_fp16, model, clip)
    want = pw.core(sd15_fp16, applied) if against == "core" else pw.reference(sd15_fp16, applied)
    pw.check(loom, want, sd15_fp16, applied, against)


@pytest.mark.parametrize(("sm", "sc"), [(0.0, 0.8), (0.8, 0.0)], ids=["model-0", "clip-0"])
def test_zero_strength_on_one_side(sm, sc, sd15_fp16, pack, loras):
    """Strength 0 on one side leaves that side bit-exact (as core does) and patches the other side like core."""
    written = lw.kohya(sd15_fp16.model, sd15_fp16.clip, loras, 200)
    out = pack.nodes.load.loader.LoomLoraLoader.execute(
        model=sd15_fp16.model, clip=sd15_fp16.clip, lora_name=written.name, strength_model=sm, strength_clip=sc
    )
    loom_model, loom_clip, report = out.result
    assert report == pw.report(written, sm, sc)
    applied = [(written, sm, sc)]
    loom, core = pw.states(sd15_fp16, loom_model, loom_clip), pw.core(sd15_fp16, applied)
    # _check requires Loom and core to change exactly the expected keys: none on the side at strength 0.
    pw.check(loom, core, sd15_fp16, applied, "core")
