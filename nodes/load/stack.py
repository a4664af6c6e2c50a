"""Loom LoRA Stack: many LoRAs (rows, plus a LORA_STACK from other packs) onto a MODEL and its CLIP at once.

The ``rows`` widget holds JSON (the web row editor writes it; people and scripts can too)::

    [{"name": "style.safetensors", "on": true, "model": 0.8, "clip": 0.8, "blocks": "OUT:1, *:0",
      "schedule": "0:1, 1:0.2"}, ...]

name: a LoRA as ComfyUI lists it in ``loras`` (relative path, no ``..``). on: default true; off rows cost nothing
(the file is not even looked up). model / clip: strengths, default 1.0 / the model strength. blocks: block weights
in any form ``lora_math.blocks`` reads (vector, preset, ``IN04:0.5, OUT:1``), default none. schedule: the model
strength over the sampling steps, as a multiplier (``lora_math.schedule`` text: ``0:0.2, 0.4:1, 1:0``, a preset
name, or per block ``IN: 0:1, 1:0 | *: 1``), default none (static). Other keys are errors.

LORA_STACK (the de-facto type of Efficiency, Comfyroll, Easy-Use …) is a list of ``(name, model_weight,
clip_weight)`` tuples. Read: longer tuples (extra items ignored), ``(name, weight)``, bare names, dicts with
name/lora_name + strength keys, and "None" slots (skipped). Written: a plain list of :class:`LoraStackEntry`, a
3-tuple subclass whose ``.blocks`` and ``.schedule`` attributes carry the row's block weights and schedule text. Other packs see ordinary 3-tuples
(unpacking, indexing, ``len`` 3, JSON); a pack that ``extend``s its list with ours keeps the same tuple objects, so
the block weights survive a trip through it to another Loom node; a pack that rebuilds tuples drops only them.
"""

from __future__ import annotations

import json
import logging
import math
import ntpath
import posixpath
from dataclasses import dataclass

from comfy_api.latest import io

from ...lora_math.names import block_weights, blocks, families, keymap
from ...lora_math.schedule import parse_any_schedule
from .. import comfy_bridge
from ..files import lora_files

log = logging.getLogger("lora_loom")

ROW_KEYS = ("name", "on", "model", "clip", "blocks", "schedule")
ROWS_TOOLTIP = (
    'JSON list of rows: [{"name": "a.safetensors", "on": true, "model": 1.0, "clip": 1.0, "blocks": ""}, ...]. '
    "name: a file from the loras list; on: false skips the row without reading it; model/clip: strengths "
    "(clip defaults to model); blocks: block weights, e.g. 'IN:0, OUT:1', a preset (INS, OUTALL, NONE ...) or an "
    "LBW vector (17 values SD1, 12 SDXL, 58 FLUX); schedule: the model strength over the sampling steps as a "
    "multiplier, e.g. '0:0.2, 0.4:1, 1:0' (progress:strength), '@10:0' (step), 'fade_out', or per block "
    "'IN: 0:1, 1:0 | *: 1'."
)


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


def check_name(name: str, where: str) -> None:
    """LoRA names are paths relative to a ``loras`` folder, as ComfyUI lists them: no absolute paths, no ``..``."""
    parts = name.replace("\\", "/").split("/")
    if posixpath.isabs(name) or ntpath.isabs(name) or ntpath.splitdrive(name)[0] or ".." in parts:
        raise ValueError(
            f"{where}: {name!r} is not a LoRA name; use a name from the `loras` list (a path relative to a "
            "`loras` folder); absolute paths and '..' are not allowed"
        )


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


def _block_weights(item: StackItem, parsed, keys, arch: str) -> block_weights.BlockWeights:
    present = blocks.present_blocks(p.key for p in keymap.match(parsed, keys, strict=False).patches)
    return block_weights.parse_block_weights(item.blocks, present, arch, input_name=f"{item.where} blocks")


def parse_item_schedule(item: StackItem):
    """The item's schedule object, or None for a static row; ValueError names the row's ``schedule``."""
    return parse_any_schedule(item.schedule, f"{item.where} schedule") if item.schedule.strip() else None


def _label(item: StackItem) -> str:
    text = f"{item.name} (model {item.model:g}, clip {item.clip:g}"
    return text + (f", blocks {item.blocks.strip()!r})" if item.blocks.strip() else ")")


