"""Loom LoRA Stack on the real tiny SD1.5 model: stacking adds up, block weights, off rows, LORA_STACK in and out."""

import copy
import json
import logging
import pickle

import pytest
import torch
from conftest import SD15_LORA, patched_state

ATOL = 2e-3  # fp16 weights, fp32 math


def rows(*entries) -> str:
    return json.dumps(list(entries))


def run(pack, model, clip, rows_json="[]", lora_stack=None):
    return pack.nodes.load.stack.LoomLoraStack.execute(
        model=model, clip=clip, rows=rows_json, lora_stack=lora_stack
    ).result


def loader(pack, model, clip, strength_model, strength_clip):
    out = pack.nodes.load.loader.LoomLoraLoader.execute(
        model=model, clip=clip, lora_name=SD15_LORA, strength_model=strength_model, strength_clip=strength_clip
    )
    return out.result


def assert_close_states(sa: dict, sb: dict):
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=ATOL, msg=k)


def assert_same_weights(a, b):
    """Two patchers load to the same weights (within fp16 rounding)."""
    assert_close_states(patched_state(a), patched_state(b))


def test_same_lora_twice_equals_once_at_the_sum(pack, sd15):
    model, clip, _ = sd15
    original = {k: v.clone() for k, v in model.model.state_dict().items()}
    stacked_model, stacked_clip, stack, report = run(
        pack,
        model,
        clip,
        rows({"name": SD15_LORA, "model": 0.3, "clip": 0.2}, {"name": SD15_LORA, "model": 0.5, "clip": 0.6}),
    )
    once_model, once_clip, _ = loader(pack, model, clip, 0.8, 0.8)
    ours, once = patched_state(stacked_model), patched_state(once_model)
    assert sum(not torch.equal(ours[k], original[k]) for k in ours) == 56  # q/k/v/out of 14 attention modules
    assert_close_states(ours, once)
    assert_close_states(patched_state(stacked_clip.patcher), patched_state(once_clip.patcher))
    assert report.splitlines() == [
        f"1. {SD15_LORA} (model 0.3, clip 0.2): 104/104 modules matched, 104 weights patched",
        f"2. {SD15_LORA} (model 0.5, clip 0.6): 104/104 modules matched, 104 weights patched",
    ]
    assert stack == [(SD15_LORA, 0.3, 0.2), (SD15_LORA, 0.5, 0.6)]
    # the input model is untouched
    assert all(torch.equal(v, original[k]) for k, v in model.model.state_dict().items())


def _changed_blocks(patcher, original) -> set[str]:
    state = patched_state(patcher)
    return {k.split(".")[1] for k in state if not torch.equal(state[k], original[k])}


@pytest.mark.parametrize(
    ("blocks", "changed", "clip_changed"),
    [
        ("IN:0, OUT:0", {"middle_block"}, True),
        ("OUTALL", {"output_blocks"}, None),
        ("*:0, MID:1", {"middle_block"}, False),
        ("IN01:0, IN03:0, OUT:0", {"middle_block"}, None),
    ],
)
def test_block_weights_leave_zeroed_blocks_untouched(pack, sd15, blocks, changed, clip_changed):
    """clip_changed None: run without a CLIP (the text encoder side is checked in the other cases)."""
    model, clip, _ = sd15
    clip = None if clip_changed is None else clip
    original = {k: v.clone() for k, v in model.model.state_dict().items()}
    new_model, new_clip, stack, report = run(
        pack, model, clip, rows({"name": SD15_LORA, "model": 1.0, "blocks": blocks})
    )
    assert _changed_blocks(new_model, original) == changed
    if clip is not None:
        clip_original = clip.patcher.model.state_dict()
        clip_state = patched_state(new_clip.patcher)
        assert any(not torch.equal(clip_state[k], clip_original[k]) for k in clip_state) == clip_changed
    assert "warning" not in report and stack[0].blocks == blocks


