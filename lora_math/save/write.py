"""Writing a LoRA file (and a trained LoRA's resume file) atomically: temp file, fsync, rename; never a
half-written file, never a silent overwrite."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save as st_save

from .metadata import metadata
from .result import LoomLoRA
from .resume import resume_payload, state_path
from .state_dict import to_state_dict


def _write_temp(folder: Path, final_name: str, payload: bytes) -> Path:
    """Write ``payload`` to a hidden temp file in ``folder`` (flushed and fsynced); removed again on any error."""
    # Not tempfile.mkstemp: its 0600 mode would stick to the saved file; os.open's 0666 lets the umask decide.
    tmp = folder / f".{final_name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _exists_error(path: Path) -> FileExistsError:
    return FileExistsError(
        f"filename_prefix: {path} already exists; choose another filename_prefix, or set overwrite to true to "
        "replace it"
    )


def _commit_new(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` only if ``path`` does not exist (a hard link is atomic and never clobbers)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _exists_error(path) from None
    except OSError:  # file systems without hard links: check, then rename (a tiny race window)
        if path.exists():
            raise _exists_error(path) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def save(
    path: str | os.PathLike,
    lora: LoomLoRA,
    names: Mapping[str, str],
    scope: str,
    name: str,
    overwrite: bool = False,
    dtype: torch.dtype = torch.float16,
    *,
    started_at: float | None = None,
    finished_at: float | None = None,
) -> Path:
    """Write ``path`` (kohya safetensors) and, for a trained LoRA, its resume file ``<stem>.loom-state`` atomically;
    returns ``path``.

    The files are serialised in memory first and written to hidden temp files in the target folder, fsynced, then
    renamed into place; on any error the temp files are removed and no half-written file is left. An existing
    ``path`` is refused (FileExistsError naming ``filename_prefix`` / ``overwrite``) unless ``overwrite``.
    A utility's result (``lora.operation`` other than ``train``) gets no resume file and no ``loom_resume_file``
    header; when it overwrites a trained LoRA, that LoRA's resume file (which no longer matches) is removed.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a LoRA file must end in .safetensors")
    folder = path.parent
    if not overwrite and path.exists():
        raise _exists_error(path)
    trained = lora.operation == "train"
    tensors = to_state_dict(lora, names, dtype)
    header = metadata(lora, scope, name, started_at=started_at, finished_at=finished_at)
    if trained:
        header["loom_resume_file"] = state_path(path).name
    main_bytes = st_save(tensors, metadata=header)
    state_bytes: bytes | None = None
    if trained:
        state_tensors, state_header = resume_payload(lora)
        state_bytes = st_save(state_tensors, metadata=state_header)
        del state_tensors
    del tensors

    folder.mkdir(parents=True, exist_ok=True)
    sidecar = state_path(path)
    replaced = overwrite and path.exists()
    temps: list[Path] = []
    committed: Path | None = None
    try:
        temps.append(_write_temp(folder, path.name, main_bytes))
        if state_bytes is not None:
            temps.append(_write_temp(folder, sidecar.name, state_bytes))
        main_tmp = temps[0]
        if overwrite:
            os.replace(main_tmp, path)
        else:
            _commit_new(main_tmp, path)
        committed = path
        if state_bytes is not None:
            os.replace(temps[1], sidecar)
        committed = None
    except BaseException:
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if committed is not None:  # the LoRA is in place but its resume state is not: take it back out
            with contextlib.suppress(OSError):
                os.unlink(committed)
        raise
    if state_bytes is None and replaced:  # the replaced LoRA's resume state would resume something else
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sidecar)
    return path
