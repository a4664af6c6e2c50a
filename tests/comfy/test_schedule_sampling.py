"""Scheduled LoRAs through ComfyUI's real sampler on the tiny SD1.5 model (CPU, fp32).

The reference re-merges the weights before every model call with that step's strength, finding the step on its own
(by matching the call's sigma to the run's sigmas), the way core hooks with one keyframe per step would.
"""

import comfy.sample
import comfy.utils
import pytest
import torch
from comfy.patcher_extension import WrappersMP
from conftest import SD15_LORA, as_dynamic

SD15_LORA_B = "loom-tiny-sd15-lora-b.safetensors"
SD15_LOHA = "loom-tiny-sd15-loha.safetensors"
# fp32 on the CPU: bypass and merge differ only by summation order. Random weights give latents of magnitude ~100s,
# so the tolerance is relative to the output's largest value; the schedule's effect is checked to be far above it.
RTOL = 2e-5


def assert_matches(out, ref, msg=""):
    tolerance = RTOL * float(ref.abs().max())
    torch.testing.assert_close(out, ref, rtol=0, atol=tolerance, msg=msg or None)
    return tolerance


def conds():
    g = torch.Generator().manual_seed(1)
    return [[torch.randn(1, 77, 768, generator=g), {}]], [[torch.randn(1, 77, 768, generator=g), {}]]


