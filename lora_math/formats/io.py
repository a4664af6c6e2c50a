"""Reading LoRA files: safetensors only, checked before the Rust loader sees them.

The header is parsed here first (8-byte little-endian length, JSON, every tensor's byte range inside the file) so a
truncated download or a renamed PyTorch checkpoint gets a message that names the file and says what to do, instead of
a ``SafetensorError`` or a Rust panic. Pickle containers (``.ckpt``, ``.pt``, ...) are refused unread: unpickling runs
arbitrary code.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from ..errors import LoraFileError

__all__ = ["PICKLE_SUFFIXES", "load_state_dict", "read_header"]

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
_MAX_HEADER = 100_000_000  # the safetensors format's own limit
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save since 1.6 writes a zip
_PICKLE_PROTOCOLS = {2, 3, 4, 5}  # b"\x80" + protocol byte opens every modern pickle
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
_PICKLE_ADVICE = (
    "pickle files are never unpickled (loading one can run arbitrary code); convert it to .safetensors "
    "(e.g. safetensors.torch.save_file on a trusted machine) or download the .safetensors version"
)


def _refuse_pickle(path: Path, why: str) -> LoraFileError:
    return LoraFileError(f"{path}: {why}; {_PICKLE_ADVICE}")


def _looks_pickled(head: bytes) -> bool:
    return head[:4] == _ZIP_MAGIC or (head[:1] == b"\x80" and len(head) > 1 and head[1] in _PICKLE_PROTOCOLS)


def _check_entry(path: Path, key: str, entry: Any, data_len: int) -> None:
    """One tensor's header entry: dtype, shape, and a byte range inside the data section that fits its size."""
    if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str) and isinstance(entry.get("shape"), list)):
        raise LoraFileError(f"{path}: corrupt safetensors header: entry for {key!r} lacks dtype/shape; re-download it")
    offsets = entry.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise LoraFileError(f"{path}: corrupt safetensors header: {key!r} has data_offsets {offsets!r}; re-download it")
    begin, end = offsets
    if end > data_len:
        raise LoraFileError(
            f"{path}: truncated: tensor {key!r} needs data bytes up to {end} but the file holds only {data_len}; "
            "the download is incomplete, re-download it"
        )
    if not 0 <= begin <= end:
        raise LoraFileError(f"{path}: corrupt safetensors header: {key!r} has data_offsets {offsets}; re-download it")
    itemsize = _DTYPE_BYTES.get(entry["dtype"])
    shape = entry["shape"]
    if itemsize is not None and all(isinstance(d, int) and d >= 0 for d in shape):
        if end - begin != math.prod(shape) * itemsize:
            raise LoraFileError(
                f"{path}: corrupt safetensors header: {key!r} is {entry['dtype']} {shape} "
                f"({math.prod(shape) * itemsize} bytes) but spans {end - begin} bytes; re-download it"
            )


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Validate a safetensors file's framing and return (tensor entries, metadata) from its JSON header.

    Raises :class:`LoraFileError` for pickle containers (by extension or content), truncated files, bad JSON and
    byte ranges outside the file. Reads only the header, never the tensor data.
    """
    p = Path(path)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise _refuse_pickle(p, f"refusing a {p.suffix} file")
    size = p.stat().st_size
    with p.open("rb") as f:
        head = f.read(9)
        n = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
        # Check the framing before the magic bytes: a genuine header length can start with 0x80 (e.g. 640 bytes).
        plausible = 2 <= n <= min(size - 8, _MAX_HEADER) and head[8:9] == b"{"
        if not plausible:
            if _looks_pickled(head):
                raise _refuse_pickle(p, "this is a PyTorch/pickle file (zip or pickle magic bytes), not safetensors")
            if len(head) < 8:
                raise LoraFileError(
                    f"{p}: truncated: {size} bytes, shorter than a safetensors header; the download is incomplete, "
                    "re-download it"
                )
            if n > size - 8:
                raise LoraFileError(
                    f"{p}: truncated: its header claims {n} bytes but only {size - 8} follow; the download is "
                    "incomplete, re-download it"
                )
            raise LoraFileError(f"{p}: not a safetensors file (no JSON header); re-download it or convert it")
        raw = head[8:] + f.read(n - 1)  # the header's first byte was read with the length prefix
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoraFileError(f"{p}: corrupt safetensors header (invalid JSON: {exc}); re-download it") from exc
    if not isinstance(header, dict):
        raise LoraFileError(f"{p}: corrupt safetensors header (expected a JSON object); re-download it")
    metadata = header.pop("__metadata__", None) or {}
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise LoraFileError(f"{p}: corrupt safetensors header: __metadata__ must map strings to strings")
    data_len = size - 8 - n
    for key, entry in header.items():
        _check_entry(p, key, entry, data_len)
    return header, metadata


def _first_nonfinite(tensors: dict[str, Tensor]) -> tuple[str, int] | None:
    """(first key holding NaN/Inf, number of such keys), or None."""
    bad = []
    for key, t in tensors.items():
        if not t.is_floating_point() or t.numel() == 0:
            continue
        # isfinite has no 1-byte float kernels; float8 tensors are small enough to upcast.
        values = t.float() if t.element_size() == 1 else t
        if not bool(torch.isfinite(values).all()):
            bad.append(key)
    return (bad[0], len(bad)) if bad else None


def load_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Load a ``.safetensors`` LoRA on CPU: (tensors by key, header metadata; ``{}`` when the file has none).

    Raises :class:`LoraFileError` naming the file (and the key where there is one) for pickle containers, truncated or
    corrupt files, and tensors holding NaN or Inf.
    """
    p = Path(path)
    _, metadata = read_header(p)
    try:
        tensors = load_file(p, device="cpu")
    except SafetensorError as exc:
        raise LoraFileError(f"{p}: corrupt safetensors file ({exc}); re-download it") from exc
    found = _first_nonfinite(tensors)
    if found is not None:
        key, count = found
        others = f" (and {count - 1} more keys)" if count > 1 else ""
        raise LoraFileError(
            f"{p}: tensor {key!r}{others} holds NaN or Inf values; the LoRA is broken (diverged training or a bad "
            "conversion), re-download or re-export it"
        )
    return tensors, dict(metadata)
