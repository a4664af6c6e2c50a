"""ComfyUI side of the stack analysis and LoRA utilities: which weights a stack's LoRAs update, by how much,
against which base weights; and turning per-weight plain-LoRA results into a LOOM_LORA that Save LoRA writes.

The math is ``lora_math.lowrank`` / ``lora_math.interference``; this module only reads ComfyUI objects (key
matches as the loaders make them, original weights from the patchers) and runs the math on ComfyUI's torch device,
so merges and extractions use the GPU when there is one.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import comfy.model_management
import torch

from ...lora_math.adapters import Full
from ...lora_math.lowrank.delta import Compressed, Delta, adapter_delta
from ...lora_math.lowrank.interference import block_of
from ...lora_math.names import families
from ...lora_math.save.result import LoomLoRA
from ...lora_math.schedule import BlockSchedules
from .. import comfy_bridge
from ..files import lora_files
from ..load import stack
from ..train import engine

UNET = "diffusion_model."


def device() -> torch.device:
    return comfy.model_management.get_torch_device()


def specs_of(model, clip, lora_stack, input_name: str = "lora_stack") -> list[comfy_bridge.LoraSpec]:
    """The LoRAs of a LORA_STACK, parsed and with block weights, as the stack node would apply them."""
    items = stack.read_lora_stack(lora_stack)
    specs, _, warnings = stack.build_specs(model, clip, items) if items else ([], [], [])
    if not specs:
        raise ValueError(
            f"{input_name}: the stack is empty (or every LoRA in it is at strength 0); connect a LORA_STACK from "
            "Loom LoRA Stack or another stacker with at least one LoRA"
        )
    return specs


def check_one_base(specs: Sequence[comfy_bridge.LoraSpec], input_name: str = "lora_stack") -> None:
    """LoRAs made for different base models cannot be combined: name the first pair that disagree. Families whose
    LoRAs fit each other's weights (Chroma and FLUX.1, the SD3.5 sizes' shared names) count as one
    (``families.group_of``); their shapes are checked against the model anyway."""
    seen: dict[str, comfy_bridge.LoraSpec] = {}
    for spec in specs:
        guess = families.from_file(spec.parsed)
        if guess == "unknown":
            continue
        other = next(iter(seen.values()), None)
        if seen and families.group_of(guess) not in seen:
            first = families.from_file(other.parsed)
            raise ValueError(
                f"{input_name}: '{spec.name}' is a {guess} LoRA but '{other.name}' is a {first} LoRA; LoRAs for "
                "different base models cannot be combined: remove one of them from the stack"
            )
        seen.setdefault(families.group_of(guess), spec)


def _peak(schedule, key: str) -> float:
    """A scheduled LoRA is measured at the largest strength its schedule reaches on that weight."""
    if schedule is None:
        return 1.0
    s = schedule.for_key(key) if isinstance(schedule, BlockSchedules) else schedule
    return max(abs(v) for _, v in s.keyframes)


@dataclass
class WeightUpdates:
    """One targeted weight: its shape, which side of the stack's strengths act on it, each LoRA's update."""

    key: str
    part: str  # "model" | "clip"
    shape: tuple[int, ...]
    deltas: list[Delta | None]


@dataclass
class StackUpdates:
    weights: list[WeightUpdates]
    left_out: collections.Counter  # why patches were not taken: "bias/norm" …
    scheduled: tuple[str, ...]  # names of the LoRAs measured at their schedule's peak
    dora: int = 0  # DoRA modules, taken as their update against the original weight (not additive)
    # biases and 1-D weights (norms): the stack's summed full update, fp32 CPU, carried over as it is
    diffs: dict[str, torch.Tensor] = field(default_factory=dict)


def stack_updates(model, clip, specs: Sequence[comfy_bridge.LoraSpec], on: torch.device | None = None) -> StackUpdates:
    """Every layer weight the stack's LoRAs patch, each LoRA's ``strength · blocks · ΔW`` on it (factored)."""
    on = on or device()
    model_keys = comfy_bridge.model_keys(model) if model is not None else {}
    clip_keys = comfy_bridge.model_keys(None, clip) if clip is not None else {}
    by_key: dict[str, WeightUpdates] = {}
    left_out: collections.Counter = collections.Counter()
    diffs: dict[str, torch.Tensor] = {}
    dora = 0
    for index, spec in enumerate(specs):
        match = comfy_bridge.match_spec(spec, model, clip)
        for p in match.patches:
            if p.key in model_keys:
                part, patcher, shape, strength = "model", model, model_keys[p.key], spec.strength_model
                strength *= _peak(spec.schedule, p.key)
            elif p.key in clip_keys:
                part, patcher, shape, strength = "clip", clip.patcher, clip_keys[p.key], spec.strength_clip
            else:
                continue
            if spec.block_weight is not None:
                strength *= float(spec.block_weight(p.key))
            if strength == 0:
                continue
            if p.shape is not None:  # the update of a widened weight is no delta of the model's weight
                left_out["widened weights (a FLUX control LoRA's img_in)"] += 1
                continue
            if not p.key.endswith(".weight") or len(shape) < 2:
                if not isinstance(p.adapter, Full):
                    left_out["bias/norm updates that are not full diffs"] += 1
                    continue
                _add_diff(diffs, p, shape, strength)
                continue
            base = None
            if getattr(p.adapter, "dora_scale", None) is not None:
                base = comfy_bridge.original_weight(patcher, p.key)
                dora += 1
            delta = adapter_delta(p.adapter, shape, rows=p.rows, strength=strength, base=base, device=on)
            entry = by_key.get(p.key)
            if entry is None:
                entry = by_key[p.key] = WeightUpdates(p.key, part, tuple(shape), [None] * len(specs))
            previous = entry.deltas[index]
            entry.deltas[index] = delta if previous is None else previous + delta
    scheduled = tuple(s.name for s in specs if s.schedule is not None)
    return StackUpdates(list(by_key.values()), left_out, scheduled, dora, diffs)


def _add_diff(diffs: dict, p, shape, strength: float) -> None:
    """``strength · ΔW`` of a full diff on a bias or 1-D weight (its row slice for fused targets), summed per key."""
    total = diffs.get(p.key)
    if total is None:
        total = diffs[p.key] = torch.zeros(shape, dtype=torch.float32)
    target = total if p.rows is None else total[p.rows[0] : p.rows[1]]
    target += strength * p.adapter.delta_weight(target.shape, device="cpu")


def notes(updates: StackUpdates) -> list[str]:
    """What a report must say about how the stack was read."""
    lines = [f"note: {n} {why} left out" for why, n in updates.left_out.items()]
    if updates.diffs:
        lines.append(
            f"note: {len(updates.diffs)} bias/norm updates are full diffs: carried over as they are (.diff/.diff_b), "
            "not analysed or resized"
        )
    if updates.scheduled:
        lines.append("note: scheduled LoRAs are taken at their schedule's peak: " + ", ".join(updates.scheduled))
    if updates.dora:
        lines.append(
            f"note: {updates.dora} DoRA module(s) taken as their update against the original weight (DoRA is not "
            "additive: exact alone on a weight, approximate where other LoRAs patch the same weight)"
        )
    return lines


def base_sq_norm(model, clip, w: WeightUpdates, on: torch.device) -> float:
    patcher = model if w.part == "model" else clip.patcher
    weight = comfy_bridge.original_weight(patcher, w.key)
    return float(weight.to(device=on, dtype=torch.float32).pow(2).sum(dtype=torch.float64))


# --- LOOM_LORA results ---------------------------------------------------------------------------------------------


def source_record(spec: comfy_bridge.LoraSpec) -> dict:
    return {
        "name": spec.name,
        "sha256": lora_files.sha256(spec.name, spec.input_name),
        "format": spec.parsed.format,
        "base_model": families.from_file(spec.parsed),
        "strength_model": spec.strength_model,
        "strength_clip": spec.strength_clip,
        "blocks": getattr(spec.block_weight, "text", ""),
        "schedule": "" if spec.schedule is None else spec.schedule.to_text(),
        "role": "lora",
    }


def to_lora(
    results: dict[str, Compressed], model, operation: str, sources: Sequence[dict], notes: dict, diffs=None
) -> LoomLoRA:
    """Per-weight plain LoRAs as a LOOM_LORA: alpha = rank per module (scale 1), fp32 CPU factors; ``diffs`` (bias and
    norm full updates) carried over."""
    if not results:
        raise ValueError(f"{operation}: no weight received an update; nothing to save")
    modules = {k: (c.down.float().cpu(), c.up.float().cpu()) for k, c in results.items()}
    ranks = {k: float(c.rank) for k, c in results.items()}
    top = int(max(ranks.values()))
    model_keys = [k for k in comfy_bridge.model_keys(model) if k.startswith(UNET)]
    return LoomLoRA(
        modules=modules,
        alpha=float(top),
        rank=top,
        arch=engine.arch_of(model.model),
        base={"model_keys": model_keys, "name": model_name(model)},
        module_alpha=ranks,
        operation=operation,
        sources=tuple(sources),
        notes=notes,
        diffs=dict(diffs or {}),
    )


def model_name(model) -> str:
    return type(model.model).__name__


def kept_report(results: dict[str, Compressed], rule: str, dropped: int = 0) -> tuple[str, dict]:
    """Text: overall relative error, per block the kept energy and ranks, the weakest modules; and the notes."""
    total = sum(c.total_sq for c in results.values())
    lost = sum(c.total_sq * (1 - c.kept) for c in results.values())
    overall = math.sqrt(lost / total) if total > 0 else 0.0
    ranks = [c.rank for c in results.values()]
    lines = [
        f"{len(results)} modules, {rule}: kept {100 * (1 - lost / total if total else 1):.3f}% of the update's "
        f"energy (relative error ‖ΔW − ΔW_r‖/‖ΔW‖ = {overall:.4f}); ranks {min(ranks)}–{max(ranks)}"
    ]
    if dropped:
        lines.append(f"{dropped} module(s) had no update (zero difference) and were left out")
    per_block: dict[str, list[tuple[str, Compressed]]] = collections.defaultdict(list)
    for key, c in results.items():
        per_block[block_of(key)].append((key, c))
    lines.append("block      modules  rank      kept energy (min)")
    for block, entries in per_block.items():
        t = sum(c.total_sq for _, c in entries)
        kept = sum(c.total_sq * c.kept for _, c in entries) / t if t else 1.0
        rs = [c.rank for _, c in entries]
        worst = min(c.kept for _, c in entries)
        rank = f"{min(rs)}" if min(rs) == max(rs) else f"{min(rs)}–{max(rs)}"
        lines.append(f"{block:<10} {len(entries):7d}  {rank:<8}  {100 * kept:8.3f}% ({100 * worst:.3f}%)")
    weakest = sorted(results.items(), key=lambda kv: kv[1].kept)[:5]
    if weakest and weakest[0][1].kept < 1:
        lines.append("least kept: " + ", ".join(f"{_short(k)} {100 * c.kept:.2f}% (r{c.rank})" for k, c in weakest))
    notes = {
        "rule": rule,
        "modules": len(results),
        "relative_error": round(overall, 6),
        "rank_min": min(ranks),
        "rank_max": max(ranks),
        "kept_energy_min": round(min(c.kept for c in results.values()), 6),
    }
    return "\n".join(lines), notes


def _short(key: str) -> str:
    return key.removeprefix(UNET).removesuffix(".weight")


def compress_all(
    weights: Iterable[tuple[str, Delta]], one: Callable[[str, Delta], Compressed | None]
) -> tuple[dict[str, Compressed], int]:
    """Apply ``one`` to every weight (on ComfyUI's device); returns the results and the count of zero updates.

    Checks for a cancel between weights, so a long merge or extraction can be stopped from the UI.
    """
    results: dict[str, Compressed] = {}
    zero = 0
    for key, d in weights:
        comfy.model_management.throw_exception_if_processing_interrupted()
        c = one(key, d)
        if c is None:
            zero += 1
        else:
            results[key] = c
    return results, zero