def test_block_weight_scales_match_strength(pack, sd15):
    """MID at 0.5 under strength 0.8 gives the middle block weights of strength 0.4."""
    model, clip, _ = sd15
    weighted, _, _, _ = run(pack, model, None, rows({"name": SD15_LORA, "model": 0.8, "blocks": "MID:0.5, *:0"}))
    plain, _, _, _ = run(pack, model, None, rows({"name": SD15_LORA, "model": 0.4}))
    a, b = patched_state(weighted), patched_state(plain)
    mid = [k for k in a if k.startswith("diffusion_model.middle_block.")]
    assert mid and all(torch.allclose(a[k], b[k], rtol=0, atol=ATOL) for k in mid)
    original = model.model.state_dict()
    assert all(torch.equal(a[k], original[k]) for k in a if not k.startswith("diffusion_model.middle_block."))


def test_off_rows_are_never_opened(pack, sd15, monkeypatch):
    model, _, _ = sd15
    opened = []
    real_load = pack.nodes.files.lora_files.load

    def spy(name, *args, **kwargs):
        opened.append(name)
        return real_load(name, *args, **kwargs)

    monkeypatch.setattr(pack.nodes.files.lora_files, "load", spy)
    text = rows(
        {"name": "does-not-exist.safetensors", "on": False, "blocks": "not even valid"},
        {"name": SD15_LORA, "model": 0.7},
    )
    assert pack.nodes.load.stack.LoomLoraStack.validate_inputs(rows=text) is True
    new_model, _, stack, report = run(pack, model, None, text)
    assert opened == [SD15_LORA]
    assert stack == [(SD15_LORA, 0.7, 0.7)] and report.startswith(f"1. {SD15_LORA} (model 0.7, clip 0.7)")
    once_model, _, _ = loader(pack, model, None, 0.7, 0.7)
    assert_same_weights(new_model, once_model)


@pytest.mark.parametrize("with_clip", [True, False])
def test_nothing_enabled_passes_model_and_clip_through(pack, sd15, with_clip):
    model, clip, _ = sd15
    clip = clip if with_clip else None
    text = rows({"name": "gone.safetensors", "on": False}, {"name": SD15_LORA, "on": False})
    new_model, new_clip, stack, report = run(pack, model, clip, text)
    assert new_model is model and new_clip is clip
    assert stack == [] and report == "nothing enabled: model and clip unchanged"
    assert run(pack, model, clip, "")[0] is model


def test_lora_stack_in_and_out_round_trip(pack, sd15):
    model, clip, _ = sd15
    incoming = [(SD15_LORA, 0.3, 0.2)]
    first_model, first_clip, stack, _ = run(pack, model, clip, "[]", incoming)
    ref_model, ref_clip, _ = loader(pack, model, clip, 0.3, 0.2)
    assert_same_weights(first_model, ref_model)
    assert_same_weights(first_clip.patcher, ref_clip.patcher)
    assert stack == incoming and all(type(e) is not tuple and isinstance(e, tuple) and len(e) == 3 for e in stack)
    name, strength_model, strength_clip = stack[0]  # what Efficiency / Comfyroll / Easy-Use do with it
    assert (name, strength_model, strength_clip) == incoming[0]

    # A stack with block weights, through another pack's stacker (which extends its own list), into a new Loom stack.
    _, _, weighted, _ = run(pack, model, clip, rows({"name": SD15_LORA, "model": 0.9, "blocks": "IN:0, OUT:0"}))
    other_pack = [("None", 1.0, 1.0)]
    other_pack.extend(weighted)
    again_model, _, again_stack, report = run(pack, model, clip, "[]", other_pack)
    direct_model, _, _, _ = run(pack, model, clip, rows({"name": SD15_LORA, "model": 0.9, "blocks": "IN:0, OUT:0"}))
    assert_same_weights(again_model, direct_model)
    assert again_stack[0].blocks == "IN:0, OUT:0" and "blocks 'IN:0, OUT:0'" in report

    # Survives pickling and copying, and stays a 3-item list in JSON.
    for clone in (pickle.loads(pickle.dumps(weighted)), copy.deepcopy(weighted)):
        assert clone == weighted and clone[0].blocks == "IN:0, OUT:0"
    assert json.loads(json.dumps(weighted)) == [[SD15_LORA, 0.9, 0.9]]


