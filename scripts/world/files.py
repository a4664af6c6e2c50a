"""The world model on disk: the thin weights that are committed (a few MB, fp16), and the full-size SD1.5 checkpoint
ComfyUI loads, expanded from them (``make models`` does this; nothing is retrained).

Thin file: ``vae.*`` and ``unet.*`` (the thin modules' state dicts), ``text.position``, ``text.norm.*``, and the
token-embedding rows the captions use (``text.token_rows`` with their ids in ``text.token_ids``); every other row
is the seeded initial value, regenerated from ``text_seed`` in the metadata.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

try:
    from . import models
except ImportError:
    import models


def _atomic_save(tensors: dict, path: Path, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_thin(path: Path, vae, unet, text: models.TextEmbedding, used_ids, text_seed: int, about: dict) -> None:
    ids = torch.tensor(sorted(set(int(i) for i in used_ids)), dtype=torch.long)
    tensors = {f"vae.{k}": v.detach().half() for k, v in vae.state_dict().items()}
    tensors |= {f"unet.{k}": v.detach().half() for k, v in unet.state_dict().items()}
    tensors["text.position"] = text.position.detach().half()
    tensors["text.norm.weight"] = text.norm.weight.detach().half()
    tensors["text.norm.bias"] = text.norm.bias.detach().half()
    tensors["text.token_ids"] = ids
    tensors["text.token_rows"] = text.token.detach()[ids].half()
    _atomic_save(tensors, path, {"text_seed": str(text_seed), "about": json.dumps(about)})


def load_thin(path: Path):
    """(vae, unet, text) thin modules, fp32, from a thin file."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    vae, unet = models.thin_vae(), models.thin_unet()
    vae.load_state_dict({k[4:]: v.float() for k, v in tensors.items() if k.startswith("vae.")})
    unet.load_state_dict({k[5:]: v.float() for k, v in tensors.items() if k.startswith("unet.")})
    text = models.TextEmbedding(seed=int(meta["text_seed"]))
    with torch.no_grad():
        text.position.copy_(tensors["text.position"].float())
        text.norm.weight.copy_(tensors["text.norm.weight"].float())
        text.norm.bias.copy_(tensors["text.norm.bias"].float())
        text.token[tensors["text.token_ids"]] = tensors["text.token_rows"].float()
    return vae, unet, text


def write_checkpoint(thin: Path, out: Path, dtype=torch.float16) -> None:
    """The full-size SD1.5 checkpoint of a thin file (deterministic: same thin file, same bytes)."""
    vae, unet, text = load_thin(thin)
    with safe_open(str(thin), "pt") as f:
        about = f.metadata().get("about", "{}")
    tensors = {k: v.to(dtype) for k, v in models.export(vae, unet, text).items()}
    _atomic_save(
        tensors, out, {"loom_world": about, "loom_note": "LoRA Loom's tiny world model (scripts/make_world.py)"}
    )
