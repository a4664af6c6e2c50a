"""BFL FLUX control LoRAs (FLUX.1 Depth / Canny [dev] LoRA) on real ComfyUI models: Loom behaves as core.

Core (``comfy/lora_convert.py`` ``convert_lora_bfl_control``) turns such a file into plain LoRA patches, ``diff``
patches for the ``lora_B.bias`` bias differences, ``"set"`` patches for the q/k norm scales (the weight becomes the
stored tensor, whatever the strength) and a ``reshape_weight`` that zero-pads ``img_in`` from 64 to 128 input columns
before adding its delta. ``model_base.Flux.concat_cond`` then sees the wider ``img_in`` and concatenates the control
image's latent (``concat_latent_image``, as InstructPixToPixConditioning sets it) to the noisy latent.

Here a seeded file is written the way BFL writes one (:func:`flux_control`) against the loaded model's keys, loaded
by Loom's nodes and by core's ``LoraLoaderModelOnly``, and compared: every weight of the patched state dicts (the
widened ``img_in`` included, against core and against a hand reference ``pad(W) + s·ΔW``), the norm replacements bit
for bit, and the diffusion model's output for a real call with a concatenated control latent. Then what Loom
refuses, before anything is patched: schedules on such a file, another LoRA on ``img_in`` after it widened, and
models whose ``img_in`` cannot take the control latent. Then upstream's dynamic-VRAM protocol for the new patches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import comfy.lora
import comfy.model_management as mm
import lora_writers as lw
import patched_weights as pw
import pytest
import torch
from comfy_env import MODELS
from conftest import as_dynamic, tiny_flux
from families import tiny
from test_patch_protocol import check_protocol

FLUX = MODELS / "unet" / "loom-tiny-flux.safetensors"
UNET = lw.UNET
IMG_IN = UNET + "img_in.weight"
_NORM = re.compile(r"^diffusion_model\.(?P<stem>.+\.(query|key)_norm)\.(scale|weight)$")  # .weight upstream


# --- the writer -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ControlLoRA:
    """A written control LoRA: the file (``expected`` has one entry per patched key, img_in's included), the
    img_in factors as stored, and the norm values by model key."""

    written: lw.WrittenLoRA
    img_in: tuple[torch.Tensor, torch.Tensor]  # (lora_A [r, 2·in], lora_B [out, r])
    norms: dict[str, torch.Tensor]

    @property
    def name(self) -> str:
        return self.written.name

    def without_img_in(self) -> lw.WrittenLoRA:
        return replace(self.written, expected=tuple(e for e in self.written.expected if e.key != IMG_IN))

    def img_in_reference(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        """``pad(W) + strength · B A`` in fp64, one cast: core's reshape_weight and LoRA math by hand."""
        down, up = self.img_in
        out = torch.zeros(up.shape[0], down.shape[1], dtype=torch.float64)
        out[:, : weight.shape[1]] = weight.double()
        return (out + strength * (up.double() @ down.double())).to(weight.dtype)


def flux_control(model, folder, seed: int, rank: int = 4, layers: str = ".") -> ControlLoRA:
    """A BFL control LoRA for ``model`` (a FLUX.1 ModelPatcher): ``lora_A``/``lora_B`` (no alpha: scale 1) and a
    ``lora_B.bias`` on every Linear (whose path matches ``layers``; img_in always), ``img_in.lora_A`` with twice
    img_in's input columns, and every q/k norm scale as a whole tensor that differs clearly from the model's. bf16,
    as BFL's files; no prefix."""
    keys = lw.ModelKeys(model)
    wr = lw._Writer(keys, folder, f"loom-fc-control-s{seed}.safetensors", seed, torch.bfloat16)

    def bias(module: str, weight_key: str) -> None:
        bias_key = weight_key[: -len("weight")] + "bias"
        if bias_key in keys.model_sd:
            g = wr.gen(module + ".bias")
            stored = wr.put(f"{module}.lora_B.bias", torch.randn(keys.model_sd[bias_key].shape, generator=g) * 0.02)
            wr.expect(bias_key, "model", lambda t=stored: t.float())
            wr.modules += 1  # Loom counts a bias difference as a module of its own

    for path in keys.unet(rf"^img_in$|{layers}", ndim=2):  # Linears of FLUX.1
        key = UNET + path + ".weight"
        if path != "img_in":
            wr.lora(path, key, "model", rank=rank, down="lora_A.weight", up="lora_B.weight")
        else:
            w = keys.weight(key)
            g = wr.gen(path)
            down = torch.randn(rank, 2 * w.shape[1], generator=g)
            up = torch.randn(w.shape[0], rank, generator=g)
            up *= lw.RHO * lw._rms(w) / lw._rms(lw.lora_delta(down, up))
            d, u = wr.put("img_in.lora_A.weight", down), wr.put("img_in.lora_B.weight", up)
            wr.expect(key, "model", lambda d=d, u=u: lw.lora_delta(d, u))
            wr.modules += 1
            img_in = (d, u)
        bias(path, key)
    norms = {}
    for key, w in keys.model_sd.items():
        m = _NORM.match(key)
        if m is None or w.ndim != 1:
            continue
        g = wr.gen(key)
        value = w.float() + (0.5 + torch.rand(w.shape, generator=g)) * max(lw._rms(w), 0.1)
        norms[key] = wr.put(f"{m.group('stem')}.scale", value)
        wr.expect(key, "model", lambda v=norms[key], w=w: v.float() - w.float())
        wr.modules += 1
    assert "single_blocks.0.norm.key_norm.scale" in wr.tensors and "img_in.lora_A.weight" in wr.tensors  # core's test
    return ControlLoRA(wr.save(), img_in, norms)


# --- running Loom and core ------------------------------------------------------------------------------------------


def loom_loader(pack, model, name: str, strength: float, schedule=None):
    return pack.nodes.load.loader.LoomLoraLoader.execute(
        model=model, clip=None, lora_name=name, strength_model=strength, strength_clip=0.0, schedule=schedule
    ).result[::2]  # (model, report)


def loom_stack(pack, model, rows: list[dict]):
    import json

    out = pack.nodes.load.stack.LoomLoraStack.execute(model=model, rows=json.dumps(rows)).result
    return out[0], out[3]


def core_chain(model, applied: list[tuple[str, float]]):
    import nodes

    for name, strength in applied:
        (model,) = nodes.LoraLoaderModelOnly().load_lora_model_only(model, name, strength)
    return model


def check_against_core(base: pw.Base, control: ControlLoRA, loom: dict, core: dict, strength: float) -> float:
    """Every key: Loom == core within dtype rounding (:func:`patched_weights.check`, img_in on its own, as it is
    wider than the original); the norms bit for bit the file's values; img_in also against the hand reference.
    Returns the largest |Loom - core| over all weights."""
    narrow = pw.Base(base.model, None, {k: v for k, v in base.model_sd.items() if k != IMG_IN}, {})
    pw.check(*({"model": {k: v for k, v in s.items() if k != IMG_IN}} for s in (loom, core)),
             narrow, [(control.without_img_in(), strength, 0.0)], "core")  # fmt: skip
    for key, value in control.norms.items():
        assert torch.equal(loom[key], value.to(loom[key].dtype)) and torch.equal(core[key], loom[key]), key
    original = base.model_sd[IMG_IN]
    got, want, ref = loom[IMG_IN], core[IMG_IN], control.img_in_reference(original, strength)
    assert got.shape == want.shape == ref.shape == (original.shape[0], 2 * original.shape[1])
    padded = torch.zeros_like(got)
    padded[:, : original.shape[1]] = original
    for other in (want, ref):
        rtol, atol = pw.tolerance(other, padded)
        torch.testing.assert_close(got, other, rtol=rtol, atol=atol)
    rtol, atol = pw.tolerance(want, padded)  # the delta is there: most elements moved beyond the tolerance
    assert float(((want - padded).float().abs() > rtol * want.float().abs() + atol).float().mean()) > 0.5
    assert torch.equal(base.model.model.state_dict()[IMG_IN], original)  # the input model keeps 64 columns
    return max(float((loom[k].float() - core[k].float()).abs().max()) for k in loom)


def assert_close_to_core(loom: dict, core: dict, original: dict) -> None:
    """Every key within :func:`patched_weights.tolerance` of core's (against the zero-padded original where the
    weight was widened), for stacks the per-file reference of :func:`check_against_core` does not describe."""
    for key, want in core.items():
        base = original[key]
        if base.shape != want.shape:
            base = torch.zeros_like(want)
            base[tuple(slice(0, d) for d in original[key].shape)] = original[key]
        rtol, atol = pw.tolerance(want, base)
        torch.testing.assert_close(loom[key], want, rtol=rtol, atol=atol, msg=key)


def as_regular(patcher):
    """A patcher made dynamic by ``as_dynamic`` back as a plain ModelPatcher, patches and all: on a CPU that is how
    ComfyUI loads it (upstream's ModelPatcherDynamic needs CUDA), and upstream loads a module whose patches resize it
    the same way, whole (``patch_weight_to_device``)."""
    from comfy.model_patcher import ModelPatcher

    patcher.__class__ = ModelPatcher
    return patcher


@pytest.fixture(scope="module")
def flux_bf16():
    import comfy.sd

    return pw.Base.of(comfy.sd.load_diffusion_model(str(FLUX), model_options={"dtype": torch.bfloat16}), None)


@pytest.fixture(scope="module")
def small():
    """ComfyUI's FLUX.1 class at hidden 128 (conftest.tiny_flux), fp32: for the many cheap comparisons."""
    return pw.Base.of(tiny_flux(0), None)


# --- loading: weights -----------------------------------------------------------------------------------------------


# On the 546M-parameter stand-in, every kind of layer once (the small model takes every Linear): the comparison of
# whole bf16 state dicts is what costs here.
FULL_WIDTH_LAYERS = (
    r"^(txt_in|guidance_in\.in_layer|final_layer\.linear|single_blocks\.0\.modulation\.lin"
    r"|double_blocks\.0\.(img_attn\.qkv|txt_attn\.proj))$"
)


def test_full_width_flux_patched_weights_equal_cores(pack, flux_bf16, loras):
    """The 3072-wide stand-in (real FLUX.1 shapes: img_in [3072, 64] -> [3072, 128]) in bf16, as BFL files are."""
    control = flux_control(flux_bf16.model, loras, seed=0, layers=FULL_WIDTH_LAYERS)
    loom_model, report = loom_loader(pack, flux_bf16.model, control.name, 0.8)
    assert report == pw.report(control.written, 0.8, 0.0)
    loom = pw.patched(loom_model, flux_bf16.model_sd)
    core = pw.patched(core_chain(flux_bf16.model, [(control.name, 0.8)]), flux_bf16.model_sd)
    worst = check_against_core(flux_bf16, control, loom, core, 0.8)
    assert worst < 0.05  # bf16 weights of magnitude ~1: a few ulps at most (the per-element check is above)


@pytest.mark.parametrize("strength", [1.0, 0.35, -0.6, 2.0])
def test_strengths_act_as_in_core(pack, small, loras, strength):
    """Strength as core: the norms are replaced whole at any strength (core's "set" reads none), img_in is
    ``pad(W) + s·ΔW`` (so its new columns hold ``s·ΔW[:, 64:]``), LoRA and bias deltas scale by s."""
    control = flux_control(small.model, loras, seed=1)
    loom_model, _ = loom_loader(pack, small.model, control.name, strength)
    loom = pw.patched(loom_model, small.model_sd)
    core = pw.patched(core_chain(small.model, [(control.name, strength)]), small.model_sd)
    check_against_core(small, control, loom, core, strength)
    down, up = control.img_in
    new_columns = strength * (up.double() @ down.double())[:, 64:]
    torch.testing.assert_close(loom[IMG_IN][:, 64:].double(), new_columns, rtol=1e-5, atol=1e-6)


def test_strength_zero_applies_nothing_as_cores_model_loader(pack, small, loras):
    """At strength 0 the LoRA is off: the model comes back as it was (core's LoraLoaderModelOnly does the same;
    core's two-strength LoraLoader with a non-zero CLIP strength would still replace the norms and widen img_in)."""
    control = flux_control(small.model, loras, seed=2)
    loom_model, report = loom_loader(pack, small.model, control.name, 0.0)
    assert loom_model is small.model and "nothing applied" in report
    assert core_chain(small.model, [(control.name, 0.0)]) is small.model


def test_the_stack_node_loads_it_as_the_loader(pack, small, loras):
    control = flux_control(small.model, loras, seed=3)
    loom_model, report = loom_stack(pack, small.model, [{"name": control.name, "model": 0.7}])
    assert f"{control.written.modules}/{control.written.modules} modules matched" in report
    loom = pw.patched(loom_model, small.model_sd)
    core = pw.patched(core_chain(small.model, [(control.name, 0.7)]), small.model_sd)
    check_against_core(small, control, loom, core, 0.7)


def test_a_lora_before_the_control_lora_patches_the_narrow_img_in_as_core(pack, small, loras):
    """A plain FLUX LoRA with an img_in module, then the control LoRA: the plain delta lands on the 64 columns and
    the widening follows, as core's chained loaders do."""
    plain = lw.flux_kohya(small.model, loras, seed=4)
    control = flux_control(small.model, loras, seed=4)
    loom_model, report = loom_stack(pack, small.model, [{"name": plain.name, "model": 0.9}, {"name": control.name}])
    assert "unmatched" not in report
    loom = pw.patched(loom_model, small.model_sd)
    core = pw.patched(core_chain(small.model, [(plain.name, 0.9), (control.name, 1.0)]), small.model_sd)
    assert loom[IMG_IN].shape == core[IMG_IN].shape == (128, 128)
    assert_close_to_core(loom, core, small.model_sd)


def test_a_loader_while_cores_control_lora_is_resident_matches_the_original_img_in(pack, loras):
    """ComfyUI keeps the last model loaded: with core's control LoRA resident, img_in *is* [128, 128] until the next
    load restores it. Loom matches files against the original shapes (the patchers' backup), not the resident ones."""
    fresh = pw.Base.of(tiny_flux(5), None)  # no Loom node has seen this model yet
    control = flux_control(fresh.model, loras, seed=5)
    core_model = core_chain(fresh.model, [(control.name, 1.0)])
    mm.load_models_gpu([core_model], force_full_load=True)
    assert fresh.model.model.state_dict()[IMG_IN].shape == (128, 128)
    loom_model, _ = loom_loader(pack, fresh.model, control.name, 1.0)
    core_model.unpatch_model()
    loom = pw.patched(loom_model, fresh.model_sd)
    core = pw.patched(core_model, fresh.model_sd)
    check_against_core(fresh, control, loom, core, 1.0)


# --- loading: the model's forward with the control latent -----------------------------------------------------------


def _forward(patcher, control_latent: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, set[str]]:
    """One call of the loaded diffusion model as a sampler makes it: conditioning from the model's own
    ``extra_conds`` (``concat_latent_image`` set as InstructPixToPixConditioning sets it), then ``apply_model``."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 16, 8, 8, generator=g)
    context, pooled = torch.randn(1, 6, 64, generator=g), torch.randn(1, 64, generator=g)
    mm.load_models_gpu([patcher], force_full_load=True)
    try:
        conds = patcher.model.extra_conds(
            noise=noise, device=torch.device("cpu"), concat_latent_image=control_latent, cross_attn=context,
            pooled_output=pooled, guidance=3.5,
        )  # fmt: skip
        with torch.no_grad():
            out = patcher.model.apply_model(noise, torch.tensor([0.6]), **{k: c.cond for k, c in conds.items()})
    finally:
        patcher.unpatch_model()
    return out, set(conds)


@pytest.mark.parametrize("dynamic", [False, True], ids=["regular", "dynamic-vram-patcher"])
def test_the_model_reads_the_control_latent_as_cores(pack, small, loras, dynamic):
    control = flux_control(small.model, loras, seed=6)
    model = as_dynamic(small.model.clone()) if dynamic else small.model
    loom_model, _ = loom_loader(pack, model, control.name, 0.9)
    if dynamic:
        assert loom_model.get_attachment("lora_loom") is None  # every weight through ComfyUI's patching
        loom_model = as_regular(loom_model)
    core_model = core_chain(small.model, [(control.name, 0.9)])
    latent = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(7))
    base_out, base_conds = _forward(small.model, latent)
    assert "c_concat" not in base_conds  # img_in [128, 64]: the unpatched model takes no control latent
    loom_out, loom_conds = _forward(loom_model, latent)
    core_out, core_conds = _forward(core_model, latent)
    assert "c_concat" in loom_conds and loom_conds == core_conds
    assert loom_out.shape == core_out.shape == base_out.shape == (1, 16, 8, 8)
    err = float((loom_out - core_out).abs().max())
    assert err <= 1e-4 * float(core_out.abs().max()), err  # fp32 weights within ~1e-7 of core's, through the model
    assert float((loom_out - base_out).abs().max()) > 1e3 * err  # the LoRA changes the output...
    other, _ = _forward(loom_model, torch.zeros_like(latent))
    assert float((loom_out - other).abs().max()) > 1e3 * err  # ...and so does the control image, via the new columns


# --- refusals, with nothing applied ---------------------------------------------------------------------------------


def test_a_schedule_on_a_control_lora_is_refused(pack, small, loras):
    from lora_loom.lora_math.schedule import parse_schedule

    control = flux_control(small.model, loras, seed=8)
    with pytest.raises(ValueError, match=rf"lora_name: '{control.name}' is a FLUX control LoRA .*strength schedule"):
        loom_loader(pack, small.model, control.name, 1.0, schedule=parse_schedule("0:1, 1:0"))
    with pytest.raises(ValueError, match=r"rows: row 1: .* is a FLUX control LoRA"):
        loom_stack(pack, small.model, [{"name": control.name, "schedule": "fade_out"}])
    assert not small.model.patches  # nothing was added to the input
    # a constant schedule is a strength: it loads, and equals the plain strength
    held, _ = loom_loader(pack, small.model, control.name, 1.0, schedule=parse_schedule("0:0.5, 1:0.5"))
    plain, _ = loom_loader(pack, small.model, control.name, 0.5)
    a, b = pw.patched(held, small.model_sd), pw.patched(plain, small.model_sd)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_another_lora_on_the_widened_img_in_is_refused(pack, small, loras):
    """After the control LoRA (core's loader drops that LoRA's img_in with a log line), or scheduled (its bypass runs
    on the widened layer whatever the order)."""
    plain = lw.flux_kohya(small.model, loras, seed=9)
    control = flux_control(small.model, loras, seed=9)
    with pytest.raises(ValueError, match=r"rows: row 2: .* patches diffusion_model\.img_in\.weight as the model has "
                                         r"it, \[128, 64\], but '.*' widens it to \[128, 128\].*before the control"):  # fmt: skip
        loom_stack(pack, small.model, [{"name": control.name}, {"name": plain.name}])
    with pytest.raises(ValueError, match=r"rows: row 1: .*scheduled LoRA runs on the widened layer"):
        loom_stack(pack, small.model, [{"name": plain.name, "schedule": "fade_in"}, {"name": control.name}])
    widened, _ = loom_loader(pack, small.model, control.name, 1.0)  # the same across two loader nodes
    with pytest.raises(ValueError, match=r"lora_name: .*but an earlier LoRA loader on this model widens it"):
        loom_loader(pack, widened, plain.name, 1.0)
    assert not small.model.patches


@pytest.mark.parametrize(
    ("family", "said"),
    [
        ("chroma", "this model is chroma (diffusion_model.img_in.weight [128, 64])"),
        ("flux2", "this model is flux2 (diffusion_model.img_in.weight [256, 128])"),
        ("sd15", "this model (sd15) has no img_in weight"),
    ],
)
def test_a_model_whose_img_in_cannot_take_it_is_refused_untouched(pack, small, sd15, loras, family, said):
    """Chroma (same classes, no per-block modulation), FLUX.2 (another latent) and a UNet: refused, naming the input,
    the file and the key, before anything is patched: the stack's other LoRA is not applied either."""
    target = sd15[0] if family == "sd15" else tiny(family)
    control = flux_control(small.model, loras, seed=10)  # a FLUX.1 file
    before = {k: v.clone() for k, v in target.model.state_dict().items()}
    other = lw.flux_kohya(target, loras, seed=10) if family != "sd15" else None
    rows = ([{"name": other.name}] if other else []) + [{"name": control.name}]
    row = len(rows)
    with pytest.raises(ValueError) as err:
        loom_stack(pack, target, rows)
    msg = str(err.value)
    assert msg.startswith(f"rows: row {row}: '{control.name}'") and said in msg, msg
    assert "img_in.lora_A.weight" in msg and "load it with a FLUX.1 [dev] model" in msg
    with pytest.raises(ValueError, match=re.escape(said)):
        loom_loader(pack, target, control.name, 1.0)
    assert not target.patches and target.get_attachment("lora_loom") is None
    mm.load_models_gpu([target], force_full_load=True)
    after = target.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    target.unpatch_model()


# --- upstream's dynamic-VRAM protocol ---------------------------------------------------------------------------------


def test_dynamic_vram_patches_follow_the_protocol_and_equal_cores(pack, small, loras):
    """On a dynamic patcher every weight is a Loom patch object. Each is rebuilt as ``type(p)(p.loaded_keys,
    weights)``, sized, prefetched and called as upstream's loader does (``test_patch_protocol.check_protocol``);
    img_in's patch reports its new shape (``calculate_shape``, what upstream's ``ModelPatcherDynamic`` asks before it
    loads the module whole, as for core's own reshaping patch); the loaded weights equal core's."""
    from lora_loom.nodes.comfy_bridge.weight_patch import LoomWeightPatch, LoomWidenPatch

    control = flux_control(small.model, loras, seed=11)
    loom_model, _ = loom_loader(pack, as_dynamic(small.model.clone()), control.name, 0.75)
    assert loom_model.get_attachment("lora_loom") is None  # no in-place merge on a dynamic patcher
    assert all(isinstance(p[1], LoomWeightPatch) for ps in loom_model.patches.values() for p in ps)
    (widen,) = [p[1] for p in loom_model.patches[IMG_IN]]
    assert isinstance(widen, LoomWidenPatch) and widen.calculate_shape(IMG_IN) == (128, 128)
    rebuilt = type(widen)(widen.loaded_keys, widen.weights)
    assert rebuilt.calculate_shape(IMG_IN) == (128, 128) and isinstance(rebuilt, LoomWidenPatch)
    if hasattr(comfy.lora, "calculate_shape"):  # upstream: what its dynamic loader compares with the weight's shape
        assert tuple(comfy.lora.calculate_shape(loom_model.patches[IMG_IN], small.model_sd[IMG_IN], IMG_IN)) == (
            128,
            128,
        )
    assert check_protocol(loom_model, small.model_sd) == len({e.key for e in control.written.expected})
    loom = pw.patched(as_regular(loom_model), small.model_sd)
    core = pw.patched(core_chain(small.model, [(control.name, 0.75)]), small.model_sd)
    check_against_core(small, control, loom, core, 0.75)


def test_padding_a_widened_weight_again_is_a_no_op(pack, small, loras):
    """Two control LoRAs (depth, then canny): the second finds img_in wide already, as core's second pad."""
    first, second = flux_control(small.model, loras, seed=12), flux_control(small.model, loras, seed=13)
    loom_model, _ = loom_stack(pack, small.model, [{"name": first.name, "model": 0.5}, {"name": second.name}])
    loom = pw.patched(loom_model, small.model_sd)
    core = pw.patched(core_chain(small.model, [(first.name, 0.5), (second.name, 1.0)]), small.model_sd)
    assert_close_to_core(loom, core, small.model_sd)
    assert all(torch.equal(loom[k], second.norms[k].float()) for k in second.norms)  # the last replacement wins
