"""Start a real ComfyUI server with the pack, run workflows through its HTTP API, stop it.

Used by the demo and the `server` test tier. Stdlib + websocket-client only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from comfy_env import INPUT, RUNTIME, comfyui_dir, extra_model_paths_yaml

# The server runs on the Python running this (each ComfyUI runtime has its own venv: .venv, .venv-upstream).
SERVER_PYTHON = Path(sys.executable)
# Lines that mean the pack (or any custom node) failed to load.
IMPORT_FAILURE_MARKERS = ("IMPORT FAILED", "Cannot import", "Error while calling comfy_entrypoint", "did not return")


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class ComfyServer:
    def __init__(self, port: int | None = None, cpu: bool = True, workdir: Path | None = None, extra_paths=None):
        self.port = port or free_port()
        if port_in_use(self.port):
            raise ServerError(f"port {self.port} on 127.0.0.1 is in use: stop what uses it or set LOOM_PORT to another")
        self.cpu = cpu
        self.workdir = workdir or RUNTIME / "server"
        self.extra_paths = extra_paths or {}
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / f"comfyui-{self.port}.log"
        self.output_dir = self.workdir / "output"
        self.proc: subprocess.Popen | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> ComfyServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.output_dir.mkdir(exist_ok=True)
        INPUT.mkdir(parents=True, exist_ok=True)
        cfg = extra_model_paths_yaml(self.workdir / "extra_model_paths.yaml", self.extra_paths)
        cmd = [str(SERVER_PYTHON), "main.py", "--listen", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--extra-model-paths-config", str(cfg), "--output-directory", str(self.output_dir)]
        cmd += ["--input-directory", str(INPUT)]
        cmd += ["--disable-auto-launch"] + (["--cpu"] if self.cpu else [])
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            cmd, cwd=comfyui_dir(), stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"ComfyUI exited with {self.proc.returncode} while starting; log: {self.log_path}")
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.5)
        self.stop()
        raise ServerError(f"ComfyUI did not answer within {timeout:.0f} s; log: {self.log_path}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def import_failures(self) -> list[str]:
        """Log lines saying a custom node pack failed to load (ComfyUI's own optional nodes excluded)."""
        return [
            line
            for line in self.log_text().splitlines()
            if "custom_nodes/" in line and any(m in line for m in IMPORT_FAILURE_MARKERS)
        ]

    # --- HTTP --------------------------------------------------------------------------------

    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            body = r.read()
            return json.loads(body) if r.headers.get_content_type() == "application/json" else body

    def post(self, path: str, data: dict, timeout: float = 30):
        req = urllib.request.Request(
            self.url + path, data=json.dumps(data).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise ServerError(f"POST {path} -> {e.code}: {e.read().decode(errors='replace')[:2000]}") from e

    def object_info(self) -> dict:
        return self.get("/object_info", timeout=120)

    def run_prompt(self, prompt: dict, timeout: float = 600) -> dict:
        """Queue an API-format prompt and wait for it over the websocket.

        Returns {"prompt_id", "history", "progress": [(node, value, max)], "images": [Path]}.
        """
        import websocket

        client_id = uuid.uuid4().hex
        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}", timeout=timeout)
        try:
            prompt_id = self.post("/prompt", {"prompt": prompt, "client_id": client_id})["prompt_id"]
            progress: list[tuple] = []
            deadline = time.time() + timeout
            while time.time() < deadline:
                msg = ws.recv()
                if not isinstance(msg, str):
                    continue  # binary preview frames
                event = json.loads(msg)
                data = event.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                if event["type"] == "progress":
                    progress.append((data.get("node"), data["value"], data["max"]))
                elif event["type"] == "execution_error":
                    raise ServerError(
                        f"prompt failed in node {data.get('node_type')} ({data.get('node_id')}): "
                        f"{data.get('exception_type')}: {data.get('exception_message')}"
                    )
                elif event["type"] == "executing" and data.get("node") is None:
                    break
                elif event["type"] == "execution_success":
                    break
            else:
                raise ServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")
        finally:
            ws.close()
        # The "done" message precedes the history entry by a moment.
        history = None
        for _ in range(100):
            history = self.get(f"/history/{prompt_id}").get(prompt_id)
            if history is not None:
                break
            time.sleep(0.1)
        if history is None:
            raise ServerError(f"prompt {prompt_id} finished but never appeared in /history")
        status = history.get("status", {})
        if status.get("status_str") == "error":
            raise ServerError(f"prompt {prompt_id} failed: {json.dumps(status.get('messages'))[:2000]}")
        images = []
        for node_out in history.get("outputs", {}).values():
            for img in node_out.get("images", []):
                if img.get("type") == "output":
                    images.append(self.output_dir / img.get("subfolder", "") / img["filename"])
        return {"prompt_id": prompt_id, "history": history, "progress": progress, "images": images}


def main() -> int:
    """`make serve`: run ComfyUI with the pack in the foreground for the browser."""
    port = int(os.environ.get("LOOM_PORT", "8188"))
    cpu = os.environ.get("LOOM_DEVICE", "cpu") != "gpu"
    try:
        server = ComfyServer(port=port, cpu=cpu).start()
    except ServerError as e:
        print(f"[serve] error: {e}", file=sys.stderr)
        return 1
    print(f"[serve] ComfyUI with LoRA Loom at {server.url}  (log: {server.log_path}; Ctrl-C stops it)", flush=True)
    try:
        server.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
