"""A small client for ComfyUI's HTTP API (stdlib only): JSON requests, /prompt, /history, /queue, the binary
progress-text frames of its websocket. Used by run_workflow.py; it never imports ComfyUI."""

from __future__ import annotations

import json
import os
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

DEFAULT_SERVER = "http://127.0.0.1:8188"
TEXT_FRAME = 3  # ComfyUI's binary websocket event for progress text (protocol.BinaryEventTypes.TEXT)


class Refused(Exception):
    """The workflow, an override or the prompt was refused before running (exit 2)."""


class RunFailed(Exception):
    """The run did not finish (exit 1)."""


class Client:
    def __init__(self, base: str, timeout: float = 60.0):
        base = base.rstrip("/")
        if "://" not in base:
            base = "http://" + base
        self.base = base
        self.timeout = timeout

    def _open(self, path: str, data: bytes | None = None, timeout: float | None = None):
        headers = {"Content-Type": "application/json"} if data is not None else {}
        req = urllib.request.Request(self.base + path, data=data, headers=headers)
        try:
            return urllib.request.urlopen(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise RunFailed(
                f"cannot reach ComfyUI at {self.base} ({reason}); start it (e.g. `make serve`) or pass --server URL"
            ) from None

    def get(self, path: str, timeout: float | None = None) -> bytes:
        try:
            with self._open(path, timeout=timeout) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            raise RunFailed(f"GET {path} -> HTTP {e.code}: {e.read().decode(errors='replace')[:500]}") from None

    def get_json(self, path: str, timeout: float | None = None):
        return json.loads(self.get(path, timeout))

    def post_json(self, path: str, body: dict) -> tuple[int, object]:
        """(status, parsed body); HTTP errors are returned, not raised (/prompt answers 400 with node_errors)."""
        try:
            with self._open(path, json.dumps(body).encode()) as r:
                raw, status = r.read(), r.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        try:
            return status, json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return status, raw.decode(errors="replace")

    def ws_url(self, client_id: str) -> str:
        parts = urllib.parse.urlsplit(self.base)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path + "/ws", f"clientId={client_id}", ""))


def fetch_history(client: Client, prompt_id: str) -> dict | None:
    return client.get_json(f"/history/{urllib.parse.quote(prompt_id)}").get(prompt_id)


def history_error(history: dict) -> tuple[str, dict] | None:
    for event, data in (history.get("status") or {}).get("messages", []):
        if event in ("execution_error", "execution_interrupted"):
            return event, data
    return None


def text_frame(msg: bytes) -> tuple[str, str] | None:
    """(node id, text) of a binary progress-text frame: event 3, node id length, node id, UTF-8 text."""
    if len(msg) < 8 or struct.unpack(">I", msg[:4])[0] != TEXT_FRAME:
        return None
    (n,) = struct.unpack(">I", msg[4:8])
    return bytes(msg[8 : 8 + n]).decode(errors="replace"), bytes(msg[8 + n :]).decode("utf-8", errors="replace")


def poll_history(client: Client, prompt_id: str, deadline: float, interval: float) -> dict | None:
    """The prompt's finished history entry, or None at the deadline."""
    while True:
        history = fetch_history(client, prompt_id)
        if history is not None and (history.get("status") or {}).get("completed") is not None:
            return history
        if time.time() >= deadline:
            return None
        time.sleep(interval)


def cancel(client: Client, prompt_id: str) -> None:
    """Take the prompt off the queue, or interrupt it if it is running."""
    try:
        client.post_json("/queue", {"delete": [prompt_id]})
        client.post_json("/interrupt", {"prompt_id": prompt_id})
    except RunFailed:
        pass


def safe_relpath(subfolder: str, filename: str) -> Path:
    parts = [p for p in Path(subfolder or "").parts + Path(filename).parts if p not in ("", ".", "..", "/")]
    parts = [p for p in parts if not os.path.isabs(p)]
    if not parts:
        raise RunFailed(f"the server listed an output with no usable file name: {subfolder!r}/{filename!r}")
    return Path(*parts)