def build_specs(model, clip, items: list[StackItem]) -> tuple[list[comfy_bridge.LoraSpec], list, list[str]]:
    """Stack items -> (LoRA specs, per item its spec index and label or a skip line, block-weight warnings)."""
    keys, arch = None, None
    specs, order, warnings = [], [], []  # order: per item, its report line or the index of its spec
    for item in items:
        if item.model == 0 and (clip is None or item.clip == 0):
            order.append(f"{_label(item)}: strengths are 0, skipped")
            continue
        parsed = lora_files.load(item.name, item.where)
        weights = None
        if item.blocks.strip():
            if keys is None:
                keys = comfy_bridge.model_keys(model, clip)
                arch = families.from_model_keys(keys)
            weights = _block_weights(item, parsed, keys, arch)
            warnings.extend(weights.warnings)
        block_weight = None if weights is None or weights.is_identity else weights
        order.append((len(specs), _label(item)))
        schedule = parse_item_schedule(item)
        specs.append(
            comfy_bridge.LoraSpec(item.name, parsed, item.model, item.clip, block_weight, item.where, schedule)
        )
    return specs, order, warnings


class LoomLoraStack(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoomLoraStack",
            display_name="Loom LoRA Stack",
            category="loom/loaders",
            description=(
                "Apply a stack of LoRAs (rows with on/off, model and clip strengths, block weights; plus an incoming "
                "LORA_STACK from other packs, applied first) to a model and its CLIP in one step. With no rows it "
                "applies the incoming LORA_STACK."
            ),
            inputs=[
                io.Model.Input("model"),
                io.Clip.Input("clip", optional=True),
                io.String.Input("rows", multiline=True, default="[]", tooltip=ROWS_TOOLTIP),
                io.Custom("LORA_STACK").Input(
                    "lora_stack",
                    optional=True,
                    tooltip="A LORA_STACK (list of (name, model_weight, clip_weight)) from Efficiency, Comfyroll, "
                    "Easy-Use or another Loom stack; applied before the rows.",
                ),
            ],
            outputs=[
                io.Model.Output(),
                io.Clip.Output(),
                io.Custom("LORA_STACK").Output(
                    "stack",  # ids are unique across inputs and outputs; the socket shows LORA_STACK
                    display_name="LORA_STACK",
                    tooltip="The enabled LoRAs (incoming first) as (name, model, clip) tuples, block weights "
                    "attached. Already applied to MODEL/CLIP here: give it to another loader only with the "
                    "unpatched model.",
                ),
                io.String.Output(
                    "report",
                    display_name="report",
                    tooltip="Per LoRA: strengths, block weights, modules matched; warnings.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, rows: str | None = None) -> bool | str:
        """Before anything runs: the JSON's shape, the names of enabled rows, the syntax of their block weights."""
        if rows is None:  # linked from another node: checked when it runs
            return True
        try:
            items = parse_rows(rows)
            known = set(lora_files.lora_names())
            for item in items:
                if not item.on:
                    continue
                if item.name not in known:
                    lora_files.resolve(item.name, item.where)  # raises the message naming the folders
                block_weights.parse_block_weights(item.blocks, None, "unknown", input_name=f"{item.where} blocks")
                parse_item_schedule(item)
        except ValueError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, model, rows: str = "[]", clip=None, lora_stack=None) -> io.NodeOutput:
        items = [*read_lora_stack(lora_stack), *(i for i in parse_rows(rows) if i.on)]
        out_stack = [LoraStackEntry(i.name, i.model, i.clip, i.blocks, i.schedule) for i in items]
        if not items:
            return io.NodeOutput(model, clip, out_stack, "nothing enabled: model and clip unchanged")
        specs, order, warnings = build_specs(model, clip, items)
        new_model, new_clip, reports = comfy_bridge.apply_stack(model, clip, specs)
        lines = []
        for n, entry in enumerate(order, 1):
            if isinstance(entry, tuple):
                index, label = entry
                report = reports[index]
                entry = f"{label}: {report.summary().removeprefix(report.name + ': ')}"
            lines.append(f"{n}. {entry}")
        if warnings:
            log.warning("[LoRA Loom] stack: %s", "; ".join(warnings))
            lines += [f"warning: {w}" for w in warnings]
        return io.NodeOutput(new_model, new_clip, out_stack, "\n".join(lines))
