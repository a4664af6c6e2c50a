"""Shared bench plumbing: `python bench/<name>.py [--gpu] [--json]` prints one JSON object.

CPU by default, on the small stand-in models; `--gpu` builds full-size architectures with random
weights on CUDA. Every bench measures ComfyUI core in the same process and reports the ratio.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))


def parse_args(description: str, extra=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--gpu", action="store_true", help="full-size model with random weights on CUDA")
    ap.add_argument("--json", action="store_true", help="print one JSON object (default: also a short table)")
    ap.add_argument("--repeat", type=int, default=5)
    if extra:
        extra(ap)
    return ap.parse_args()


def setup(gpu: bool):
    from comfy_env import import_comfy, load_pack, register_model_folders

    import_comfy(cpu=not gpu)
    register_model_folders()
    import torch

    if gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu needs CUDA, and torch sees no GPU here")
    return load_pack()


def device_name(gpu: bool) -> str:
    import torch

    if gpu:
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def sync():
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn, repeat: int, warmup: int = 1) -> float:
    """Median wall time of fn() in seconds, GPU work included."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def emit(result: dict, as_json: bool) -> None:
    result.setdefault("date", datetime.date.today().isoformat())
    if not as_json:
        for k, v in result.items():
            print(f"{k:>28}: {v}", file=sys.stderr)
    print(json.dumps(result, sort_keys=True))
