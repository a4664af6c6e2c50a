"""Run a workflow file on a running ComfyUI: submit it, follow it, download its images.

    python scripts/run_workflow.py example_workflows/lora_stack_sd15.json
    python scripts/run_workflow.py WORKFLOW.json --server http://127.0.0.1:8188 --out ./renders \\
        --set 6.seed=7 --set "Positive prompt.text=a castle, loomstyle" --api-out workflow.api.json

WORKFLOW.json is either the UI format (what ComfyUI saves and people share; converted to the API format with
the server's /object_info, see workflow_api.py) or the API format (ComfyUI's "Export (API)", or a /prompt body
``{"prompt": {...}}``). ``--set NODE.input=value`` changes one input first: NODE is a node id, a node title or a
class type (all nodes of that type); the value is read as JSON when it parses (``7``, ``0.5``, ``true``,
``[1, 2]``), except for text inputs, which keep the text as written.

Progress comes over ComfyUI's websocket: a line per node that starts, a bar for sampler and trainer steps with the
trainer's loss text. Then every image in /history/<prompt_id> is fetched through /view into --out.

Exit codes: 0 done; 1 the run failed (an exception in a node, interrupted, timed out, server unreachable);
2 the workflow was refused (validation errors from /prompt, a bad --set, a file that is not a workflow).
Stdlib + websocket-client; without websocket-client it polls /history instead. It never imports ComfyUI.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfy_client import (  # noqa: E402
    DEFAULT_SERVER,
    Client,
    Refused,
    RunFailed,
    cancel,
    fetch_history,
    history_error,
    poll_history,
    safe_relpath,
    text_frame,
)
from workflow_api import WorkflowError, ui_to_api  # noqa: E402
from workflow_report import (  # noqa: E402
    Progress,
    execution_error_text,
    format_node_errors,
    node_label,
    report_refusal,
)

DEFAULT_OUT = Path("output") / "run_workflow"
STRING_TYPES = ("STRING", "COMBO")


# --- the workflow -------------------------------------------------------------------------------


def load_workflow(path: Path) -> tuple[str, dict]:
    """("ui", workflow) or ("api", prompt) from a file."""
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise Refused(f"cannot read {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise Refused(f"{path} is not JSON: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        return "ui", data
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]  # a saved /prompt body
    if isinstance(data, dict) and data and all(isinstance(n, dict) and "class_type" in n for n in data.values()):
        return "api", data
    raise Refused(
        f"{path} is neither a UI workflow (a 'nodes' list) nor an API prompt ({{node_id: {{class_type, inputs}}}})"
    )


def check_subgraphs(workflow: dict) -> None:
    subgraphs = {g.get("id"): g.get("name", "") for g in (workflow.get("definitions") or {}).get("subgraphs", [])}
    for node in workflow["nodes"]:
        if node.get("type") in subgraphs:
            raise Refused(
                f"node {node['id']} is a subgraph ({subgraphs[node['type']] or node['type']}), which this converter "
                "does not expand: unpack it in ComfyUI, or save the workflow with Export (API) and run that file"
            )


def parse_set(spec: str) -> tuple[str, str, str]:
    key, sep, raw = spec.partition("=")
    selector, dot, name = key.strip().rpartition(".")
    if not sep or not dot or not selector or not name:
        raise Refused(f"--set {spec!r}: expected NODE.input=value, e.g. --set 6.seed=7 or --set KSampler.steps=8")
    return selector, name, raw


def coerce(raw: str, current, spec_type) -> object:
    """JSON when it parses; text inputs (a text value now, or STRING/COMBO in /object_info) keep the raw text."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return raw
    is_text = isinstance(current, str) or (
        current is None and (spec_type in STRING_TYPES or isinstance(spec_type, list))
    )
    if is_text and not isinstance(value, str):
        return raw
    return value


def input_specs(client: Client, class_type: str, cache: dict) -> dict:
    if class_type not in cache:
        try:
            info = client.get_json(f"/object_info/{urllib.parse.quote(class_type)}").get(class_type, {})
        except (RunFailed, json.JSONDecodeError, AttributeError):
            info = {}
        sections = info.get("input", {})
        cache[class_type] = {**sections.get("required", {}), **sections.get("optional", {})}
    return cache[class_type]


