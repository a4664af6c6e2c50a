"""Stacks of LoRAs onto a MODEL and its CLIP: which path each weight takes, and the report of what matched.

* static LoRAs on the diffusion model of a regular patcher: merged in place by low-rank deltas
  (``merge_injection``, the fast path: a strength change costs milliseconds);
* everything ComfyUI patches itself (CLIP, DoRA, quantised weights, upstream's dynamic-VRAM models): Loom patch
  objects through ``add_patches`` (``weight_patch``);
* scheduled LoRAs: a bypass on the layer outputs (``schedule_bypass``), on every kind of patcher.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import comfy.utils
import torch

from ...lora_math.formats import ParsedLoRA
from ...lora_math.names import blocks, keymap, spellings
from ...lora_math.schedule import BlockSchedules, Schedule
from ...lora_math.weights import bypass as bypass_math
from ...lora_math.weights import inplace
from . import compat, control, injection, merge_injection, model_info, schedule_bypass
from .weight_patch import LoomWeightPatch

log = logging.getLogger("lora_loom")


def _patch_key(p: keymap.Patch):
    return p.key if p.rows is None else (p.key, (0, p.rows[0], p.rows[1] - p.rows[0]))


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA of a stack as the nodes hand it over: parsed file, strengths, optional block multipliers."""

    name: str
    parsed: ParsedLoRA
    strength_model: float = 1.0
    strength_clip: float = 1.0
    # model key -> multiplier on strength (block weights); None means 1.0 everywhere
    block_weight: Callable[[str], float] | None = None
    input_name: str = "lora_name"  # what errors tell the user to fix (a stack names its row)
    # strength over the sampling steps (a multiplier on strength_model, per block with BlockSchedules); the
    # CLIP strength stays static: text encoding happens once, before sampling
    schedule: Schedule | BlockSchedules | None = None


@dataclass(frozen=True)
class PatchReport:
    """What matched where; `summary()` is the one log line a load produces."""

    name: str
    targets: int
    matched: int
    unmatched: tuple[str, ...]
    patched_keys: int
    skipped: int = 0  # text-encoder modules when no CLIP is connected (or denoiser ones with no MODEL)
    per_block: tuple[tuple[str, int], ...] = ()  # weights patched per block (INnn/MID/OUTnn, Dnn/Snn, BASE)
    schedule: str = ""  # the schedule's text when the model strength is scheduled

    def summary(self) -> str:
        text = f"{self.name}: {self.matched}/{self.targets - self.skipped} modules matched, {self.patched_keys} weights patched"
        if self.schedule:
            text += f"; model strength scheduled ({self.schedule})"
        if self.skipped:
            text += f"; {self.skipped} modules for a model/CLIP not connected here"
        if self.unmatched:
            head = ", ".join(self.unmatched[:5])
            text += f"; {len(self.unmatched)} unmatched (first: {head})"
            # Where the file did land helps tell a wrong base model from a partial LoRA.
            text += "; patched per block: " + ", ".join(f"{b} {n}" for b, n in self.per_block)
        return text


def _per_block(match: keymap.KeyMatch) -> tuple[tuple[str, int], ...]:
    counts = collections.Counter(blocks.block_id(p.key) for p in match.patches)
    return tuple(sorted(counts.items()))


_TEXT_ROLES = {"te", "te1", "te2", "te3"}


def _split_unmatched(unmatched, has_model: bool, has_clip: bool) -> tuple[tuple[str, ...], int]:
    """Unmatched modules minus those for a component that is simply not connected."""
    real, skipped = [], 0
    for name in unmatched:
        is_text = spellings.split_role(name)[0] in _TEXT_ROLES
        if (is_text and not has_clip) or (not is_text and not has_model):
            skipped += 1
        else:
            real.append(name)
    return tuple(real), skipped


def _match(spec: LoraSpec, models) -> keymap.KeyMatch:
    return model_info.cached_match(spec.name, spec.parsed, spec.input_name, models)


def match_spec(spec: LoraSpec, model, clip=None) -> keymap.KeyMatch:
    """One LoRA's key match against a MODEL and/or CLIP, exactly as :func:`apply_stack` makes it (cached)."""
    return _match(spec, model_info.infos(model, clip))


def _apply_to(
    patcher, patches: Sequence[keymap.Patch], strength: float, block_weight, fast: bool, widened=frozenset()
) -> int:
    """Add one LoRA's patches for this patcher; returns the number of weights it patches. ``widened``: keys a FLUX
    control LoRA widens: ComfyUI's patching, which swaps in the wider tensor, takes every LoRA on them."""
    own_keys = model_info.info(patcher).keys
    merged: dict[str, list[inplace.Term]] = {}
    core: dict[float, dict] = {}
    for p in patches:
        if p.key not in own_keys:
            continue
        s = strength * (1.0 if block_weight is None else float(block_weight(p.key)))
        if s == 0:
            continue
        if fast and p.key not in widened and merge_injection.fast_eligible(patcher, p.key, p.adapter):
            merged.setdefault(p.key, []).append(inplace.Term(p.adapter, s, p.rows))
        else:
            core.setdefault(s, {})[_patch_key(p)] = LoomWeightPatch.of(p.adapter, shape=p.shape)
    count = sum(len(patcher.add_patches(group, s)) for s, group in core.items())
    if merged and merge_injection.add_merge_plan(patcher, merged):
        injection.ensure(patcher)
    return count + len(merged)


