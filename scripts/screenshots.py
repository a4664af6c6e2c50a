#!/usr/bin/env python3
"""README screenshots from the real UI: each example workflow opened from ComfyUI's templates dialog in Debian's
Chromium, fitted to the window, written to docs/screenshots/<workflow>.png.

  make screenshots                           # every example, run first so its images show (--run; ~3 min on 2 cores)
  .venv/bin/python scripts/screenshots.py    # every example as loaded, not run (a server is started on a free port)
  .venv/bin/python scripts/screenshots.py lora_stack_sd15 --url http://127.0.0.1:8188   # one, on a running ComfyUI

The graphs are drawn by ComfyUI's own canvas at the zoom they fit in (level of detail kept on: LiteGraph otherwise
draws plain boxes below 60 %), with the minimap and canvas statistics off. Nothing is drawn by this script.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from comfy_server import ComfyServer, ServerError
from loom_browser import DETAILED_SETTINGS, REPO, BrowserMissing, ComfyPage, launch, pack_folder

WORKFLOWS = REPO / "example_workflows"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help="workflow names (file stems in example_workflows/); default: all")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots", help="folder for the PNGs")
    p.add_argument("--width", type=int, default=1400, help="window width in CSS pixels (default 1400)")
    p.add_argument("--height", type=int, default=800, help="window height in CSS pixels (default 800)")
    p.add_argument("--scale", type=float, default=1.0, help="device pixels per CSS pixel (2 = sharper, 4x the bytes)")
    p.add_argument("--run", action="store_true", help="queue each workflow and wait for its images before the shot")
    p.add_argument("--url", help="use this running ComfyUI (with the pack) instead of starting one")
    return p.parse_args(argv)


def shoot(browser, url: str, path: Path, args) -> Path:
    ui = ComfyPage.open(
        browser, url, width=args.width, height=args.height, scale=args.scale, settings=DETAILED_SETTINGS
    )
    try:
        ui.open_template(pack_folder(), path.stem)
        if args.run:
            ui.fit_graph()  # the UI loads a node's images while drawing it
            ui.queue_and_wait(timeout_s=600)
            ui.wait_for_outputs()
        ui.fit_graph()
        ui.page.mouse.move(args.width - 2, args.height // 2)  # no hover highlight on a node
        ui.settle(5)
        out = args.out / f"{path.stem}.png"
        ui.page.screenshot(path=str(out))
        errors = ui.errors_mentioning(f"/extensions/{pack_folder()}/", "extension 'lora_loom.")
        for message in errors:
            print(f"[screenshots] warning: {path.stem}: {message}", file=sys.stderr)
        return out
    finally:
        ui.close()


def main(argv=None) -> int:
    args = parse_args(argv)
    available = {p.stem: p for p in sorted(WORKFLOWS.glob("*.json"))}
    unknown = [n for n in args.names if n not in available]
    if unknown:
        print(f"[screenshots] error: no example workflow {unknown}; there are {sorted(available)}", file=sys.stderr)
        return 2
    paths = [available[n] for n in args.names] if args.names else list(available.values())
    args.out.mkdir(parents=True, exist_ok=True)

    from playwright.sync_api import sync_playwright

    server = None
    try:
        if args.url:
            url = args.url.rstrip("/")
        else:
            server = ComfyServer(cpu=True).start()
            url = server.url
        with sync_playwright() as playwright:
            browser = launch(playwright)
            try:
                for path in paths:
                    start = time.time()
                    out = shoot(browser, url, path, args)
                    print(
                        f"[screenshots] {out.relative_to(REPO) if out.is_relative_to(REPO) else out}  "
                        f"({time.time() - start:.1f} s)",
                        flush=True,
                    )
            finally:
                browser.close()
    except (ServerError, BrowserMissing) as e:
        print(f"[screenshots] error: {e}", file=sys.stderr)
        return 1
    finally:
        if server:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
