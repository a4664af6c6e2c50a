"""Every LoRA format, on real ComfyUI 0.3.75 models: LoRA Loom's patched weights equal core's.

For each format a seeded-random file is written against the real keys of a stand-in model (``lora_writers``), put in
a ``loras`` folder, and loaded twice from there: by ``LoomLoraLoader`` (through ``lora_files.load``, as a user's file)
and by core's own ``LoraLoader`` / ``LoraLoaderModelOnly`` nodes. Every key of the loaded model and CLIP state dicts
(as ``conftest.patched_state`` gives them) must agree within the rounding of the weight dtype (see
:func:`tolerance`), both must change exactly the weights the file targets, and Loom's report must say that every
module matched.

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
import pytest
import torch
from comfy_env import MODELS
from conftest import SD15

SDXL = MODELS / "unet" / "loom-tiny-sdxl.safetensors"
FLUX = MODELS / "unet" / "loom-tiny-flux.safetensors"

MANTISSA_BITS = {torch.float16: 10, torch.bfloat16: 7, torch.float32: 23}
FP32_NOISE = 2.0**-16
DELTA_ROUNDINGS = 2


def tolerance(want: torch.Tensor, original: torch.Tensor) -> tuple[float, float]:
    """(rtol, atol) for two computations of the same patched weight ``want`` (``original``: the unpatched weight).

    With m the mantissa bits of the weight dtype (fp16 10, bf16 7), one ulp of ``x`` is at most ``2^-m * |x|``.
    - Core and the reference compute ``W + s*ΔW`` in fp32 (fp64) and cast once: within half an ulp of the exact value.
    - Loom's in-place merge (``lora_math.merge``) keeps the low-rank factors in the weight dtype (``up * alpha/rank``
      cast, then times the strength) and rounds ``W + ΔW`` once: besides the final half ulp, its ΔW carries up to
      ``DELTA_ROUNDINGS`` roundings of the dtype relative to ``|ΔW|``.
    So ``rtol = 2^-m`` (one ulp of the element: 9.8e-4 fp16, 7.8e-3 bf16) and
    ``atol = DELTA_ROUNDINGS * 2^-m * max|W' - W| + 2^-16 * max|W'|``: the delta's own roundings at the scale of the
    tensor's largest change, plus fp32 operation-order noise (≈ 2^-24 per rounding) at elements near zero. Relative to
    the change, that is 0.2% (fp16) / 1.6% (bf16) of its largest element; relative to the weight, about 1e-3 of its
    scale for fp16, as the written deltas are 10% of the weight's RMS (``lora_writers.RHO``). A wrong alpha, strength,
    slice or sign moves elements by a good fraction of the delta and fails; :func:`_check` verifies on every patched
    weight that the delta itself is far above this tolerance.
    """
    return _tolerance(want.float(), original.float(), want.dtype)


def _tolerance(want: torch.Tensor, original: torch.Tensor, dtype: torch.dtype) -> tuple[float, float]:
    """:func:`tolerance` on fp32 copies."""
    return _tolerance_of(float((want - original).abs_().amax()), float(want.abs().amax()), dtype)


def _tolerance_of(change: float, largest: float, dtype: torch.dtype) -> tuple[float, float]:
    """:func:`tolerance` from ``max|W' - W|`` and ``max|W'|`` (:func:`_check` has both at hand, in fp32)."""
    m = 2.0 ** -MANTISSA_BITS[dtype]
    return m, DELTA_ROUNDINGS * m * change + FP32_NOISE * largest


_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _unchanged(value: torch.Tensor, original: torch.Tensor) -> bool:
    """``value`` has the dtype, shape and values of ``original`` (as ``torch.equal``: ``-0.0`` equals ``0.0``, and core
    patching at strength 0 writes ``W + 0`` back, which turns the one into the other).

    These checks compare whole models many times, so the common case goes first: equal bits, compared as integers of
    the float's size, 1.3–2.5× faster on the CPU than ``torch.equal`` on fp32/bf16/fp16. Equal bits are equal values
    because ``original`` holds no NaN (:meth:`Base.of`); other bits fall back to ``torch.equal``."""
    if value.dtype != original.dtype or value.shape != original.shape:
        return False
    if value.is_floating_point():
        as_int = _SAME_SIZE_INT[value.element_size()]
        if torch.equal(value.view(as_int), original.view(as_int)):
            return True
    return torch.equal(value, original)


@dataclass
class Base:
    """A loaded stand-in model, its CLIP (or None) and bit-exact copies of their original weights."""

    model: object
    clip: object
    model_sd: dict
    clip_sd: dict

    @classmethod
    def of(cls, model, clip) -> Base:
        clip_sd = {k: v.clone() for k, v in clip.patcher.model.state_dict().items()} if clip is not None else {}
        base = cls(model, clip, {k: v.clone() for k, v in model.model.state_dict().items()}, clip_sd)
        nan = [k for sd in (base.model_sd, base.clip_sd) for k, v in sd.items() if not torch.equal(v, v)]
        assert not nan, f"uninitialised (NaN) weights would make bit-equality flaky: {nan}"
        return base

    def original(self, component: str) -> dict:
        return self.model_sd if component == "model" else self.clip_sd


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
    return Base.of(model, clip)


@pytest.fixture(scope="module")
def sdxl():
    import comfy.sd

    model = comfy.sd.load_diffusion_model(str(SDXL), model_options={"dtype": torch.float16})
    return Base.of(model, lw.thin_sdxl_clip(model, seed=0))


@pytest.fixture(scope="module")
def flux():
    import comfy.sd

    return Base.of(comfy.sd.load_diffusion_model(str(FLUX), model_options={"dtype": torch.bfloat16}), None)


# --- running Loom, core and the reference ---------------------------------------------------------------------------

Applied = list[tuple[lw.WrittenLoRA, float, float]]  # (file, strength_model, strength_clip) in stack order


def _patched(patcher, original: dict) -> dict:
    """``conftest.patched_state`` that clones only what the patch changed: the weights ``patcher`` produces when
    ComfyUI loads it (then unpatched), where every key still equal to ``original`` (:func:`_unchanged`) *is* the
    original tensor."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher], force_full_load=True)
    state = {}
    for key, value in patcher.model.state_dict().items():
        o = original[key]
        state[key] = o if _unchanged(value, o) else value.detach().clone()
    patcher.unpatch_model()
    return state


