"""Browser tier: ComfyUI's real web UI in Debian's Chromium (Playwright), against a real ComfyUI server (CPU).

One server and one browser per session; every test gets a fresh tab in a fresh browser context (its own storage),
with the console collected from the first script on. The server also sees a temporary `loras` folder holding a LoRA
whose metadata is HTML and script, for the info panel's escaping, and a diffusers-PEFT LoRA (``writer_headers``), for
the panel's rendering of a non-kohya header.
"""

import pytest
from comfy_server import ComfyServer
from loom_browser import BrowserMissing, ComfyPage, launch
from markup_lora import write_xss_lora
from writer_headers import write_peft_sd15

PEFT_LORA = "loom-peft-metadata.safetensors"


@pytest.fixture(scope="session")
def extra_loras(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    write_xss_lora(folder)
    write_peft_sd15(folder / PEFT_LORA)
    return folder


@pytest.fixture(scope="session")
def server(extra_loras):
    srv = ComfyServer(cpu=True, extra_paths={"loras": [str(extra_loras)]}).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        try:
            chromium = launch(playwright)
        except BrowserMissing as e:
            pytest.fail(str(e), pytrace=False)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def ui(browser, server):
    """A fresh ComfyUI tab (1400x800) on the session's server."""
    page = ComfyPage.open(browser, server.url)
    try:
        yield page
    finally:
        page.close()


@pytest.fixture(scope="module")
def module_ui(browser, server):
    """One ComfyUI tab for a module's tests that each open a workflow in a new workflow tab (saves a page load each)."""
    page = ComfyPage.open(browser, server.url)
    try:
        yield page
    finally:
        page.close()


@pytest.fixture
def shared_ui(module_ui):
    """The module's tab, its console record started afresh for this test."""
    module_ui.messages.clear()
    module_ui.failed_requests.clear()
    return module_ui
