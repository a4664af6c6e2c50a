"""Drive ComfyUI's real web UI in Debian's Chromium with Playwright: the browser tier and the README screenshots.

Chromium comes from the system (`make browser` installs Debian's `chromium` package); Playwright's own browser
download is never used, so every launch names the executable. Each launch gets a fresh, temporary profile
(Playwright passes its own empty --user-data-dir and deletes it on close), and every page gets the same UI settings,
served in place of the user's (nothing is written to the ComfyUI user folder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import bootstrap

# Headless on a closed network: no GPU, no sandbox (CI runs as root), no background calls home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parent.parent


def pack_folder() -> str:
    """The pack's folder name in custom_nodes: ComfyUI serves web/ under /extensions/NAME/ and example_workflows/ as
    the templates of NAME. bootstrap.py links the repo as `lora-loom` unless it was cloned into custom_nodes."""
    return REPO.name if REPO.parent.name == "custom_nodes" else "lora-loom"


# Served as the user's settings (merged over what the server has): no first-run tutorial, no minimap or canvas
# statistics over the graph, exports without a file-name prompt, no workflow tabs restored from an earlier page.
UI_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Minimap.Visible": False,
    "Comfy.Graph.CanvasInfo": False,
    "Comfy.PromptFilename": False,
    "Comfy.Workflow.Persist": False,
    "Comfy.Notification.ShowVersionUpdates": False,
}
# For screenshots: draw widgets, text and DOM widgets at the zoom a whole workflow fits in (not the boxes LiteGraph
# draws below 60 %).
DETAILED_SETTINGS = {
    "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0.1,
    "LiteGraph.Canvas.MinFontSizeForLOD": 1,
}
# Set before any page script runs: the "Nodes 2.0" banner is dismissed (the frontend keeps that in localStorage).
INIT_SCRIPT = "try { localStorage.setItem('vueNodesBannerDismissed', 'true') } catch (e) {}"

APP_READY = "() => !!(window.app && app.graph && app.canvas && app.extensionManager?.command && app.vueAppReady)"


class BrowserMissing(RuntimeError):
    pass


def chromium_path() -> str:
    """The Chromium to drive: $LOOM_CHROMIUM, else `chromium` on PATH, else Debian's /usr/bin/chromium."""
    try:
        found = bootstrap.find_chromium()
    except bootstrap.SetupError as e:
        raise BrowserMissing(str(e)) from None
    if found is None:
        raise BrowserMissing(
            "no Chromium: run `make browser` (installs Debian's chromium package) or set LOOM_CHROMIUM=/path/to/chromium"
        )
    return found


def launch(playwright):
    """One headless Chromium (a Playwright Browser) with a fresh temporary profile."""
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)


@dataclass
class Message:
    """A console message or an uncaught page error."""

    kind: str  # console type ("error", "warning", ...) or "pageerror"
    text: str
    url: str  # where it was raised (the script's or the failed resource's URL)
    stack: str = ""

    def mentions(self, fragment: str) -> bool:
        return fragment in self.url or fragment in self.text or fragment in self.stack

    def __str__(self) -> str:
        where = f" ({self.url})" if self.url else ""
        return f"[{self.kind}] {self.text}{where}" + (
            f"\n{self.stack}" if self.stack and self.stack not in self.text else ""
        )