def _states(base: Base, model, clip) -> dict[str, dict]:
    out = {"model": _patched(model, base.model_sd)}
    if clip is not None:
        out["clip"] = _patched(clip.patcher, base.clip_sd)
    return out


def _core(base: Base, applied: Applied) -> dict[str, dict]:
    """Core's own nodes, chained as a user would chain them."""
    import nodes

    model, clip = base.model, base.clip
    for written, sm, sc in applied:
        if clip is None:
            (model,) = nodes.LoraLoaderModelOnly().load_lora_model_only(model, written.name, sm)
        else:
            model, clip = nodes.LoraLoader().load_lora(model, clip, written.name, sm, sc)
    return _states(base, model, clip)


def _reference(base: Base, applied: Applied) -> dict[str, dict]:
    """``lora_writers``' hand reference: fp64 sums (DoRA merges) in stack order on the original weights, one cast."""
    out = {c: dict(base.original(c)) for c in (["model", "clip"] if base.clip is not None else ["model"])}
    work: dict[tuple[str, str], torch.Tensor] = {}
    for written, sm, sc in applied:
        for e in written.expected:
            strength = sm if e.component == "model" else sc
            if strength == 0:
                continue
            w = work.setdefault((e.component, e.key), base.original(e.component)[e.key].double().clone())
            view = w if e.rows is None else w[e.rows[0] : e.rows[1]]
            if e.dora_scale is None:
                view += strength * e.delta().double()
            else:
                view.copy_(lw.dora_merge(view, e.delta(), e.dora_scale, strength))
    for (component, key), w in work.items():
        out[component][key] = w.to(base.original(component)[key].dtype)
    return out


def _strength(e: lw.Expected, sm: float, sc: float) -> float:
    return sm if e.component == "model" else sc


def _changed(state: dict, original: dict) -> set[str]:
    """Keys of a ``_patched`` state that differ from the original (unchanged keys hold the original tensor)."""
    return {k for k, v in original.items() if state[k] is not v}


def _expected_keys(applied: Applied, component: str) -> set[str]:
    return {e.key for w, sm, sc in applied for e in w.expected if e.component == component and _strength(e, sm, sc)}


