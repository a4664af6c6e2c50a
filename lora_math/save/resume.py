"""The resume file of a trained LoRA, and reading a trained LoRA back to continue it.

The resume file ``<stem>.loom-state`` (next to ``<stem>.safetensors``; trained LoRAs only) is a safetensors file, never a pickle. Its
extension is deliberately not ``.safetensors`` so no LoRA list (ComfyUI, A1111, Forge …) offers it as a LoRA. It holds:

- ``module.{i}.down`` / ``module.{i}.up``: the exact fp32 factors of module ``i`` (``param_keys[i]`` in the JSON);
- ``state.{p}.{name}``: every tensor of the optimizer state of parameter ``p`` (AdamW: ``step``, ``exp_avg``,
  ``exp_avg_sq``; ``max_exp_avg_sq`` with amsgrad), where parameter ``p = 2 i`` is module ``i``'s ``down`` and
  ``p = 2 i + 1`` its ``up`` (the order of ``LoraFactors.parameters()``, which the optimizer was built on);
- header metadata ``loom_resume`` (JSON): ``format`` 1, ``param_keys``, ``param_order`` ("down,up per module"),
  ``param_groups`` (the optimizer hyper-parameters: lr, betas, eps, weight_decay …, with ``params`` as indices),
  ``state_extra`` (non-tensor state values), ``step``, ``rank``, ``alpha``, ``arch``, ``settings``, ``dataset``,
  ``base`` (without ``model_keys``), ``interrupted``; plus ``loss_history`` as an fp32 tensor.

:func:`load_resume_state` rebuilds ``(modules, optimizer_state_dict, step, settings)``; loading that state dict into a
fresh optimizer over the same parameter order continues bit-exactly like the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import safe_open
from torch import Tensor

from .metadata import json_safe
from .result import LoomLoRA

STATE_SUFFIX = ".loom-state"
RESUME_FORMAT = 1


class ResumeState(NamedTuple):
    """What :func:`load_resume_state` returns: fp32 factors, a ``torch.optim`` state dict, steps done, settings."""

    modules: dict[str, tuple[Tensor, Tensor]]
    optimizer_state: dict[str, Any] | None
    step: int
    settings: dict[str, Any]


def state_path(path: str | os.PathLike) -> Path:
    """The resume file beside a saved LoRA: ``x/name.safetensors`` -> ``x/name.loom-state``."""
    path = Path(path)
    if path.suffix == STATE_SUFFIX:
        return path
    return path.with_name(path.stem + STATE_SUFFIX if path.suffix == ".safetensors" else path.name + STATE_SUFFIX)


def resume_payload(lora: LoomLoRA) -> tuple[dict[str, Tensor], dict[str, str]]:
    keys = list(lora.modules)
    tensors: dict[str, Tensor] = {}
    for i, key in enumerate(keys):
        down, up = lora.modules[key]
        tensors[f"module.{i}.down"] = down.detach().to("cpu", torch.float32).contiguous()
        tensors[f"module.{i}.up"] = up.detach().to("cpu", torch.float32).contiguous()
    groups: list | None = None
    extra: dict[str, dict[str, Any]] = {}
    if lora.optimizer_state:
        state = lora.optimizer_state.get("state", {})
        n_params = 2 * len(keys)
        for p, entries in state.items():
            p = int(p)
            if not 0 <= p < n_params:
                raise ValueError(
                    f"optimizer state: parameter {p} is out of range for {len(keys)} modules (down, up each); "
                    "the optimizer must be built on LoraFactors.parameters()"
                )
            shape = tuple(tensors[f"module.{p // 2}.{'up' if p % 2 else 'down'}"].shape)
            for name, value in entries.items():
                if isinstance(value, Tensor):
                    if value.ndim and tuple(value.shape) != shape:
                        raise ValueError(
                            f"optimizer state: {name} of parameter {p} has shape {tuple(value.shape)}, not {shape}: "
                            "parameters are not in LoraFactors.parameters() order (down, up per module)"
                        )
                    tensors[f"state.{p}.{name}"] = value.detach().cpu().contiguous()
                else:
                    extra.setdefault(str(p), {})[name] = json_safe(value)
        groups = json_safe(list(lora.optimizer_state.get("param_groups", [])))
    if lora.loss_history:
        tensors["loss_history"] = torch.tensor([float(x) for x in lora.loss_history], dtype=torch.float32)
    doc = {
        "format": RESUME_FORMAT,
        "param_keys": keys,
        "param_order": "down,up per module: parameter 2*i is module i's down, 2*i+1 its up",
        "param_groups": groups,
        "state_extra": extra,
        "step": int(lora.step),
        "rank": int(lora.rank),
        "alpha": float(lora.alpha),
        "arch": lora.arch,
        "settings": json_safe(dict(lora.settings)),
        "dataset": json_safe(dict(lora.dataset)),
        "base": json_safe({k: v for k, v in lora.base.items() if k not in ("model_keys", "module_paths")}),
        "interrupted": bool(lora.interrupted),
    }
    if lora.module_alpha is not None:
        doc["module_alpha"] = {str(k): float(v) for k, v in lora.module_alpha.items()}
    return tensors, {"loom_resume": json.dumps(doc, default=str)}


def _read_resume(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    path = state_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no resume state beside this LoRA (saved without one, or moved)")
    with safe_open(str(path), framework="pt", device="cpu") as fh:
        meta = fh.metadata() or {}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    try:
        doc = json.loads(meta["loom_resume"])
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: not a LoRA Loom resume file (no loom_resume header)") from e
    if doc.get("format") != RESUME_FORMAT:
        raise ValueError(f"{path}: resume format {doc.get('format')!r} is not {RESUME_FORMAT}; update LoRA Loom")
    return tensors, doc


def load_resume_state(path: str | os.PathLike) -> ResumeState:
    """Read ``<stem>.loom-state`` (``path`` may be the LoRA file or the state file itself).

    Returns fp32 ``modules`` (``key -> (down, up)``, the exact masters), a ``torch.optim`` ``state_dict`` for an
    optimizer built on the same parameter order (``LoraFactors.parameters()``: down, up per module, modules in
    ``modules`` order) or None when none was saved, the steps done and the training settings.
    """
    tensors, doc = _read_resume(path)
    keys = doc["param_keys"]
    modules = {k: (tensors[f"module.{i}.down"], tensors[f"module.{i}.up"]) for i, k in enumerate(keys)}
    optimizer_state = None
    if doc.get("param_groups") is not None:
        state: dict[int, dict[str, Any]] = {}
        for name, t in tensors.items():
            m = re.fullmatch(r"state\.(\d+)\.(.+)", name)
            if m:
                state.setdefault(int(m.group(1)), {})[m.group(2)] = t
        for p, values in doc.get("state_extra", {}).items():
            state.setdefault(int(p), {}).update(values)
        groups = []
        for group in doc["param_groups"]:
            group = dict(group)
            if isinstance(group.get("betas"), list):
                group["betas"] = tuple(group["betas"])
            groups.append(group)
        optimizer_state = {"state": dict(sorted(state.items())), "param_groups": groups}
    return ResumeState(modules, optimizer_state, int(doc["step"]), dict(doc.get("settings") or {}))


def load_trained(path: str | os.PathLike) -> LoomLoRA:
    """A :class:`LoomLoRA` rebuilt from a resume file (fp32 masters, optimizer state, step, loss history …)."""
    tensors, doc = _read_resume(path)
    resumed = load_resume_state(path)
    history = tensors.get("loss_history")
    return LoomLoRA(
        modules=resumed.modules,
        alpha=float(doc["alpha"]),
        rank=int(doc["rank"]),
        arch=str(doc["arch"]),
        settings=resumed.settings,
        dataset=dict(doc.get("dataset") or {}),
        base=dict(doc.get("base") or {}),
        step=resumed.step,
        loss_history=history.tolist() if history is not None else [],
        optimizer_state=resumed.optimizer_state,
        interrupted=bool(doc.get("interrupted")),
        module_alpha=doc.get("module_alpha"),
    )
