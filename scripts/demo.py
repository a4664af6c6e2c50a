"""`make demo`: a real ComfyUI with LoRA Loom runs the example workflows through its HTTP API.

By default it runs on the small built-in stand-in models (seeded random weights, real
architectures): the PNGs show noise-like patterns, proving the whole path works, not pictures.
For real images point it at real files:

  LOOM_CHECKPOINT=/models/sd15.safetensors LOOM_LORAS=/loras/style.safetensors \
  LOOM_PROMPT="a castle, loomstyle" LOOM_DEVICE=gpu make demo

LOOM_SIZE (default 64, or 512 with LOOM_CHECKPOINT), LOOM_STEPS (4, or 20), LOOM_PORT (default: a
free port). Workflows using the tiny SDXL/FLUX stand-ins are left as they are.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from comfy_env import REPO
from comfy_server import ComfyServer, ServerError
from workflow_api import WorkflowError, ui_to_api

OUTPUT = REPO / "output"


class DemoError(Exception):
    pass


def user_overrides() -> dict:
    ckpt = os.environ.get("LOOM_CHECKPOINT", "").strip()
    loras = [p for p in os.environ.get("LOOM_LORAS", "").replace(",", os.pathsep).split(os.pathsep) if p.strip()]
    o: dict = {"extra_paths": {}}
    if ckpt:
        path = Path(ckpt).expanduser().resolve()
        if not path.is_file():
            raise DemoError(f"LOOM_CHECKPOINT={ckpt} is not a file: point it at a .safetensors checkpoint")
        o["extra_paths"]["checkpoints"] = [str(path.parent)]
        o["ckpt_name"] = path.name
    lora_paths = []
    for lora in loras:
        path = Path(lora).expanduser().resolve()
        if not path.is_file():
            raise DemoError(f"LOOM_LORAS: {lora} is not a file")
        lora_paths.append(path)
    if lora_paths:
        o["extra_paths"]["loras"] = sorted({str(p.parent) for p in lora_paths})
        o["lora_names"] = [p.name for p in lora_paths]
    real = bool(ckpt)
    o["size"] = int(os.environ.get("LOOM_SIZE", "512" if real else "64"))
    o["steps"] = int(os.environ.get("LOOM_STEPS", "20" if real else "4"))
    o["prompt"] = os.environ.get("LOOM_PROMPT")
    return o


def apply_overrides(prompt: dict, o: dict) -> dict:
    lora_names = iter(o.get("lora_names", []))
    for node in prompt.values():
        inputs, ctype = node["inputs"], node["class_type"]
        if "ckpt_name" in inputs and o.get("ckpt_name"):
            inputs["ckpt_name"] = o["ckpt_name"]
        if ctype.startswith("Loom") and "lora_name" in inputs:
            inputs["lora_name"] = next(lora_names, inputs["lora_name"])
        if ctype == "LoomLoraStack" and o.get("lora_names") and isinstance(inputs.get("rows"), str):
            # The user's LoRAs replace the stand-in rows, at the strengths of the first row.
            first = (json.loads(inputs["rows"]) or [{}])[0]
            rows = [{**first, "name": name, "on": True} for name in o["lora_names"]]
            inputs["rows"] = json.dumps(rows)
        if ctype == "EmptyLatentImage":
            inputs["width"] = inputs["height"] = o["size"]
        if ctype in ("KSampler", "KSamplerAdvanced") and "steps" in inputs:
            inputs["steps"] = o["steps"]
        if ctype == "CLIPTextEncode" and o.get("prompt") and node.get("_meta", {}).get("title", "").startswith("Pos"):
            inputs["text"] = o["prompt"]
    return prompt


def main() -> int:
    try:
        o = user_overrides()
        workflows = sorted((REPO / "example_workflows").glob("*.json"))
        if not workflows:
            raise DemoError("example_workflows/ has no workflow")
        port = int(os.environ["LOOM_PORT"]) if os.environ.get("LOOM_PORT") else None
        cpu = os.environ.get("LOOM_DEVICE", "cpu") != "gpu"
        print(f"[demo] starting ComfyUI ({'CPU' if cpu else 'GPU'}) with LoRA Loom ...", flush=True)
        with ComfyServer(port=port, cpu=cpu, extra_paths=o["extra_paths"]) as server:
            failures = server.import_failures()
            if failures:
                raise DemoError(f"the pack failed to import: {failures[0]} (log: {server.log_path})")
            info = server.object_info()
            OUTPUT.mkdir(exist_ok=True)
            written = []
            for wf in workflows:
                prompt = apply_overrides(ui_to_api(json.loads(wf.read_text()), info), o)
                print(f"[demo] running {wf.relative_to(REPO)} ...", flush=True)
                result = server.run_prompt(prompt)
                for i, img in enumerate(result["images"]):
                    dest = OUTPUT / f"{wf.stem}_{i:02d}.png"
                    shutil.copyfile(img, dest)
                    written.append(dest)
    except (DemoError, ServerError, WorkflowError) as e:
        print(f"[demo] error: {e}", file=sys.stderr)
        return 1
    if not written:
        print("[demo] error: the workflows produced no image", file=sys.stderr)
        return 1
    print("[demo] images:")
    for p in written:
        print(f"  {p}")
    if not o.get("ckpt_name"):
        print("[demo] these come from the small stand-in models (random weights): expect noise-like patterns.")
        print("[demo] real images: LOOM_CHECKPOINT=/path/model.safetensors LOOM_LORAS=/path/lora.safetensors make demo")
    print("[demo] open the UI with `make serve`, then http://127.0.0.1:8188 (LOOM_PORT to change)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
