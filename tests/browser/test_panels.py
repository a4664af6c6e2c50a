"""The pack's own widgets, driven by clicks: the stack's row editor and the LoRA info panel."""

import json
from pathlib import Path

from conftest import PEFT_LORA
from markup_lora import XSS_COMMENT, XSS_LORA, XSS_TITLE, XSS_TRIGGER
from writer_headers import PEFT_FILE_HEADER, PEFT_TRIGGER

REPO = Path(__file__).resolve().parents[2]
STACK_WORKFLOW = REPO / "example_workflows" / "lora_stack_sd15.json"
LORA_B = "loom-tiny-sd15-lora-b.safetensors"


def open_stack(ui):
    """The stack example in a new tab, zoomed to its Loom LoRA Stack node; returns (node id, editor locator)."""
    ui.load_workflow(json.loads(STACK_WORKFLOW.read_text()), STACK_WORKFLOW.stem)
    stack = ui.node_id("LoomLoraStack")
    ui.show_node(stack)
    editor = ui.page.get_by_test_id("loom-stack-editor")
    editor.wait_for()
    return stack, editor


def shown_rows(editor) -> list[tuple[str, bool]]:
    """(name, on) of each row the editor shows."""
    rows = editor.get_by_test_id("loom-stack-row")
    return [(r["name"], r["on"] == "true") for r in rows.evaluate_all("els => els.map(e => ({...e.dataset}))")]


def saved_rows(workflow: dict, node_id: int) -> list[tuple[str, bool]]:
    node = next(n for n in workflow["nodes"] if n["id"] == node_id)
    return [(r["name"], r.get("on", True)) for r in json.loads(node["widgets_values"][0])]


def add_row(ui, editor, search: str, name: str) -> None:
    """+ add LoRA, type in the picker's search, click the file."""
    editor.get_by_test_id("loom-stack-add").click()
    picker = ui.page.get_by_test_id("loom-lora-picker")
    picker.get_by_test_id("loom-picker-filter").fill(search)
    picker.get_by_test_id("loom-picker-item").filter(has_text=name).click()


def test_stack_editor_adds_toggles_and_reorders_rows_into_the_saved_workflow(ui):
    stack, editor = open_stack(ui)
    original = saved_rows(json.loads(STACK_WORKFLOW.read_text()), stack)
    assert shown_rows(editor) == original

    add_row(ui, editor, "lora-b", LORA_B)  # a 4th row, at the end
    rows = editor.get_by_test_id("loom-stack-row")
    rows.nth(0).get_by_test_id("loom-row-on").click()  # first row off
    rows.nth(3).get_by_test_id("loom-row-up").click()  # the new row one up
    expected = [(original[0][0], not original[0][1]), original[1], (LORA_B, True), original[2]]
    assert shown_rows(editor) == expected

    saved = ui.export_workflow()  # Workflow > Export: the JSON a user saves and shares
    assert saved_rows(saved, stack) == expected
    prompt = ui.page.evaluate("async () => (await app.graphToPrompt()).output")  # what Run would queue
    queued = json.loads(prompt[str(stack)]["inputs"]["rows"])
    assert [(r["name"], r.get("on", True)) for r in queued] == expected

    ui.load_workflow(saved, "stack_round_trip")  # and the saved file opens to the same rows
    ui.show_node(stack)
    editor = ui.page.get_by_test_id("loom-stack-editor")
    assert shown_rows(editor) == expected


def open_info(ui, search: str, name: str):
    """A new row for ``name`` in the stack example, its (i) clicked; returns the info panel once it has an answer."""
    _, editor = open_stack(ui)
    add_row(ui, editor, search, name)
    row = editor.locator(f'[data-testid="loom-stack-row"][data-name="{name}"]')
    row.get_by_test_id("loom-row-info").click()
    panel = ui.page.get_by_test_id("loom-lora-info")
    ui.page.wait_for_function(
        "() => ['ready', 'error'].includes(document.querySelector('[data-testid=loom-lora-info]')?.dataset.state)"
    )
    assert panel.get_attribute("data-state") == "ready", panel.inner_text()
    return panel


def test_info_panel_shows_metadata_markup_as_text(ui):
    requested = []
    ui.page.on("request", lambda r: requested.append(r.url))
    panel = open_info(ui, "xss", XSS_LORA)
    text = panel.inner_text()
    assert XSS_LORA in text
    assert XSS_COMMENT in text  # the training comment, character for character
    words = panel.get_by_test_id("loom-lora-info-word").all_inner_texts()
    assert XSS_TRIGGER in words and "loomtok" in words, words
    assert XSS_TITLE in text
    assert panel.locator("img, script, b, u").count() == 0  # no element came from the metadata
    ui.page.wait_for_timeout(500)  # an <img src=x> would have been requested and failed by now
    assert ui.page.evaluate("() => typeof window.__loom_xss") == "undefined"
    assert not [u for u in requested if u.endswith("/x")], "the metadata's <img src=x> was loaded"


def test_info_panel_shows_a_diffusers_files_header_per_component(ui):
    """A diffusers-PEFT file: who wrote it, its ``lora_adapter_metadata`` as one section per component (the rows Loom
    LoRA Info prints), the trigger phrase as a chip, the other keys, and the raw header behind a disclosure."""
    panel = open_info(ui, "peft-metadata", PEFT_LORA)
    assert panel.get_by_test_id("loom-lora-info-format").inner_text() == "diffusers-peft"
    assert panel.get_by_test_id("loom-lora-info-writer").inner_text() == "diffusers / PEFT"
    assert panel.get_by_test_id("loom-lora-info-word").all_inner_texts() == [PEFT_TRIGGER]
    titles = panel.get_by_test_id("loom-lora-info-section").all_inner_texts()
    assert titles == ["about", "adapter config (text_encoder)", "adapter config (unet)", "other keys"]

    def shown(section: str) -> list[tuple[str, str]]:
        cells = panel.locator(f'dl[data-section="{section}"] > *').all_inner_texts()
        return list(zip(cells[::2], cells[1::2], strict=True))

    assert shown("adapter config (text_encoder)") == [
        ("r", "4"),
        ("lora_alpha", "2.0"),
        ("target_modules", "q_proj, v_proj"),
    ]
    unet = dict(shown("adapter config (unet)"))
    assert (unet["r"], unet["lora_alpha"], unet["use_dora"]) == ("4", "8.0", "false")
    assert "megatron_config" in unet["not set"]
    assert dict(shown("about"))["title"] == PEFT_FILE_HEADER["modelspec.title"]  # markup in a title stays text
    assert panel.locator("i").count() == 0
    assert dict(shown("other keys")) == {"format": "pt"}
    hover = panel.locator('dl[data-section="adapter config (unet)"] > dt').first.get_attribute("title")
    assert hover == "lora_adapter_metadata"  # the header key a row comes from
    raw = panel.get_by_test_id("loom-lora-info-metadata")
    assert raw.locator("summary").inner_text() == f"raw header ({len(PEFT_FILE_HEADER)} keys)"