def test_lora_stack_variants_other_packs_send(pack, sd15):
    model, clip, _ = sd15
    variants = [
        ("None", 1.0, 1.0),  # an empty Comfyroll / Easy-Use slot
        (SD15_LORA, 0.1, 0.05, "trigger words"),  # 4-tuples with extras
        [SD15_LORA, 0.1],  # (name, weight)
        {"lora_name": SD15_LORA, "model_strength": 0.1, "clip_strength": 0.15},
        {"name": SD15_LORA, "strength": 5.0, "enabled": False},
    ]
    new_model, _, stack, _ = run(pack, model, clip, "[]", variants)
    assert stack == [(SD15_LORA, 0.1, 0.05), (SD15_LORA, 0.1, 0.1), (SD15_LORA, 0.1, 0.15)]  # clip sums to 0.3 too
    ref_model, _, _ = loader(pack, model, None, 0.3, 0.3)
    assert_same_weights(new_model, ref_model)


def test_incoming_stack_comes_first(pack, sd15):
    model, clip, _ = sd15
    _, _, stack, report = run(pack, model, clip, rows({"name": SD15_LORA, "model": 0.5}), [(SD15_LORA, 0.25, 0.25)])
    assert stack == [(SD15_LORA, 0.25, 0.25), (SD15_LORA, 0.5, 0.5)]
    assert report.splitlines()[0].startswith(f"1. {SD15_LORA} (model 0.25")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[{"name": "a.safetensors",}]', "rows: not valid JSON at line 1 column 27 (character 27)"),
        ('{"name": "a.safetensors"}', "rows: expected a JSON list of rows"),
        ('[{"name": "../secret.safetensors"}]', "rows: row 1: '../secret.safetensors' is not a LoRA name"),
        ('[{"name": "/etc/passwd"}]', "rows: row 1: '/etc/passwd' is not a LoRA name"),
        ('[{"name": "C:\\\\loras\\\\x.safetensors"}]', "is not a LoRA name"),
        (rows({"name": SD15_LORA}, {"name": "sub/../../x"}), "rows: row 2: 'sub/../../x' is not a LoRA name"),
        (rows({"name": SD15_LORA, "strength": 1}), "rows: row 1: unknown key 'strength'"),
        (rows({"name": SD15_LORA, "model": "1"}), "rows: row 1: 'model' must be a finite number"),
        (rows({"name": SD15_LORA, "on": "yes"}), "rows: row 1: 'on' must be true or false"),
        (rows({"name": ""}), "rows: row 1: 'name' is empty"),
        (rows({"name": "missing.safetensors"}), "rows: row 1: LoRA 'missing.safetensors' is not in any `loras` folder"),
        (rows({"name": SD15_LORA, "blocks": "IN04:x"}), "rows: row 1 blocks: entry 1 'IN04:x' (at character 1)"),
    ],
)
def test_bad_rows_fail_validation_and_execution_naming_rows(pack, sd15, text, message):
    model, clip, _ = sd15
    error = pack.nodes.load.stack.LoomLoraStack.validate_inputs(rows=text)
    assert isinstance(error, str) and message in error
    with pytest.raises(ValueError) as err:
        run(pack, model, clip, text)
    assert message in str(err.value)


def test_linked_rows_are_checked_when_the_node_runs(pack):
    assert pack.nodes.load.stack.LoomLoraStack.validate_inputs(rows=None) is True


