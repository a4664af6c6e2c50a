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

import dataclasses
import logging

from comfy_api.latest import io

from ...lora_math.names import block_weights, blocks, families
from ...lora_math.schedule import parse_any_schedule
from ...lora_math.stack import LoraStackEntry, StackItem, parse_rows, read_lora_stack
from .. import comfy_bridge
from ..files import lora_files

log = logging.getLogger("lora_loom")

ROWS_TOOLTIP = (
    'JSON list of rows: [{"name": "a.safetensors", "on": true, "model": 1.0, "clip": 1.0, "blocks": ""}, ...]. '
    "name: a file from the loras list; on: false skips the row without reading it; model/clip: strengths "
    "(clip defaults to model); blocks: block weights, e.g. 'IN:0, OUT:1', a preset (INS, OUTALL, NONE ...) or an "
    "LBW vector (17 values SD1, 12 SDXL, 58 FLUX); schedule: the model strength over the sampling steps as a "
    "multiplier, e.g. '0:0.2, 0.4:1, 1:0' (progress:strength), '@10:0' (step), 'fade_out', or per block "
    "'IN: 0:1, 1:0 | *: 1'."
)


def parse_item_schedule(item: StackItem):
    """The item's schedule object, or None for a static row; ValueError names the row's ``schedule``."""
    return parse_any_schedule(item.schedule, f"{item.where} schedule") if item.schedule.strip() else None


def _label(item: StackItem) -> str:
    text = f"{item.name} (model {item.model:g}, clip {item.clip:g}"
    return text + (f", blocks {item.blocks.strip()!r})" if item.blocks.strip() else ")")


def build_specs(model, clip, items: list[StackItem]) -> tuple[list[comfy_bridge.LoraSpec], list, list[str]]:
    """Stack items -> (LoRA specs, per item its spec index and label or a skip line, block-weight warnings)."""
    arch = None
    specs, order, warnings = [], [], []  # order: per item, its report line or the index of its spec
    for item in items:
        if item.model == 0 and (clip is None or item.clip == 0):
            order.append(f"{_label(item)}: strengths are 0, skipped")
            continue
        parsed = lora_files.load(item.name, item.where)
        spec = comfy_bridge.LoraSpec(
            item.name, parsed, item.model, item.clip, None, item.where, parse_item_schedule(item)
        )
        if item.blocks.strip():  # the block ids its patches touch, from the match apply_stack reuses (cached)
            arch = arch or families.from_model_keys(comfy_bridge.model_keys(model, clip))
            present = blocks.present_blocks(p.key for p in comfy_bridge.match_spec(spec, model, clip).patches)
            weights = block_weights.parse_block_weights(item.blocks, present, arch, input_name=f"{item.where} blocks")
            warnings.extend(weights.warnings)
            if not weights.is_identity:
                spec = dataclasses.replace(spec, block_weight=weights)
        order.append((len(specs), _label(item)))
        specs.append(spec)
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
