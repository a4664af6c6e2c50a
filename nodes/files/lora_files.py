"""Finding and reading LoRA files from ComfyUI's `loras` folders, with a small bounded cache."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import folder_paths

from ...lora_math import formats
from ...lora_math.formats import io
from ...lora_math.lru import LRU
from ...lora_math.stack import check_name

# (path, size, mtime) -> parsed file / sha256: a changed file is a new key; bounded, least recently used out first
_cache: LRU[tuple, formats.ParsedLoRA] = LRU(16)
_hashes: LRU[tuple, str] = LRU(256)


def lora_names() -> list[str]:
    return folder_paths.get_filename_list("loras")


def validate(name: str | None, input_name: str = "lora_name") -> bool | str:
    """For ``validate_inputs``: True, or the message naming the input (ComfyUI does not check V3 combos itself)."""
    if name is None:  # linked from another node: checked when it runs
        return True
    try:
        resolve(name, input_name)
    except ValueError as e:
        return str(e)
    return True


def resolve(name: str, input_name: str = "lora_name") -> Path:
    check_name(name, input_name)
    path = folder_paths.get_full_path("loras", name)
    if path is None:
        raise ValueError(
            f"{input_name}: LoRA '{name}' is not in any `loras` folder "
            f"({', '.join(folder_paths.get_folder_paths('loras'))}); pick one from the list or add the file there"
        )
    return Path(path)


def _sidecar_config(path: Path) -> dict | None:
    """PEFT writes alpha into adapter_config.json next to the weights, not into the file."""
    for candidate in (path.with_name("adapter_config.json"), path.with_suffix(".json")):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and ("lora_alpha" in data or "r" in data):
                return data
    return None


def load(name: str, input_name: str = "lora_name") -> formats.ParsedLoRA:
    """Parse a LoRA once per (path, size, mtime); the parsed form is immutable, so sharing it is safe."""
    path = resolve(name, input_name)
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    cached = _cache.get(key)
    if cached is not None:
        return cached
    try:
        tensors, metadata = io.load_state_dict(path)
        parsed = formats.parse(tensors, metadata, _sidecar_config(path))
    except ValueError as e:
        raise ValueError(f"{input_name}: {e}") from e
    _cache.put(key, parsed)
    return parsed


def sha256(name: str, input_name: str = "lora_name") -> str:
    """The file's sha256 (hex), read once per (path, size, mtime): merged files name their sources by it."""
    path = resolve(name, input_name)
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    cached = _hashes.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return _hashes.put(key, digest.hexdigest())
