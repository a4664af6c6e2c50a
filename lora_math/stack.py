"""The LORA_STACK type and its readers, pure: Loom's rows JSON and the tuples, dicts and names other packs pass.

LORA_STACK (the de-facto type of Efficiency, Comfyroll, Easy-Use …) is a list of ``(name, model_weight,
clip_weight)`` tuples. Read: longer tuples (extra items ignored), ``(name, weight)``, bare names, dicts with
name/lora_name + strength keys, and "None" slots (skipped). Written: a plain list of :class:`LoraStackEntry`, a
3-tuple subclass whose ``.blocks`` and ``.schedule`` attributes carry the row's block weights and schedule text.
Other packs see ordinary 3-tuples (unpacking, indexing, ``len`` 3, JSON); a pack that ``extend``s its list with
ours keeps the same tuple objects, so the block weights survive a trip through it to another Loom node; a pack
that rebuilds tuples drops only them.

Rows (the Loom LoRA Stack node's ``rows`` widget): ``[{"name": "style.safetensors", "on": true, "model": 0.8,
"clip": 0.8, "blocks": "OUT:1, *:0", "schedule": "0:1, 1:0.2"}, ...]``; see :data:`ROW_KEYS`.
"""

from __future__ import annotations

import json
import math
import ntpath
import posixpath
from dataclasses import dataclass

__all__ = ["ROW_KEYS", "LoraStackEntry", "StackItem", "check_name", "parse_rows", "read_lora_stack"]

ROW_KEYS = ("name", "on", "model", "clip", "blocks", "schedule")
_LIST_HINT = "use a name from the `loras` list (a path relative to a `loras` folder; no absolute paths, no '..')"


class LoraStackEntry(tuple):
    """``(name, strength_model, strength_clip)`` for every LORA_STACK reader, with Loom's block weights as ``.blocks``."""

    blocks: str
    schedule: str

    def __new__(cls, name: str, strength_model: float, strength_clip: float, blocks: str = "", schedule: str = ""):
        entry = super().__new__(cls, (name, float(strength_model), float(strength_clip)))
        entry.blocks = blocks
        entry.schedule = schedule
        return entry

    def __getnewargs__(self):  # pickle / copy rebuild it through __new__ with all five values
        return (*self, self.blocks, self.schedule)


@dataclass(frozen=True)
class StackItem:
    """One LoRA to apply; ``where`` names the input and position for error messages (``rows: row 2``)."""

    name: str
    model: float
    clip: float
    blocks: str
    on: bool
    where: str
    schedule: str = ""


def check_name(name: str, where: str, hint: str = _LIST_HINT) -> tuple[str, ...]:
    """The parts of a LoRA name: a path relative to a ``loras`` folder (``/`` or ``\\`` separated), as ComfyUI lists
    them. ValueError naming ``where`` for an empty name, an absolute path (POSIX, a Windows drive or share) or one
    that leaves the folder (``..``); ``hint`` says what to give instead. The one check of every LoRA name: the
    stack's rows and LORA_STACK entries, the loaders' files, Save LoRA's ``filename_prefix``."""
    parts = tuple(name.replace("\\", "/").split("/")) if name else ()
    if not name:
        why = "it is empty"
    elif posixpath.isabs(name) or ntpath.isabs(name) or ntpath.splitdrive(name)[0]:
        why = "it is an absolute path"
    elif ".." in parts:
        why = "it leaves the `loras` folder ('..')"
    else:
        return parts
    raise ValueError(f"{where}: {name!r} is not a LoRA name: {why}; {hint}")


def _strength(value, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}: {key!r} must be a finite number, found {json.dumps(value)}")
    return float(value)


