"""The LORA_STACK type and its readers (``lora_math.stack``), without ComfyUI: rows JSON, other packs' stacks, names."""

import copy
import json
import pickle

import pytest

from lora_math.stack import ROW_KEYS, LoraStackEntry, check_name, parse_rows, read_lora_stack


def test_entry_is_a_plain_three_tuple_that_carries_blocks_and_schedule():
    entry = LoraStackEntry("a.safetensors", 0.8, 1, "OUT:1", "0:1, 1:0")
    assert entry == ("a.safetensors", 0.8, 1.0) and len(entry) == 3 and isinstance(entry[2], float)
    name, model, clip = entry
    assert (name, model, clip) == ("a.safetensors", 0.8, 1.0)
    assert json.loads(json.dumps(entry)) == ["a.safetensors", 0.8, 1.0]
    for again in (copy.deepcopy(entry), pickle.loads(pickle.dumps(entry))):
        assert again == entry and (again.blocks, again.schedule) == ("OUT:1", "0:1, 1:0")


def test_rows_with_defaults_and_off_rows():
    rows = json.dumps([{"name": "a.safetensors"}, {"name": "sub/b.safetensors", "on": False, "model": 0.5}])
    a, b = parse_rows(rows)
    assert (a.name, a.model, a.clip, a.blocks, a.on, a.where, a.schedule) == (
        "a.safetensors", 1.0, 1.0, "", True, "rows: row 1", ""
    )  # fmt: skip
    assert (b.name, b.on, b.model, b.clip) == ("sub/b.safetensors", False, 0.5, 0.5)  # clip follows model
    assert parse_rows("") == [] and parse_rows(None) == [] and parse_rows("[]") == []
    assert ROW_KEYS == ("name", "on", "model", "clip", "blocks", "schedule")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1,", r"^rows: not valid JSON at line 1 column 4 \(character 4\)"),
        ('{"name": "a"}', r"^rows: expected a JSON list of rows .* found an object"),
        ('["a"]', r"^rows: row 1: expected an object .* found a string"),
        ('[{"name": "a", "weight": 1}]', r"^rows: row 1: unknown key 'weight'; a row has name, on"),
        ('[{"name": "a", "on": 1}]', r"^rows: row 1: 'on' must be true or false, found 1"),
        ('[{"name": ""}]', r"^rows: row 1: 'name' is empty; pick a LoRA or turn the row off"),
        ('[{"name": "a", "model": "x"}]', r"^rows: row 1: 'model' must be a finite number, found \"x\""),
        ('[{"name": "a", "clip": true}]', r"^rows: row 1: 'clip' must be a finite number, found true"),
        ('[{"name": "a", "blocks": 1}]', r"^rows: row 1: 'blocks' must be a string, found 1"),
        ('[{"name": "a"}, {"name": "../x"}]', r"^rows: row 2: '\.\./x' is not a LoRA name: it leaves the `loras`"),
    ],
)
def test_bad_rows_name_the_row_and_what_to_fix(text, message):
    with pytest.raises(ValueError, match=message):
        parse_rows(text)


def test_other_packs_stacks_are_read_in_every_shape():
    entry = LoraStackEntry("e.safetensors", 0.3, 0.2, "IN:0", "fade_out")
    stack = [
        ("a.safetensors", 0.5, 0.25),
        ("b.safetensors", 0.7),  # (name, weight): clip follows
        "c.safetensors",
        ("d.safetensors", 1.0, 1.0, "extra", "items"),
        {"lora_name": "f.safetensors", "strength": 0.9, "clip_strength": 0.1, "blocks": "OUT:1"},
        {"name": "off.safetensors", "on": False},
        ("None", 1.0, 1.0),  # an empty slot of a stacker
        entry,
    ]
    items = read_lora_stack(stack)
    assert [(i.name, i.model, i.clip) for i in items] == [
        ("a.safetensors", 0.5, 0.25), ("b.safetensors", 0.7, 0.7), ("c.safetensors", 1.0, 1.0),
        ("d.safetensors", 1.0, 1.0), ("f.safetensors", 0.9, 0.1), ("e.safetensors", 0.3, 0.2),
    ]  # fmt: skip
    assert (items[4].blocks, items[5].blocks, items[5].schedule) == ("OUT:1", "IN:0", "fade_out")
    assert [i.where for i in items][:2] == ["lora_stack: entry 1", "lora_stack: entry 2"]
    assert read_lora_stack(None) == []


@pytest.mark.parametrize(
    ("stack", "message"),
    [
        ("a.safetensors", r"^lora_stack: expected a list of \(name, model_weight, clip_weight\) tuples, found str"),
        ([3.0], r"^lora_stack: entry 1: expected a \(name, model_weight, clip_weight\) tuple, found 3\.0"),
        ([(7, 1.0, 1.0)], r"^lora_stack: entry 1: the LoRA name must be a string, found 7"),
        ([("a", float("nan"), 1.0)], r"^lora_stack: entry 1: strength nan is not a finite number"),
        ([("/etc/passwd", 1.0, 1.0)], r"^lora_stack: entry 1: '/etc/passwd' is not a LoRA name: it is an absolute"),
    ],
)
def test_bad_stacks_name_the_entry(stack, message):
    with pytest.raises(ValueError, match=message):
        read_lora_stack(stack)


@pytest.mark.parametrize("name", ["a.safetensors", "sub/dir/a.safetensors", "sub\\a.safetensors", "a..b.safetensors"])
def test_names_relative_to_a_loras_folder_pass(name):
    assert check_name(name, "lora_name")[-1].endswith(".safetensors")


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "it is empty"),
        ("/etc/passwd", "it is an absolute path"),
        ("C:\\loras\\x.safetensors", "it is an absolute path"),
        ("C:x.safetensors", "it is an absolute path"),  # a drive-relative Windows path
        ("\\\\server\\share\\x.safetensors", "it is an absolute path"),
        ("../x.safetensors", "it leaves the `loras` folder"),
        ("sub\\..\\..\\x.safetensors", "it leaves the `loras` folder"),
    ],
)
def test_one_name_check_for_every_input(name, why):
    with pytest.raises(ValueError, match=rf"^lora_name: .* is not a LoRA name: {why}.*no absolute paths, no '\.\.'"):
        check_name(name, "lora_name")
    with pytest.raises(ValueError, match=r"^filename_prefix: .*; give a name under the `loras` folder$"):
        check_name(name, "filename_prefix", "give a name under the `loras` folder")