def sample(model, steps=6, sampler="euler", scheduler="normal", seed=3, positive=None, negative=None, **kw):
    latent = torch.zeros(1, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    if positive is None:
        positive, negative = conds()
    return comfy.sample.sample(
        model, noise, steps, 5.0, sampler, scheduler, positive, negative, latent, seed=seed, disable_pbar=True, **kw
    )


def spec(pack, name, schedule=None, strength=1.0, block_weight=None):
    from lora_loom.lora_math.schedule import parse_schedule

    parsed = pack.nodes.files.lora_files.load(name, "lora_name")
    sched = parse_schedule(schedule) if isinstance(schedule, str) else schedule
    return pack.nodes.comfy_bridge.LoraSpec(name, parsed, strength, 0.0, block_weight, schedule=sched)


def loom(pack, model, *specs):
    return pack.nodes.comfy_bridge.apply_stack(model, None, list(specs))[0]


def reference(pack, model, static=(), scheduled=(), run_sampler=None):
    """Sampling kwargs -> output, re-merging every scheduled LoRA at every model call; static ones merged once.

    static: [(name, strength)]; scheduled: [(name, Schedule, strength)]; run_sampler: ``(model, **kw) -> latent``
    (default :func:`sample` on the SD1.5 latent).
    """
    from lora_loom.lora_math import adapters
    from lora_loom.lora_math.names import keymap

    keys = {k: tuple(v.shape) for k, v in model.model.state_dict().items()}

    def patches(name):
        return keymap.match(pack.nodes.files.lora_files.load(name, "lora_name"), keys).patches

    originals = {}

    def merge_all(strengths):
        for p in {p.key for name, *_ in [*static, *scheduled] for p in patches(name)}:
            originals.setdefault(p, comfy.utils.get_attr(model.model, p).detach().clone())
        merged = {k: v.clone() for k, v in originals.items()}
        for (name, s), value in zip(
            [(n, s) for n, s in static] + [(n, s) for n, _, s in scheduled], strengths, strict=True
        ):
            for p in patches(name):
                if p.rows is None:
                    merged[p.key] = adapters.merged_weight(merged[p.key], p.adapter, s * value)
                else:  # a slice of a fused weight (FLUX-family qkv, Z-Image's attention.qkv …)
                    rows = slice(*p.rows)
                    merged[p.key][rows] = adapters.merged_weight(merged[p.key][rows], p.adapter, s * value)
        for k, w in merged.items():
            comfy.utils.get_attr(model.model, k).data.copy_(w)

    def wrapper(executor, x, t, *args, **kwargs):
        options = args[3]
        sigmas = options["sample_sigmas"]
        (hits,) = torch.nonzero(torch.isclose(sigmas, t[0], rtol=1e-5)).flatten().tolist()[:1] or [0]
        n = len(sigmas) - 1
        merge_all([1.0] * len(static) + [sched.values(n)[min(hits, n - 1)] for _, sched, _ in scheduled])
        return executor(x, t, *args, **kwargs)

    ref = model.clone()
    ref.add_wrapper_with_key(WrappersMP.APPLY_MODEL, "test_reference", wrapper)

    def run(**kw):
        try:
            return (run_sampler or sample)(ref, **kw)
        finally:
            for k, w in originals.items():
                comfy.utils.get_attr(model.model, k).data.copy_(w)

    return run


def test_scheduled_lora_equals_per_step_remerge(pack, model):
    from lora_loom.lora_math.schedule import parse_schedule

    ramp = "0:0, 0.5:1.5 smooth, 1:0.2"
    out = sample(loom(pack, model, spec(pack, SD15_LORA, ramp)))
    ref = reference(pack, model, scheduled=[(SD15_LORA, parse_schedule(ramp), 1.0)])()
    static = sample(loom(pack, model, spec(pack, SD15_LORA, None, 1.0)))
    tolerance = assert_matches(out, ref)
    assert (out - static).abs().max() > 1000 * tolerance  # the schedule matters far beyond the tolerance


def test_mixed_stack_static_merged_scheduled_bypassed(pack, model):
    from lora_loom.lora_math.schedule import parse_schedule

    down = "0:0.8 hold, 0.5:-0.5"  # a hold into a negative strength
    patched = loom(pack, model, spec(pack, SD15_LORA, None, 0.6), spec(pack, SD15_LORA_B, down, 1.3))
    assert patched.get_attachment("lora_loom") is not None and patched.get_attachment("lora_loom_schedule")
    ref = reference(pack, model, static=[(SD15_LORA, 0.6)], scheduled=[(SD15_LORA_B, parse_schedule(down), 1.3)])
    out = sample(patched)
    tolerance = assert_matches(out, ref())
    static = loom(pack, model, spec(pack, SD15_LORA, None, 0.6), spec(pack, SD15_LORA_B, None, 1.3 * 0.8))
    assert (out - sample(static)).abs().max() > 300 * tolerance


def test_any_sampler_scheduler_partial_run_and_custom_sigmas(pack, model):
    from lora_loom.lora_math.schedule import parse_schedule

    text = "@0:1, @3:0, @5:2"
    patched = loom(pack, model, spec(pack, SD15_LORA, text))
    ref = reference(pack, model, scheduled=[(SD15_LORA, parse_schedule(text), 1.0)])
    for kw in (
        {"sampler": "dpmpp_2m", "scheduler": "karras", "steps": 7},
        {"steps": 10, "start_step": 2, "last_step": 8},  # KSamplerAdvanced: the schedule spans this call's steps
        {"sigmas": torch.tensor([14.6, 6.0, 2.5, 1.0, 0.4, 0.0])},  # SamplerCustom(Advanced)
    ):
        assert_matches(sample(patched, **kw), ref(**kw), msg=str(kw))


def test_constant_schedule_is_the_static_path(pack, model):
    scheduled = loom(pack, model, spec(pack, SD15_LORA, "0.7"))
    assert scheduled.get_attachment("lora_loom_schedule") is None
    static = loom(pack, model, spec(pack, SD15_LORA, None, 0.7))
    assert torch.equal(sample(scheduled), sample(static))


def test_block_schedules_and_non_lowrank_adapters(pack, model):
    from lora_loom.lora_math.schedule import parse_block_schedules, parse_schedule

    blocks = parse_block_schedules("IN: 0:1, 1:0 | OUT: 0:0, 1:1 | *: 0.5")
    patched = loom(pack, model, spec(pack, SD15_LOHA, blocks))
    out = sample(patched)
    # reference: each block's schedule applied to its keys only, LoHa merged per step
    parsed = pack.nodes.files.lora_files.load(SD15_LOHA, "lora_name")
    from lora_loom.lora_math.names import blocks as blocks_mod
    from lora_loom.lora_math.names import keymap

    keys = {k: tuple(v.shape) for k, v in model.model.state_dict().items()}
    groups = {}
    for p in keymap.match(parsed, keys).patches:
        groups.setdefault(blocks.for_key(p.key), []).append(p)
    assert len(groups) == 3, {blocks_mod.block_id(p.key) for g in groups.values() for p in g}
    from lora_loom.lora_math import adapters

    originals = {}

    def wrapper(executor, x, t, *args, **kwargs):
        sigmas = args[3]["sample_sigmas"]
        i = int(torch.nonzero(torch.isclose(sigmas, t[0], rtol=1e-5))[0])
        for sched, ps in groups.items():
            for p in ps:
                w = comfy.utils.get_attr(model.model, p.key)
                originals.setdefault(p.key, w.detach().clone())
                w.data.copy_(adapters.merged_weight(originals[p.key], p.adapter, sched.values(len(sigmas) - 1)[i]))
        return executor(x, t, *args, **kwargs)

    ref = model.clone()
    ref.add_wrapper_with_key(WrappersMP.APPLY_MODEL, "test_reference", wrapper)
    try:
        expected = sample(ref)
    finally:
        for k, w in originals.items():
            comfy.utils.get_attr(model.model, k).data.copy_(w)
    assert_matches(out, expected)
    assert parse_schedule("0:1, 1:0") in groups


def test_bypass_leaves_with_its_patcher(pack, model):
    base = sample(model)
    patched = loom(pack, model, spec(pack, SD15_LORA, "0:1, 1:0"))
    sample(patched)
    key = next(iter(patched.get_attachment("lora_loom_schedule").terms))
    module = comfy.utils.get_attr(model.model, key.rpartition(".")[0])
    assert len(module._forward_hooks) == 1  # a hook (module.forward is not ours to replace)
    assert torch.equal(sample(model), base)  # the base model computes without it
    original = {k: v.clone() for k, v in model.model.state_dict().items()}
    for _ in range(2):
        sample(patched)
        assert len(module._forward_hooks) <= 1  # loads and ejects never pile hooks up
    assert all(torch.equal(v, original[k]) for k, v in model.model.state_dict().items())  # weights never written
    assert torch.equal(sample(model), base)


def test_dynamic_patchers_run_the_bypass(pack, model):
    from lora_loom.lora_math.schedule import parse_schedule

    dynamic = as_dynamic(model.clone())
    text = "0:1.5, 1:0"
    patched = loom(pack, dynamic, spec(pack, SD15_LORA, text))
    assert not patched.patches and patched.get_attachment("lora_loom") is None
    ref = reference(pack, model, scheduled=[(SD15_LORA, parse_schedule(text), 1.0)])()
    assert_matches(sample(patched), ref)


def test_step_keyframe_past_the_run_names_the_row(pack, model):
    patched = loom(pack, model, spec(pack, SD15_LORA, "@0:1, @12:0"))
    patched.get_attachment("lora_loom_schedule")
    with pytest.raises(ValueError, match=r"lora_name schedule: keyframe @12 is past the end of this 6-step run"):
        sample(patched)
