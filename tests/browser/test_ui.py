"""The pack in ComfyUI's real web UI: its scripts load cleanly, its examples open from the templates, a run shows its image."""

import json
import re
import uuid
from collections import Counter
from pathlib import Path

import pytest
from loom_browser import pack_folder

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
PACK = pack_folder()  # ComfyUI serves the pack's web/ and example_workflows/ under its folder name in custom_nodes
OUR_SCRIPTS = f"/extensions/{PACK}/"
# How an error of ours shows: raised in or logged from one of our scripts, or caught by ComfyUI around a hook of ours.
OURS = (OUR_SCRIPTS, "extension 'lora_loom.")


def declared_extensions() -> set[str]:
    """Extension names the pack's scripts register (app.registerExtension({name: "..."}))."""
    names = set()
    for path in (REPO / "web").glob("*.js"):
        names |= set(re.findall(r'registerExtension\(\s*\{\s*name:\s*"([^"]+)"', path.read_text()))
    return names


def report(ours, others) -> str:
    lines = [f"{len(ours)} console/page error(s) from the pack's scripts ({OUR_SCRIPTS}):"] + [f"  {m}" for m in ours]
    if others:
        lines += [f"(and {len(others)} from elsewhere, not ours:)"] + [f"  {m}" for m in others]
    return "\n".join(lines)


def test_pack_scripts_load_without_console_errors(ui, server):
    scripts = [p for p in server.get("/extensions") if p.startswith(OUR_SCRIPTS)]
    assert scripts, f"the server lists none of the pack's scripts under {OUR_SCRIPTS}"
    declared = declared_extensions()
    assert declared, "no app.registerExtension in web/*.js"
    registered = set(ui.page.evaluate("() => app.extensions.map((e) => e.name)"))
    assert declared <= registered, f"extensions declared but not registered: {sorted(declared - registered)}"

    # Exercise every hook: each Loom node created on an empty graph, then every example workflow loaded, drawn at
    # 100 % so the DOM widgets are placed and drawn.
    loom_types = ui.page.evaluate(
        "() => Object.keys(LiteGraph.registered_node_types).filter((t) => t.startsWith('Loom'))"
    )
    assert loom_types, "no Loom node types in the UI"
    ui.page.evaluate(
        """(types) => {
            app.graph.clear();
            types.forEach((type, i) => {
                const node = LiteGraph.createNode(type);
                node.pos = [40 + 480 * (i % 4), 40 + 420 * Math.floor(i / 4)];
                app.graph.add(node);
            });
        }""",
        loom_types,
    )
    ui.settle(5)
    for path in WORKFLOWS:
        ui.load_workflow(json.loads(path.read_text()), path.stem)
        ui.page.evaluate("() => { app.canvas.ds.scale = 1; }")
        ui.settle(5)

    failed = [r for r in ui.failed_requests if OUR_SCRIPTS in r]
    assert not failed, f"requests for the pack's scripts failed: {failed}"
    ours = ui.errors_mentioning(*OURS)
    others = [m for m in ui.errors() if m not in ours]
    assert not ours, report(ours, others)


def test_templates_dialog_lists_every_example(ui, server):
    stems = sorted(p.stem for p in WORKFLOWS)
    assert sorted(server.get("/api/workflow_templates").get(PACK, [])) == stems
    ui.command("Comfy.BrowseTemplates")
    dialog = ui.page.get_by_role("dialog")
    dialog.get_by_role("button", name=PACK, exact=True).click()
    cards = dialog.locator('[data-testid^="template-workflow-"]')
    cards.first.wait_for()
    shown = sorted(
        t.removeprefix("template-workflow-") for t in cards.evaluate_all("els => els.map(e => e.dataset.testid)")
    )
    assert shown == stems


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_opens_from_the_templates(shared_ui, path):
    ui = shared_ui
    workflow = json.loads(path.read_text())
    ui.open_template(PACK, path.stem)
    graph = ui.page.evaluate(
        """() => ({
            types: app.graph.nodes.map((n) => n.type),
            unknown: app.graph.nodes.filter((n) => !(n.type in LiteGraph.registered_node_types)).map((n) => n.type),
            links: app.graph.serialize().links.length,
        })"""
    )
    assert Counter(graph["types"]) == Counter(n["type"] for n in workflow["nodes"])
    assert graph["unknown"] == [], "node types the UI does not know"
    assert graph["links"] == len(workflow["links"])
    assert any(t.startswith("Loom") for t in graph["types"])
    ours = ui.errors_mentioning(*OURS)
    assert not ours, report(ours, [])


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_widget_values_read_back_unchanged(shared_ui, path):
    """The UI puts each saved value into the widget it was saved from: loaded and saved again, nothing changes."""
    ui = shared_ui
    workflow = json.loads(path.read_text())
    ui.load_workflow(workflow, f"{path.stem} (read back)")  # a new tab, not the one opened from the templates
    saved = {n["id"]: n.get("widgets_values") for n in ui.page.evaluate("() => app.graph.serialize().nodes")}
    changed = [
        f"node {n['id']} ({n['type']}):\n  file: {n.get('widgets_values')}\n  UI:   {saved.get(n['id'])}"
        for n in workflow["nodes"]
        if saved.get(n["id"]) != n.get("widgets_values")
    ]
    assert not changed, "widget values the UI reads differently from the file:\n" + "\n".join(changed)


def test_queued_workflow_shows_its_image(ui):
    path = REPO / "example_workflows" / "lora_stack_sd15.json"
    ui.load_workflow(json.loads(path.read_text()), path.stem)
    save = ui.node_id("SaveImage")
    prefix = f"loom_browser/{uuid.uuid4().hex[:8]}"  # a new file name: this run's image, not a cached one
    ui.set_widget(save, "filename_prefix", prefix)
    width = ui.page.evaluate(
        "() => app.graph.nodes.find((n) => n.type === 'EmptyLatentImage').widgets.find((w) => w.name === 'width').value"
    )
    ui.fit_graph()  # the UI loads a node's images while drawing it: keep the node on screen
    ui.queue_and_wait(timeout_s=300)
    images = ui.wait_for_images(save, timeout_s=60)
    assert len(images) == 1, images
    assert prefix.split("/")[1] in images[0]["src"], images
    assert images[0]["width"] == width and images[0]["height"] > 0, images