def test_wrong_architecture_vector_names_the_row_and_lengths(pack, sd15):
    model, clip, _ = sd15
    text = rows({"name": SD15_LORA, "blocks": ",".join(["1"] * 12)})
    assert pack.nodes.load.stack.LoomLoraStack.validate_inputs(rows=text) is True  # the model is not known yet
    with pytest.raises(ValueError, match=r"^rows: row 1 blocks: 12 values is the SDXL-12 block layout.*give 17 "):
        run(pack, model, clip, text)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (("../x.safetensors", 1.0, 1.0), "lora_stack: entry 1: '../x.safetensors' is not a LoRA name"),
        (("nope.safetensors", 1.0, 1.0), "lora_stack: entry 1: LoRA 'nope.safetensors' is not in any `loras` folder"),
        ((SD15_LORA, "strong", 1.0), "lora_stack: entry 1: strength 'strong' is not a finite number"),
        (42, "lora_stack: entry 1: expected a (name, model_weight, clip_weight) tuple, found 42"),
    ],
)
def test_bad_lora_stack_entries_name_the_entry(pack, sd15, entry, message):
    model, clip, _ = sd15
    with pytest.raises(ValueError) as err:
        run(pack, model, clip, "[]", [entry])
    assert message in str(err.value)


def test_block_warnings_are_reported_and_logged_once(pack, sd15, caplog):
    model, clip, _ = sd15
    vector = "1,0,0,1,1,1,1,1,1,1,1,1,1,1,1,1,1"  # SD1 17: IN02 = 0, but the tiny model has no IN02
    text = rows({"name": SD15_LORA, "blocks": vector}, {"name": SD15_LORA, "model": 0.5, "blocks": "IN04:0"})
    with caplog.at_level(logging.WARNING, logger="lora_loom"):
        _, _, _, report = run(pack, model, clip, text)
    warnings = [r for r in caplog.records if r.name == "lora_loom" and "stack:" in r.getMessage()]
    assert len(warnings) == 1
    lines = [line for line in report.splitlines() if line.startswith("warning: ")]
    assert len(lines) == 3
    assert "rows: row 1 blocks: the SD1-17 layout has no entry for IN03, OUT00, OUT01, OUT02" in lines[0]
    assert "rows: row 1 blocks: IN02=0 set, but this LoRA has no weights in those blocks" in lines[1]
    assert "rows: row 2 blocks: IN04 names no block this LoRA patches" in lines[2]


def test_lora_for_another_model_names_the_row(pack, sd15, tmp_path, monkeypatch):
    """patching reports a file that matches nothing; the stack says which row it is."""
    model, clip, _ = sd15
    parsed = pack.nodes.files.lora_files.load(SD15_LORA)
    other = type(parsed)(parsed.format, {"lora_unet_nowhere_to_q": next(iter(parsed.modules.values()))}, {})
    real_load = pack.nodes.files.lora_files.load
    monkeypatch.setattr(
        pack.nodes.files.lora_files,
        "load",
        lambda name, where="lora_name": other if name == "x.safetensors" else real_load(name, where),
    )
    with pytest.raises(ValueError, match=r"^rows: row 2: nothing in 'x.safetensors'"):
        run(pack, model, clip, rows({"name": SD15_LORA}, {"name": "x.safetensors"}))


def test_schema_is_valid_and_registered(pack):
    """What ComfyUI checks when it loads the pack: unique ids, the outputs' socket names and types."""
    node = pack.nodes.load.stack.LoomLoraStack
    schema = node.GET_SCHEMA()
    assert node in pack.nodes.NODES
    assert [i.id for i in schema.inputs] == ["model", "clip", "rows", "lora_stack"]
    assert list(node.RETURN_TYPES) == ["MODEL", "CLIP", "LORA_STACK", "STRING"]
    assert list(node.RETURN_NAMES) == ["MODEL", "CLIP", "LORA_STACK", "report"]
