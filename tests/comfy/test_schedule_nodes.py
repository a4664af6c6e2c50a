"""Schedules through the nodes: stack rows, the loader's schedule input, and Loom Schedule LoRA on a LORA_STACK."""

import json

import pytest
from conftest import SD15_LORA

SD15_LORA_B = "loom-tiny-sd15-lora-b.safetensors"


def stack(pack, model, clip, rows, lora_stack=None):
    node = pack.nodes.load.stack.LoomLoraStack
    return node.execute(model=model, clip=clip, rows=json.dumps(rows), lora_stack=lora_stack).result


def bypass_plan(patcher):
    return patcher.get_attachment("lora_loom_schedule")


def test_rows_mix_static_and_scheduled_loras(pack, sd15):
    model, clip, _ = sd15
    rows = [
        {"name": SD15_LORA, "model": 0.6},
        {"name": SD15_LORA_B, "model": 1.2, "clip": 0.4, "schedule": "IN: fade_out | *: 0:0.2, 1:1"},
    ]
    new_model, new_clip, out_stack, report = stack(pack, model, clip, rows)
    plan = bypass_plan(new_model)
    assert len(plan.channels) == 2  # IN's schedule and everyone else's
    assert {t.adapter for terms in plan.terms.values() for t in terms}  # B runs as a bypass...
    merged = new_model.get_attachment("lora_loom")
    assert all(len(terms) == 1 for terms in merged.terms.values())  # ...A alone is merged
    assert len(new_clip.patcher.patches) > 0  # CLIP strength stays static
    assert out_stack[1].schedule == "IN: fade_out | *: 0:0.2, 1:1" and out_stack[0].schedule == ""
    assert "model strength scheduled (IN: 0:1, 1:0 | *: 0:0.2, 1:1)" in report.splitlines()[1]


def test_validation_names_the_rows_schedule(pack):
    node = pack.nodes.load.stack.LoomLoraStack
    bad = [{"name": SD15_LORA}, {"name": SD15_LORA, "schedule": "0:1, 1.5:0"}]
    message = node.validate_inputs(rows=json.dumps(bad))
    assert message.startswith("rows: row 2 schedule: entry 2 '1.5:0' (at character 6)"), message
    assert "1.5" in message and "0..1" in message
    assert node.validate_inputs(rows=json.dumps([{"name": SD15_LORA, "schedule": 3}])).startswith(
        "rows: row 1: 'schedule' must be a string"
    )
    assert node.validate_inputs(rows=json.dumps([{"name": SD15_LORA, "schedule": "late_only"}])) is True


def test_loader_takes_a_schedule(pack, sd15):
    from lora_loom.lora_math.schedule import parse_schedule

    model = sd15[0]
    node = pack.nodes.load.loader.LoomLoraLoader
    sched = parse_schedule("0:1, 1:0")
    out, _, report = node.execute(
        model=model, clip=None, lora_name=SD15_LORA, strength_model=0.5, strength_clip=0, schedule=sched
    ).result
    plan = bypass_plan(out)
    assert [c.schedule for c in plan.channels] == [sched]
    assert {t.multiplier for terms in plan.terms.values() for t in terms} == {0.5}
    assert out.get_attachment("lora_loom") is None and "scheduled (0:1, 1:0)" in report


def test_schedule_lora_node_attaches_to_the_named_entry(pack, sd15):
    from lora_loom.lora_math.schedule import parse_schedule

    model, clip, _ = sd15
    node = pack.nodes.schedule.schedule_lora.LoomScheduleLora
    incoming = [(SD15_LORA, 0.7, 0.7), (SD15_LORA_B, 1.0, 1.0)]  # as Efficiency / Comfyroll stackers write it
    (out,) = node.execute(lora_stack=incoming, lora_name=SD15_LORA_B, schedule=parse_schedule("@0:0 hold, @3:1")).result
    assert [tuple(e) for e in out] == [(SD15_LORA, 0.7, 0.7), (SD15_LORA_B, 1.0, 1.0)]
    assert (out[0].schedule, out[1].schedule) == ("", "hold: @0:0, @3:1")
    new_model, *_ = stack(pack, model, clip, [], lora_stack=out)
    assert len(bypass_plan(new_model).channels) == 1
    with pytest.raises(ValueError, match=r"lora_name: 'other.safetensors' is not in the incoming lora_stack \(it has"):
        node.execute(lora_stack=incoming, lora_name="other.safetensors", schedule=parse_schedule("1"))
    with pytest.raises(ValueError, match="schedule: expected a LORA_SCHEDULE"):
        node.execute(lora_stack=incoming, lora_name=SD15_LORA, schedule="0:1")
