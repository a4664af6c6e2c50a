"""Loom nodes next to ComfyUI's own LoRA features in one graph: the effects add up, in either order.

Core's loaders (LoraLoader, and upstream's "Load LoRA (Model)" stack node, which loops over the same
``load_lora_for_models``), upstream's bypass loader (which replaces ``module.forward`` through an injection) and core
hooks (LoRAs attached to the conditioning, patched in at sampling) each meet Loom's merge injection and its
scheduled bypass here. Every combination must equal the same LoRAs applied by core alone. Upstream-only features skip
on 0.3.75 with the reason.
"""

from __future__ import annotations

import inspect

import comfy.sd
import comfy.utils
import folder_paths
import pytest
import torch
from conftest import SD15_LORA, patched_state
from test_schedule_sampling import SD15_LORA_B, assert_matches, conds, reference, sample

RAMP = "0:0.3, 0.5:1.5, 1:0.8"  # the scheduled Loom LoRA's curve

HAS_BYPASS = hasattr(comfy.sd, "load_bypass_lora_for_models")


def _sd(name):
    return comfy.utils.load_torch_file(folder_paths.get_full_path("loras", name), safe_load=True)


def core(model, clip, name, sm=1.0, sc=1.0):
    return comfy.sd.load_lora_for_models(model, clip, _sd(name), sm, sc)


def loom(pack, model, clip, name, sm=1.0, sc=1.0, schedule=None):
    out = pack.nodes.load.loader.LoomLoraLoader.execute(
        model=model, clip=clip, lora_name=name, strength_model=sm, strength_clip=sc, schedule=schedule
    )
    return out.result[0], out.result[1]


def test_lora_metadata_is_attached_as_core_attaches_it(pack, sd15, loras):
    import lora_writers as lw
    from lora_loom.lora_math.formats import io

    model, clip, _ = sd15
    written = lw.kohya(model, clip, loras, 7)
    _, metadata = io.load_state_dict(written.path)
    assert metadata.get("ss_network_module") == "networks.lora"
    m, c = loom(pack, model, clip, written.name, 0.8, 0.5)
    assert m.get_attachment("lora_metadata") == metadata and c.patcher.get_attachment("lora_metadata") == metadata
    # upstream's own loader attaches the same (0.3.75's takes no metadata and attaches nothing)
    if "lora_metadata" in inspect.signature(comfy.sd.load_lora_for_models).parameters:
        sd, core_meta = comfy.utils.load_torch_file(str(written.path), safe_load=True, return_metadata=True)
        cm, cc = comfy.sd.load_lora_for_models(model, clip, sd, 0.8, 0.5, lora_metadata=core_meta)
        assert cm.get_attachment("lora_metadata") == metadata == cc.patcher.get_attachment("lora_metadata")


@pytest.mark.parametrize("order", ["core-then-loom", "loom-then-core"])
def test_core_loader_and_loom_loader_add_up(order, pack, model, sd15):
    clip = sd15[1]
    if order == "core-then-loom":
        m, c = core(model, clip, SD15_LORA, 0.7, 0.4)
        m, c = loom(pack, m, c, SD15_LORA_B, 1.2, 0.9)
    else:
        m, c = loom(pack, model, clip, SD15_LORA_B, 1.2, 0.9)
        m, c = core(m, c, SD15_LORA, 0.7, 0.4)
    rm, rc = core(*core(model, clip, SD15_LORA, 0.7, 0.4), SD15_LORA_B, 1.2, 0.9)
    for got, want in ((patched_state(m), patched_state(rm)), (patched_state(c.patcher), patched_state(rc.patcher))):
        changed = 0
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-5, msg=key)
            changed += not torch.equal(
                want[key], sd15[0].model.state_dict().get(key, clip.patcher.model.state_dict().get(key))
            )
        assert changed > 40
    # and switching between them and the base keeps working (the merge follows whichever clone is loaded)
    assert_matches(sample(m), sample(rm))


def test_core_stack_node_and_loom(pack, model):
    """Upstream's "Load LoRA (Model)" (comfy_extras/nodes_lora_stack.py, 0.3x): rows of load_lora_for_models."""
    stack_nodes = pytest.importorskip("comfy_extras.nodes_lora_stack", reason="this ComfyUI has no LoadLoraModel node")
    rows = {"lora_0": {"lora_name": SD15_LORA, "strength": 0.6}}
    m = stack_nodes.LoadLoraModel.execute(model=loom(pack, model, None, SD15_LORA_B, 0.8)[0], loras=list(rows.values()))
    m = m.result[0] if hasattr(m, "result") else m[0]
    reference = core(core(model, None, SD15_LORA_B, 0.8)[0], None, SD15_LORA, 0.6)[0]
    assert_matches(sample(m), sample(reference))


@pytest.mark.skipif(not HAS_BYPASS, reason="this ComfyUI has no bypass LoRA loader (upstream 0.2x+)")
@pytest.mark.parametrize("order", ["bypass-then-loom", "loom-then-bypass", "bypass-and-loom-scheduled"])
def test_core_bypass_loader_and_loom_add_up(order, pack, model):
    from lora_loom.lora_math.schedule import parse_schedule

    def bypass(m, name, s):
        return comfy.sd.load_bypass_lora_for_models(m, None, _sd(name), s, 0)[0]

    if order == "bypass-then-loom":
        m = loom(pack, bypass(model, SD15_LORA, 0.7), None, SD15_LORA_B, 1.2)[0]
    elif order == "loom-then-bypass":
        m = bypass(loom(pack, model, None, SD15_LORA_B, 1.2)[0], SD15_LORA, 0.7)
    else:
        m = loom(pack, bypass(model, SD15_LORA, 0.7), None, SD15_LORA_B, 1.0, schedule=parse_schedule(RAMP))[0]
    if order.endswith("scheduled"):
        want = reference(pack, model, static=[(SD15_LORA, 0.7)], scheduled=[(SD15_LORA_B, parse_schedule(RAMP), 1.0)])()
    else:
        want = sample(core(core(model, None, SD15_LORA, 0.7)[0], None, SD15_LORA_B, 1.2)[0])
    first = sample(m)
    assert_matches(first, want)
    base = sample(model)
    assert_matches(sample(m), want)  # again, after the base model took over in between: nothing piles up or drops
    assert (first - base).abs().max() > 1000 * 2e-5 * want.abs().max()


@pytest.mark.parametrize("scheduled", [False, True], ids=["loom-static", "loom-scheduled"])
def test_core_hooks_and_loom_add_up(scheduled, pack, model):
    import comfy.hooks
    from lora_loom.lora_math.schedule import parse_schedule

    hooks = comfy.hooks.create_hook_lora(lora=_sd(SD15_LORA), strength_model=0.7, strength_clip=0.0)
    positive, negative = conds()
    positive, negative = comfy.hooks.set_conds_props(
        conds=[positive, negative], strength=1.0, set_cond_area="default", hooks=hooks
    )
    if scheduled:
        m = loom(pack, model, None, SD15_LORA_B, 1.0, schedule=parse_schedule(RAMP))[0]
    else:
        m = loom(pack, model, None, SD15_LORA_B, 1.2)[0]
    got = sample(m, positive=positive, negative=negative)
    if scheduled:
        want = reference(pack, model, static=[(SD15_LORA, 0.7)], scheduled=[(SD15_LORA_B, parse_schedule(RAMP), 1.0)])()
    else:
        want = sample(core(core(model, None, SD15_LORA, 0.7)[0], None, SD15_LORA_B, 1.2)[0])
    assert_matches(got, want)