def _is_layer(patcher, key: str) -> bool:
    if not key.endswith(".weight"):
        return False
    module = comfy.utils.get_attr(patcher.model, key.rpartition(".")[0])
    return isinstance(module, (torch.nn.Linear, *schedule_bypass.CONV_KINDS))


def _schedule_for(schedule: Schedule | BlockSchedules, key: str) -> Schedule:
    return schedule.for_key(key) if isinstance(schedule, BlockSchedules) else schedule


def _schedule_to(patcher, patches: Sequence[keymap.Patch], spec: LoraSpec, fast: bool) -> int:
    """Add one scheduled LoRA's model patches as bypass terms; returns the number of weights it patches."""
    own_keys = model_info.info(patcher).keys
    terms: dict[str, list[bypass_math.BypassTerm]] = {}
    channels: dict[Schedule, int] = {}
    fixed: dict[float, list[keymap.Patch]] = {}
    for p in patches:
        if p.key not in own_keys:
            continue
        multiplier = spec.strength_model * (1.0 if spec.block_weight is None else float(spec.block_weight(p.key)))
        if multiplier == 0:
            continue
        schedule = _schedule_for(spec.schedule, p.key)
        if _is_layer(patcher, p.key):
            channel = channels.setdefault(schedule, len(channels))
            terms.setdefault(p.key, []).append(bypass_math.BypassTerm(p.adapter, channel, multiplier, p.rows))
        else:  # a norm or bias diff has no layer output to add to: it keeps the strength it starts with
            fixed.setdefault(schedule.resolve(1).at(0.0), []).append(p)
    count = len(terms)
    if terms:
        named = [schedule_bypass.Channel(s, f"{spec.input_name} schedule") for s in channels]
        schedule_bypass.add_bypass_plan(patcher, terms, named)
        injection.ensure(patcher)
    for start, group in fixed.items():
        count += _apply_to(patcher, group, spec.strength_model * start, spec.block_weight, fast)
    if fixed:
        log.warning(
            "[LoRA Loom] %s: %d weights outside linear/conv layers (norms, biases) cannot follow a schedule; "
            "they keep the schedule's first strength",
            spec.name,
            sum(len(g) for g in fixed.values()),
        )
    return count


def _static_weight(spec: LoraSpec) -> LoraSpec:
    """A constant schedule is just a strength (per block): it stays on the merge path."""
    if spec.schedule is None or not spec.schedule.is_constant:
        return spec
    schedule, block_weight = spec.schedule, spec.block_weight

    def weight(key: str) -> float:
        base = 1.0 if block_weight is None else float(block_weight(key))
        return base * _schedule_for(schedule, key).keyframes[0][1]

    return dataclasses.replace(spec, block_weight=weight, schedule=None)


def apply_stack(model, clip, specs: Sequence[LoraSpec]):
    """Clone model/clip once and add every LoRA of the stack; returns (model, clip, reports).

    Raises ValueError naming `lora_name` when nothing in a file matches the given model/clip.
    """
    specs = [s for s in specs if s.strength_model != 0 or (clip is not None and s.strength_clip != 0)]
    if not specs:
        return model, clip, []
    infos = model_info.infos(model, clip)
    matches = [_match(spec, infos) for spec in specs]  # every file matched and checked before anything is cloned
    widened = control.check(model, specs, matches)
    new_model = model.clone() if model is not None else None
    new_clip = clip.clone() if clip is not None else None
    # Dynamic-VRAM patchers: ComfyUI patches each weight itself as it loads it, and keeps it patched while resident
    # (Loom patch objects through add_patches); measured against a bypass for static LoRAs in BENCHMARKS.md.
    fast_model = new_model is not None and not compat.is_dynamic(new_model)
    reports = []
    for spec, match in zip(specs, matches, strict=True):
        patched = 0
        static = _static_weight(spec)
        # As core's load_lora_for_models: every patcher the LoRA was loaded onto carries its header, whatever the
        # strength (a model at strength 0 next to a patched CLIP carries it too).
        for patcher in (new_model, new_clip.patcher if new_clip is not None else None):
            if patcher is not None:
                compat.set_lora_metadata(patcher, spec.parsed.metadata)
        if new_model is not None and spec.strength_model != 0:
            if static.schedule is not None:
                patched += _schedule_to(new_model, match.patches, static, fast_model)
            else:
                patched += _apply_to(
                    new_model, match.patches, spec.strength_model, static.block_weight, fast_model, widened
                )
        if new_clip is not None and spec.strength_clip != 0:
            patched += _apply_to(new_clip.patcher, match.patches, spec.strength_clip, spec.block_weight, False)
        unmatched, skipped = _split_unmatched(match.unmatched, new_model is not None, new_clip is not None)
        scheduled = static.schedule.to_text() if static.schedule is not None and new_model is not None else ""
        report = PatchReport(
            spec.name, match.targets, len(match.matched), unmatched, patched, skipped, _per_block(match), scheduled
        )
        (log.warning if report.unmatched else log.info)("[LoRA Loom] %s", report.summary())
        reports.append(report)
    return new_model, new_clip, reports