def apply_sets(prompt: dict, sets: list[str], client: Client, object_info: dict | None = None) -> list[str]:
    """Apply --set overrides in place; returns one line per change."""
    cache: dict = {}
    if object_info:
        for ctype, info in object_info.items():
            sections = info.get("input", {})
            cache[ctype] = {**sections.get("required", {}), **sections.get("optional", {})}
    notes = []
    for spec in sets:
        selector, name, raw = parse_set(spec)
        if selector in prompt:
            targets = [selector]
        else:
            targets = [
                i
                for i, n in prompt.items()
                if n["class_type"] == selector or (n.get("_meta") or {}).get("title") == selector
            ]
        if not targets:
            nodes = ", ".join(f"{i} {n['class_type']}" for i, n in prompt.items())
            raise Refused(f"--set {spec!r}: no node with id, title or type {selector!r}; nodes: {nodes}")
        for node_id in targets:
            node = prompt[node_id]
            inputs = node.setdefault("inputs", {})
            current = inputs.get(name)
            specs = input_specs(client, node["class_type"], cache)  # {} for a type the server does not list
            if specs and name not in specs:
                have = ", ".join(specs)
                raise Refused(f"--set {spec!r}: {node_label(prompt, node_id)} has no input {name!r}; it has {have}")
            spec_type = specs[name][0] if name in specs else None
            if isinstance(current, list) and len(current) == 2 and isinstance(current[1], int):
                notes.append(f"{node_label(prompt, node_id)}: {name} was linked to node {current[0]}; now a value")
                current = None
            inputs[name] = coerce(raw, current, spec_type)
            notes.append(f"{node_label(prompt, node_id)}: {name} = {json.dumps(inputs[name])[:200]}")
    return notes


def build_prompt(path: Path, client: Client, sets: list[str]) -> tuple[dict, list[str]]:
    kind, data = load_workflow(path)
    object_info = None
    if kind == "ui":
        check_subgraphs(data)
        object_info = client.get_json("/object_info", timeout=300)
        try:
            prompt = ui_to_api(data, object_info)
        except WorkflowError as e:
            raise Refused(f"{path}: {e}") from None
        except (KeyError, IndexError, TypeError) as e:
            raise Refused(f"{path}: malformed UI workflow ({type(e).__name__}: {e})") from None
    else:
        prompt = data
    return prompt, apply_sets(prompt, sets, client, object_info)


# --- running ------------------------------------------------------------------------------------


def submit(client: Client, prompt: dict, client_id: str) -> tuple[str, dict]:
    status, body = client.post_json("/prompt", {"prompt": prompt, "client_id": client_id})
    if status != 200 or not isinstance(body, dict) or "prompt_id" not in body:
        raise Refused(report_refusal(prompt, body))
    return body["prompt_id"], body.get("node_errors") or {}


def follow_websocket(ws, client: Client, prompt: dict, prompt_id: str, deadline: float, progress: Progress, verbose):
    """Print progress until the prompt ends; raises RunFailed on an execution error. Returns False if the socket
    closed early (the caller then polls /history)."""
    import websocket

    running = False
    while True:
        remaining = deadline - time.time()
        if remaining <= 0:
            raise TimeoutError
        ws.settimeout(min(remaining, 5.0))
        try:
            msg = ws.recv()
        except websocket.WebSocketTimeoutException:
            history = fetch_history(client, prompt_id)  # a missed message must not hang the run
            if history is not None and (history.get("status") or {}).get("completed") is not None:
                return True
            continue
        except (websocket.WebSocketConnectionClosedException, OSError):
            return False
        if isinstance(msg, bytes | bytearray):
            frame = text_frame(msg)  # otherwise a preview image
            if running and frame is not None:
                progress.progress_text(frame[1])
            continue
        if not msg:
            continue
        event = json.loads(msg)
        kind, data = event.get("type"), event.get("data") or {}
        if data.get("prompt_id") not in (None, prompt_id):
            continue
        if kind == "execution_start":
            running = True
        elif kind == "execution_cached" and data.get("nodes"):
            progress.note(f"  cached: {', '.join(str(n) for n in data['nodes'])}")
        elif kind == "executing":
            if data.get("node") is None:
                if data.get("prompt_id") == prompt_id:
                    return True
                continue
            running = True
            progress.node_start(data.get("display_node") or data["node"])
        elif kind == "progress" and data.get("max"):
            progress.step(int(data["value"]), int(data["max"]))
        elif kind == "execution_error":
            progress.close()
            raise RunFailed(execution_error_text(prompt, data, verbose))
        elif kind == "execution_interrupted":
            progress.close()
            raise RunFailed(f"interrupted in {node_label(prompt, data.get('node_id'))}")
        elif kind == "execution_success":
            return True


