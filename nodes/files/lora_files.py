"""Finding and reading LoRA files from ComfyUI's `loras` folders, with a small bounded cache."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from pathlib import Path

import folder_paths

from ...lora_math import formats
from ...lora_math.formats import io

_CACHE_SIZE = 16
_cache: OrderedDict[tuple, formats.ParsedLoRA] = OrderedDict()
_lock = threading.Lock()


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
    parts = Path(name.replace("\\", "/")).parts
    if not name or Path(name).is_absolute() or ".." in parts:
        raise ValueError(
            f"{input_name}: '{name}' is not a LoRA name: use a name from the `loras` list "
            "(a file under a `loras` folder; no absolute paths, no '..')"
        )
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
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    try:
        tensors, metadata = io.load_state_dict(path)
        parsed = formats.parse(tensors, metadata, _sidecar_config(path))
    except ValueError as e:
        raise ValueError(f"{input_name}: {e}") from e
    with _lock:
        _cache[key] = parsed
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return parsed


_hashes: dict[tuple[str, int, int], str] = {}


def sha256(name: str, input_name: str = "lora_name") -> str:
    """The file's sha256 (hex), read once per (path, size, mtime): merged files name their sources by it."""
    path = resolve(name, input_name)
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _lock:
        if key in _hashes:
            return _hashes[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    with _lock:
        _hashes[key] = digest.hexdigest()
    return _hashes[key]