def _check(loom: dict, want: dict, base: Base, applied: Applied, against: str) -> None:
    """Loom == want on every key within :func:`tolerance` (bit-exact where unpatched); Loom, and core, changed exactly
    the keys the files target; every patched weight (or row slice) moved beyond the tolerance in most of its
    elements, so a missing, mis-scaled or misplaced delta could not pass; the input model and CLIP still hold their
    original weights."""
    for component, state in loom.items():
        original, other = base.original(component), want[component]
        expected = _expected_keys(applied, component)
        assert state.keys() == other.keys() == original.keys(), f"{component}: different key sets"
        assert _changed(state, original) == expected, f"Loom changed other {component} keys than the file targets"
        if against == "core":
            assert _changed(other, original) == expected, f"core changed other {component} keys than Loom"
        regions: dict[str, set] = {}
        for written, sm, sc in applied:
            for e in written.expected:
                if e.component == component and _strength(e, sm, sc):
                    regions.setdefault(e.key, set()).add(e.rows)
        for key in expected:
            g, w, o = state[key], other[key], original[key]
            label = f"{component} Loom vs {against} {key}"
            assert (g.dtype, g.shape) == (w.dtype, w.shape), f"{label}: {g.dtype} {list(g.shape)} vs {w.dtype}"
            # :func:`tolerance`, each fp32 intermediate made once: |W' - W| also gives what moved beyond it.
            wf = w.float()
            change = (wf - o.float()).abs_()
            bound = wf.abs()
            rtol, atol = _tolerance_of(float(change.amax()), float(bound.amax()), w.dtype)
            bound.mul_(rtol).add_(atol)
            if not torch.equal(g, w):
                excess = (g.float() - wf).abs_().sub_(bound).flatten()
                if excess.amax() > 0:
                    worst = int(excess.argmax())
                    raise AssertionError(
                        f"{label}: {int((excess > 0).sum())}/{w.numel()} elements beyond rtol {rtol:.3g} + atol "
                        f"{atol:.3g}; worst at flat index {worst}: got {float(g.flatten()[worst]):.8g}, want "
                        f"{float(wf.flatten()[worst]):.8g}, unpatched {float(o.flatten()[worst]):.8g}"
                    )
            moved = change > bound
            for rows in regions[key]:
                fraction = float((moved if rows is None else moved[rows[0] : rows[1]]).float().mean())
                assert fraction > 0.5, f"{label} rows {rows}: only {fraction:.0%} of the delta beyond the tolerance"
        live = base.model.model.state_dict() if component == "model" else base.clip.patcher.model.state_dict()
        assert all(_unchanged(live[k], original[k]) for k in original), f"the input {component} was modified"


def _report(written: lw.WrittenLoRA, sm: float, sc: float) -> str:
    """Loom's summary line: all modules matched; "weights patched" counts model weights (a fused FLUX weight
    patched on three row slices is one weight)."""
    patched = len({(e.component, e.key) for e in written.expected if _strength(e, sm, sc)})
    return f"{written.name}: {written.modules}/{written.modules} modules matched, {patched} weights patched"


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
    base: Base = request.getfixturevalue(case.model)
    seed = CASES.index(case)
    written = case.write(base.model, base.clip, loras, seed)
    sm, sc = case.strengths
    out = pack.nodes.loader.LoomLoraLoader.execute(
        model=base.model, clip=base.clip, lora_name=written.name, strength_model=sm, strength_clip=sc
    )
    loom_model, loom_clip, report = out.result
    assert report == _report(written, sm, sc)
    loom = _states(base, loom_model, loom_clip)
    applied = [(written, sm, sc)]
    if case.why_not_core:
        _check(loom, _reference(base, applied), base, applied, "reference")
    else:
        _check(loom, _core(base, applied), base, applied, "core")


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
    patching, lora_files = pack.nodes.comfy_bridge, pack.nodes.lora_files
    written = [write(sd15_fp16.model, sd15_fp16.clip, loras, 100 + i) for i, write in enumerate(writers)]
    applied = list(zip(written, STACK_MODEL, STACK_CLIP, strict=True))
    specs = [patching.LoraSpec(w.name, lora_files.load(w.name), sm, sc) for w, sm, sc in applied]
    model, clip, reports = patching.apply_stack(sd15_fp16.model, sd15_fp16.clip, specs)
    assert [r.summary() for r in reports] == [_report(w, sm, sc) for w, sm, sc in applied]
    shared = _expected_keys(applied[:1], "model") & _expected_keys(applied[1:2], "model")
    assert shared, "the stack must put several LoRAs on the same weights"
    loom = _states(sd15_fp16, model, clip)
    want = _core(sd15_fp16, applied) if against == "core" else _reference(sd15_fp16, applied)
    _check(loom, want, sd15_fp16, applied, against)


@pytest.mark.parametrize(("sm", "sc"), [(0.0, 0.8), (0.8, 0.0)], ids=["model-0", "clip-0"])
def test_zero_strength_on_one_side(sm, sc, sd15_fp16, pack, loras):
    """Strength 0 on one side leaves that side bit-exact (as core does) and patches the other side like core."""
    written = lw.kohya(sd15_fp16.model, sd15_fp16.clip, loras, 200)
    out = pack.nodes.loader.LoomLoraLoader.execute(
        model=sd15_fp16.model, clip=sd15_fp16.clip, lora_name=written.name, strength_model=sm, strength_clip=sc
    )
    loom_model, loom_clip, report = out.result
    assert report == _report(written, sm, sc)
    applied = [(written, sm, sc)]
    loom, core = _states(sd15_fp16, loom_model, loom_clip), _core(sd15_fp16, applied)
    # _check requires Loom and core to change exactly the expected keys: none on the side at strength 0.
    _check(loom, core, sd15_fp16, applied, "core")