def download_outputs(client: Client, prompt: dict, history: dict, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Every file the outputs list (images, and any other {filename, subfolder, type} entry) into out_dir;
    text outputs (e.g. Preview as Text) are returned as lines."""
    files, texts = [], []
    for node_id, outputs in (history.get("outputs") or {}).items():
        for key, entries in outputs.items():
            if not isinstance(entries, list):
                continue
            for entry in entries:
                if isinstance(entry, dict) and "filename" in entry:
                    query = urllib.parse.urlencode(
                        {k: entry.get(k, "") for k in ("filename", "subfolder", "type")}, quote_via=urllib.parse.quote
                    )
                    dest = out_dir / safe_relpath(entry.get("subfolder", ""), entry["filename"])
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(client.get(f"/view?{query}", timeout=300))
                    files.append(dest)
                elif key == "text" and isinstance(entry, str):
                    texts.append(
                        f"{node_label(prompt, node_id)}:\n" + "\n".join(f"    {t}" for t in entry.splitlines())
                    )
    return files, texts


def run(args) -> int:
    client = Client(args.server)
    prompt, notes = build_prompt(args.workflow, client, args.set or [])
    for note in notes:
        print(f"[run] set {note}")
    if args.api_out:
        args.api_out.parent.mkdir(parents=True, exist_ok=True)
        args.api_out.write_text(json.dumps(prompt, indent=1) + "\n")
        print(f"[run] API prompt written to {args.api_out}")
    if args.no_run:
        if not args.api_out:
            print(json.dumps(prompt, indent=1))
        return 0

    client_id = uuid.uuid4().hex
    ws = None
    try:
        import websocket

        if not hasattr(websocket, "create_connection"):
            raise ImportError("the installed 'websocket' module is not websocket-client")
        try:
            ws = websocket.create_connection(client.ws_url(client_id), timeout=30)
        except (websocket.WebSocketException, OSError) as e:
            client.get("/system_stats")  # an unreachable server is an error, not a reason to poll
            print(f"[run] note: no websocket ({e}); polling /history instead (no live progress)")
    except ImportError:
        print("[run] note: websocket-client is not installed (pip install websocket-client); polling /history "
              "instead, without live progress")  # fmt: skip

    start = time.time()
    deadline = start + args.timeout
    progress = Progress(prompt)
    prompt_id, partial = None, {}
    try:
        prompt_id, partial = submit(client, prompt, client_id)
        print(f"[run] queued prompt {prompt_id} on {client.base}")
        if partial:
            print("[run] some outputs failed validation and will not run:", file=sys.stderr)
            print("\n".join(format_node_errors(prompt, partial)), file=sys.stderr)
        finished = ws is not None and follow_websocket(ws, client, prompt, prompt_id, deadline, progress, args.verbose)
        progress.close()
        if not finished and ws is not None:
            print("[run] note: the websocket closed; polling /history")
        # after the last websocket message the history entry lands within a moment; without a socket, poll
        history = poll_history(
            client, prompt_id, min(deadline, time.time() + 30) if finished else deadline, 0.1 if finished else 1.0
        )
        if history is None:
            if finished:
                raise RunFailed(f"prompt {prompt_id} finished but is not in /history")
            raise TimeoutError
        failure = history_error(history)
        if failure:
            event, data = failure
            if event == "execution_interrupted":
                raise RunFailed(f"interrupted in {node_label(prompt, data.get('node_id'))}")
            raise RunFailed(execution_error_text(prompt, data, args.verbose))
    except TimeoutError:
        progress.close()
        if prompt_id:
            cancel(client, prompt_id)
        raise RunFailed(f"no result within --timeout {args.timeout:g} s; the prompt was cancelled") from None
    except KeyboardInterrupt:
        progress.close()
        if prompt_id:
            cancel(client, prompt_id)
            print(f"[run] cancelled prompt {prompt_id}", file=sys.stderr)
        return 130
    finally:
        if ws is not None:
            ws.close()

    files, texts = download_outputs(client, prompt, history, args.out)
    print(f"[run] done in {time.time() - start:.1f} s")
    for text in texts:
        print(f"[run] text from {text}")
    if files:
        print(f"[run] {len(files)} file(s) in {args.out}:")
        for f in files:
            print(f"  {f}")
    else:
        print("[run] the workflow produced no image (no SaveImage/PreviewImage output?)")
    if partial:
        print("[run] error: not every output ran (validation errors above)", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="run_workflow.py",
        description="Run a ComfyUI workflow (UI or API format) on a running ComfyUI and download its images.",
        epilog="exit codes: 0 done, 1 the run failed, 2 the workflow was refused",
    )
    parser.add_argument("workflow", type=Path, help="workflow JSON: UI format (as saved/shared) or API format")
    parser.add_argument(
        "--server", default=os.environ.get("COMFYUI_URL", DEFAULT_SERVER), help=f"default {DEFAULT_SERVER}"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where images go (default ./{DEFAULT_OUT})")
    parser.add_argument(
        "--set",
        action="append",
        metavar="NODE.input=value",
        help="override an input; NODE is a node id, title or class type; repeatable",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the result (default 3600)")
    parser.add_argument("--api-out", type=Path, help="also write the API-format prompt (after --set) to this file")
    parser.add_argument("--no-run", action="store_true", help="convert and apply --set only (with --api-out, or print)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the traceback of a failing node")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except Refused as e:
        print(f"[run] error: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"[run] error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