class ComfyPage:
    """One browser tab on a ComfyUI server, with its console messages collected from the start."""

    def __init__(self, context, page, url: str):
        self.context = context
        self.page = page
        self.url = url
        self.messages: list[Message] = []
        self.failed_requests: list[str] = []  # "STATUS URL" of responses >= 400 and requests that never got one

    @classmethod
    def open(
        cls, browser, url: str, width: int = 1400, height: int = 800, scale: float = 1, settings: dict | None = None
    ) -> ComfyPage:
        context = browser.new_context(
            viewport={"width": width, "height": height}, device_scale_factor=scale, accept_downloads=True
        )
        context.add_init_script(INIT_SCRIPT)
        overrides = {**UI_SETTINGS, **(settings or {})}

        def serve_settings(route):
            if route.request.method == "GET":
                response = route.fetch()
                body = response.json() if response.ok else {}
                route.fulfill(response=response, json={**body, **overrides})
            else:  # the UI saves a setting: acknowledge it, keep the server's user folder as it is
                route.fulfill(json={})

        context.route(f"{url}/api/settings", serve_settings)
        context.route(f"{url}/api/settings/**", serve_settings)
        # The frontend asks api.comfy.org for releases and node docs; nothing outside loopback is reachable on CI.
        context.route("https://**/*", lambda route: route.abort())
        page = context.new_page()
        self = cls(context, page, url)
        page.on("console", self._on_console)
        page.on("pageerror", self._on_page_error)
        page.on("response", lambda r: r.status >= 400 and self.failed_requests.append(f"{r.status} {r.url}"))
        page.on("requestfailed", lambda r: self.failed_requests.append(f"{r.failure} {r.url}"))
        page.goto(url)
        page.wait_for_function(APP_READY, timeout=90_000)
        return self

    def close(self) -> None:
        self.context.close()

    def _on_console(self, msg) -> None:
        location = msg.location or {}
        self.messages.append(Message(msg.type, msg.text, location.get("url", "")))

    def _on_page_error(self, error) -> None:
        self.messages.append(Message("pageerror", f"{error.name}: {error.message}", "", error.stack or ""))

    def errors(self) -> list[Message]:
        return [m for m in self.messages if m.kind in ("error", "pageerror")]

    def errors_mentioning(self, *fragments: str) -> list[Message]:
        """Console errors and page errors whose text, source or stack mentions any fragment (a script path, an
        extension name: ComfyUI logs an exception in an extension's hook as "Error calling extension 'NAME' ...")."""
        return [m for m in self.errors() if any(m.mentions(f) for f in fragments)]

    # --- the graph -------------------------------------------------------------------------------------------------

    def command(self, command_id: str) -> None:
        self.page.evaluate("(id) => app.extensionManager.command.execute(id)", command_id)

    def load_workflow(self, workflow: dict, name: str) -> None:
        """Load a UI-format workflow into a new tab, as opening a file does."""
        self.page.evaluate("async ([wf, name]) => { await app.loadGraphData(wf, true, true, name); }", [workflow, name])
        self.settle()

    def open_template(self, module: str, name: str) -> None:
        """Open a custom node pack's example workflow from ComfyUI's templates dialog, by clicking."""
        self.command("Comfy.BrowseTemplates")
        dialog = self.page.get_by_role("dialog")
        dialog.get_by_role("button", name=module, exact=True).click()
        card = dialog.get_by_test_id(f"template-workflow-{name}")
        card.click()
        dialog.wait_for(state="detached")
        self.page.wait_for_function(
            "(name) => app.extensionManager.workflow.activeWorkflow?.filename === name && app.graph.nodes.length > 0",
            arg=name,
        )
        self.settle()

    def node_types(self) -> list[str]:
        return self.page.evaluate("() => app.graph.nodes.map((n) => n.type)")

    def node_id(self, node_type: str) -> int:
        ids = self.page.evaluate("(t) => app.graph.nodes.filter((n) => n.type === t).map((n) => n.id)", node_type)
        assert len(ids) == 1, f"expected one {node_type} node, found {len(ids)}"
        return ids[0]

    def set_widget(self, node_id: int, name: str, value) -> None:
        self.page.evaluate(
            """([id, name, value]) => {
                const widget = app.graph.getNodeById(id).widgets.find((w) => w.name === name);
                widget.value = value;
                widget.callback?.(value);
                app.graph.setDirtyCanvas(true, true);
            }""",
            [node_id, name, value],
        )

    def export_workflow(self) -> dict:
        """The workflow as ComfyUI saves it: Workflow > Export, read from the download."""
        with self.page.expect_download() as download:
            self.command("Comfy.ExportWorkflow")
        return json.loads(Path(download.value.path()).read_text())

    # --- the view --------------------------------------------------------------------------------------------------

    def settle(self, frames: int = 3) -> None:
        """Let the canvas draw a few frames (DOM widgets are placed while it draws)."""
        self.page.evaluate(
            """async (n) => {
                for (let i = 0; i < n; i++) {
                    app.canvas.setDirty(true, true);
                    await new Promise((r) => requestAnimationFrame(r));
                }
            }""",
            frames,
        )

    def show_node(self, node_id: int, scale: float = 1.0, x: int = 120, y: int = 140) -> None:
        """Zoom to scale and put the node's top left at (x, y) in the window (DOM widgets show only when zoomed in)."""
        self.page.evaluate(
            """([id, scale, x, y]) => {
                const node = app.graph.getNodeById(id);
                const ds = app.canvas.ds;
                ds.scale = scale;
                ds.offset[0] = x / scale - node.pos[0];
                ds.offset[1] = y / scale - node.pos[1];
            }""",
            [node_id, scale, x, y],
        )
        self.settle()

    def fit_graph(self, top: int = 100, left: int = 80, right: int = 30, bottom: int = 70, max_scale: float = 1.0):
        """Zoom and centre so every node fits the window between the given margins (the menus float over the canvas).

        Returns the scale. Unlike Comfy.Canvas.FitView this does not animate and keeps clear of the menus.
        """
        scale = self.page.evaluate(
            """([top, left, right, bottom, maxScale]) => {
                const nodes = app.graph.nodes;
                if (!nodes.length) return 1;
                const title = LiteGraph.NODE_TITLE_HEIGHT;
                let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
                for (const n of nodes) {
                    x0 = Math.min(x0, n.pos[0]);
                    y0 = Math.min(y0, n.pos[1] - title);
                    x1 = Math.max(x1, n.pos[0] + n.size[0]);
                    y1 = Math.max(y1, n.pos[1] + n.size[1]);
                }
                for (const g of app.graph.groups ?? []) {
                    const [gx, gy, gw, gh] = g._bounding ?? g.bounding;
                    x0 = Math.min(x0, gx); y0 = Math.min(y0, gy); x1 = Math.max(x1, gx + gw); y1 = Math.max(y1, gy + gh);
                }
                const rect = app.canvas.canvas.getBoundingClientRect();
                const w = rect.width - left - right, h = rect.height - top - bottom;
                const scale = Math.min(maxScale, w / (x1 - x0), h / (y1 - y0));
                const ds = app.canvas.ds;
                ds.scale = scale;
                ds.offset[0] = (left + (w - (x1 - x0) * scale) / 2) / scale - x0;
                ds.offset[1] = (top + (h - (y1 - y0) * scale) / 2) / scale - y0;
                return scale;
            }""",
            [top, left, right, bottom, max_scale],
        )
        self.settle()
        return scale

    # --- running ---------------------------------------------------------------------------------------------------

    def queue_and_wait(self, timeout_s: float = 300) -> dict:
        """Click Run and wait for the server to finish the prompt; returns the execution_success detail.

        Raises AssertionError with the server's message when the prompt fails or is refused.
        """
        self.page.evaluate(
            """() => {
                window.__loomRun = new Promise((resolve) => {
                    const done = (event) => resolve({ ok: event.type === "execution_success", detail: event.detail });
                    app.api.addEventListener("execution_success", done, { once: true });
                    app.api.addEventListener("execution_error", done, { once: true });
                });
            }"""
        )
        self.page.get_by_test_id("queue-button").get_by_role("button", name="Run").click()
        result = self.page.evaluate(
            """async (ms) => {
                const timeout = new Promise((r) => setTimeout(() => r({ ok: false, detail: "timed out" }), ms));
                return await Promise.race([window.__loomRun, timeout]);
            }""",
            int(timeout_s * 1000),
        )
        assert result["ok"], f"the queued workflow failed: {json.dumps(result['detail'])[:2000]}"
        return result["detail"]

    def wait_for_outputs(self, timeout_s: float = 60) -> dict[int, list[dict]]:
        """Wait until every node with image outputs from the last run shows them; returns {node id: images}."""
        ids = self.page.evaluate(
            "() => Object.entries(app.nodeOutputs ?? {}).filter(([, o]) => o?.images?.length).map(([id]) => Number(id))"
        )
        return {node_id: self.wait_for_images(node_id, timeout_s) for node_id in ids}

    def wait_for_images(self, node_id: int, timeout_s: float = 60) -> list[dict]:
        """Wait until the node shows its output images (node.imgs loaded); returns [{src, width, height}]."""
        self.page.wait_for_function(
            """(id) => {
                const imgs = app.graph.getNodeById(id)?.imgs;
                return !!imgs?.length && imgs.every((img) => img.complete && img.naturalWidth > 0);
            }""",
            arg=node_id,
            timeout=timeout_s * 1000,
        )
        return self.page.evaluate(
            "(id) => app.graph.getNodeById(id).imgs.map((i) => ({src: i.src, width: i.naturalWidth, "
            "height: i.naturalHeight}))",
            node_id,
        )