def parse_rows(text: str | None) -> list[StackItem]:
    """The ``rows`` JSON as stack items (off rows included). Raises ValueError naming ``rows`` and the position."""
    if text is None or not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"rows: not valid JSON at line {e.lineno} column {e.colno} (character {e.pos + 1}): {e.msg}"
        ) from None
    if not isinstance(data, list):
        raise ValueError(f'rows: expected a JSON list of rows like [{{"name": "a.safetensors"}}], found {_kind(data)}')
    items = []
    for i, row in enumerate(data, 1):
        where = f"rows: row {i}"
        if not isinstance(row, dict):
            raise ValueError(f'{where}: expected an object like {{"name": "a.safetensors"}}, found {_kind(row)}')
        unknown = [k for k in row if k not in ROW_KEYS]
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r}; a row has {', '.join(ROW_KEYS)}")
        on = row.get("on", True)
        if not isinstance(on, bool):
            raise ValueError(f"{where}: 'on' must be true or false, found {json.dumps(on)}")
        name = row.get("name", "")
        if not isinstance(name, str):
            raise ValueError(f"{where}: 'name' must be a string, found {json.dumps(name)}")
        if on and not name.strip():
            raise ValueError(f"{where}: 'name' is empty; pick a LoRA or turn the row off")
        if name:
            check_name(name, where)
        model = _strength(row.get("model", 1.0), where, "model")
        clip = _strength(row.get("clip", model), where, "clip")
        blocks_text = row.get("blocks", "")
        if not isinstance(blocks_text, str):
            raise ValueError(f"{where}: 'blocks' must be a string, found {json.dumps(blocks_text)}")
        schedule = row.get("schedule", "")
        if not isinstance(schedule, str):
            raise ValueError(f"{where}: 'schedule' must be a string, found {json.dumps(schedule)}")
        items.append(StackItem(name, model, clip, blocks_text, on, where, schedule))
    return items


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(type(value), "a number")


_NAME_KEYS = ("name", "lora_name", "lora", "path")
_MODEL_KEYS = ("strength_model", "model_strength", "model_weight", "model", "strength", "weight")
_CLIP_KEYS = ("strength_clip", "clip_strength", "clip_weight", "clip")


def _number(value, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise ValueError(f"{where}: strength {value!r} is not a finite number")
    return number


def read_lora_stack(stack) -> list[StackItem]:
    """A LORA_STACK from any pack as stack items; None (a switched-off stacker) is empty."""
    if stack is None:
        return []
    if not isinstance(stack, list | tuple):
        raise ValueError(
            f"lora_stack: expected a list of (name, model_weight, clip_weight) tuples, found {type(stack).__name__}"
        )
    items = []
    for i, entry in enumerate(stack, 1):
        where = f"lora_stack: entry {i}"
        blocks_text = getattr(entry, "blocks", "")
        schedule = getattr(entry, "schedule", "")
        if isinstance(entry, str):
            name, model, clip = entry, 1.0, None
        elif isinstance(entry, list | tuple) and entry:
            name = entry[0]
            model = entry[1] if len(entry) > 1 else 1.0
            clip = entry[2] if len(entry) > 2 else None
        elif isinstance(entry, dict):
            if entry.get("on", entry.get("enabled", True)) is False:
                continue
            name = next((entry[k] for k in _NAME_KEYS if k in entry), None)
            model = next((entry[k] for k in _MODEL_KEYS if k in entry), 1.0)
            clip = next((entry[k] for k in _CLIP_KEYS if k in entry), None)
            blocks_text = entry.get("blocks", blocks_text)
            schedule = entry.get("schedule", schedule)
        else:
            raise ValueError(f"{where}: expected a (name, model_weight, clip_weight) tuple, found {entry!r}")
        if name is None or (isinstance(name, str) and name.strip() in ("", "None")):
            continue  # an empty slot of a stacker
        if not isinstance(name, str):
            raise ValueError(f"{where}: the LoRA name must be a string, found {name!r}")
        if not isinstance(blocks_text, str):
            raise ValueError(f"{where}: block weights must be a string, found {blocks_text!r}")
        if not isinstance(schedule, str):
            raise ValueError(f"{where}: a schedule must be text, found {schedule!r}")
        check_name(name, where)
        model = _number(model, where)
        clip = model if clip is None else _number(clip, where)
        items.append(StackItem(name, model, clip, blocks_text, True, where, schedule))
    return items
