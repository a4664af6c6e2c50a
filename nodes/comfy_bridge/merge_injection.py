"""Static LoRAs merged into the resident weights by low-rank deltas (0.3.75 and every non-dynamic patcher).

The clone carries a plan (weight key -> terms) as an attachment; when ComfyUI injects the loaded patcher, the
resident weights are moved from the plan they hold to this plan by low-rank deltas (``lora_math.merge``): a
strength change touches only the LoRAs whose strength changed, with no file read, no full-weight copy and no
reload. Originals go into ComfyUI's shared ``backup`` dict on first touch, so any core unpatch restores them; Loom
clones of one parent share one ``patches_uuid`` so ComfyUI does not unload/reload the model between them, while the
parent and other clones keep theirs (switching to them makes ComfyUI restore the backups).
"""

from __future__ import annotations

import collections
import functools
import uuid
from dataclasses import dataclass, field

import comfy.lora
import comfy.utils
import torch

from ...lora_math.weights import inplace
from . import model_info

KEY = "lora_loom"
_UUID_NAMESPACE = uuid.UUID("6f0c1f0e-7a55-4c7b-9a1e-2b1d5e0c4a10")
_FAST_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# ComfyUI's backup record (model_patcher.py builds the same two-field tuple).
_Backup = collections.namedtuple("Dimension", ["weight", "inplace_update"])
_factors = inplace.FactorCache()


@dataclass(frozen=True)
class MergePlan:
    """What a Loom clone wants merged into its diffusion model: weight key -> terms."""

    terms: dict[str, tuple[inplace.Term, ...]] = field(default_factory=dict)

    @functools.cached_property
    def structure(self) -> tuple:
        """Which adapters on which weights/rows, in order: equal structures differ only in strengths."""
        return tuple((key, tuple((id(t.adapter), t.rows) for t in terms)) for key, terms in self.terms.items())

    @functools.cached_property
    def strengths(self) -> list[float]:
        return [t.strength for terms in self.terms.values() for t in terms]

    def extended(self, more: dict[str, list[inplace.Term]]) -> MergePlan:
        terms = dict(self.terms)
        for key, new in more.items():
            terms[key] = terms.get(key, ()) + tuple(new)
        return MergePlan(terms)


class _MergeState:
    """What the shared weights hold (our part), kept on the model all clones share."""

    def __init__(self) -> None:
        self.applied: dict[str, tuple[inplace.Term, ...]] = {}
        self.backup_ref: dict[str, object] = {}
        self.applied_plan: MergePlan | None = None  # set when `applied` is exactly that plan's terms
        self.program: inplace.MergeProgram | None = None
        self.program_structure: tuple | None = None
        self.leaf_modules: dict[str, tuple[object, str]] = {}  # key -> (module, attribute); modules never move


def _state(model) -> _MergeState:
    state = getattr(model, "_lora_loom_merge_state", None)
    if state is None:
        state = _MergeState()
        model._lora_loom_merge_state = state
    return state


def _difference(have: tuple, want: tuple) -> tuple[list, list]:
    """Terms to remove and to add, keeping the ones both sides share (multiset difference)."""
    remove, add = list(have), []
    for term in want:
        if term in remove:
            remove.remove(term)
        else:
            add.append(term)
    return remove, add


@torch.no_grad()
def reconcile(patcher) -> int:
    """Bring the resident weights to this patcher's plan; returns how many weights were touched."""
    plan: MergePlan = patcher.get_attachment(KEY) or MergePlan()
    model, backup = patcher.model, patcher.backup
    state = _state(model)
    for key in list(state.applied):
        # A core unpatch restored this weight (and cleared or replaced its backup record) since we merged.
        if backup.get(key) is not state.backup_ref.get(key):
            del state.applied[key]
            state.backup_ref.pop(key, None)
            state.applied_plan = None
    previous = state.applied_plan
    if previous is not None and previous.structure == plan.structure:
        if state.program_structure == plan.structure or inplace.MergeProgram.supports(plan.terms):
            return _update_strengths(model, state, previous, plan)
    touched = 0
    for key in plan.terms.keys() | state.applied.keys():
        want, have = plan.terms.get(key, ()), state.applied.get(key, ())
        if want == have:
            continue
        weight = comfy.utils.get_attr(model, key)
        if key not in backup:
            backup[key] = _Backup(weight.detach().to(device=patcher.offload_device, copy=True), False)
        inplace.update_weight(weight.data, *_difference(have, want), _factors)
        if want:
            state.applied[key] = want
            state.backup_ref[key] = backup[key]
        else:
            state.applied.pop(key, None)
            state.backup_ref.pop(key, None)
        touched += 1
    state.applied_plan = plan
    return touched


def _update_strengths(model, state: _MergeState, previous: MergePlan, plan: MergePlan) -> int:
    """Same LoRAs on the same weights, new strengths: one precompiled pass over the weights."""
    deltas = [new - old for new, old in zip(plan.strengths, previous.strengths, strict=True)]
    if any(deltas):
        if state.program_structure != plan.structure:
            dtypes = {key: comfy.utils.get_attr(model, key).dtype for key in plan.terms}
            device = comfy.utils.get_attr(model, next(iter(plan.terms))).device
            state.program = inplace.MergeProgram(plan.terms, dtypes, device, _factors)
            state.program_structure = plan.structure
        leaf = state.leaf_modules
        for key in plan.terms.keys() - leaf.keys():
            module_path, _, attr = key.rpartition(".")
            leaf[key] = (comfy.utils.get_attr(model, module_path), attr)
        state.program.apply(deltas, lambda key: getattr(*leaf[key]).data)
    state.applied = dict(plan.terms)
    state.applied_plan = plan
    return len(plan.terms) if any(deltas) else 0


def fast_eligible(patcher, key: str, adapter) -> bool:
    """Whether this weight can take the in-place delta merge (plain float weights, additive adapters)."""
    if not inplace.is_additive(adapter):
        return False
    eligible = model_info.info(patcher).eligible
    if key not in eligible:
        module_path, _, leaf = key.rpartition(".")
        op = comfy.utils.get_attr(patcher.model, module_path)
        # quantised / custom-cast weights: ComfyUI's own patch path knows how to write them
        custom = hasattr(op, f"set_{leaf}") or hasattr(op, f"convert_{leaf}")
        eligible[key] = not custom and comfy.utils.get_attr(patcher.model, key).dtype in _FAST_DTYPES
    return eligible[key]


def add_merge_plan(patcher, terms: dict[str, list[inplace.Term]]) -> bool:
    """Add terms to this clone's plan; True when the clone had none (the caller then adds the injection)."""
    parent_plan = patcher.get_attachment(KEY)
    first = parent_plan is None
    if first:
        # Every Loom clone of this parent shares one uuid: ComfyUI keeps the model loaded between them.
        patcher.patches_uuid = uuid.uuid5(_UUID_NAMESPACE, str(patcher.patches_uuid))
        parent_plan = MergePlan()
    patcher.set_attachments(KEY, parent_plan.extended(terms))
    return first


def original_weight(patcher, key: str) -> torch.Tensor:
    """The weight ``key`` as loaded from the checkpoint, even while a merge (Loom's or core's) is resident:
    ComfyUI keeps the original of every weight it or Loom wrote in place in the patcher's ``backup``."""
    backup = getattr(patcher, "backup", None) or {}
    weight = backup[key].weight if key in backup else comfy.utils.get_attr(patcher.model, key)
    return weight.detach()


def effective_weight(patcher, key: str, device) -> torch.Tensor:
    """fp32 copy of ``key`` as ``patcher`` would load it: the original weight, ComfyUI's patches on it (core LoRA
    loaders, model merges) and Loom's merged LoRAs. Scheduled LoRAs have no single weight and are not included."""
    weight = original_weight(patcher, key).to(device=device, dtype=torch.float32, copy=True)
    patches = getattr(patcher, "patches", {}).get(key)
    if patches:
        weight = comfy.lora.calculate_weight(patches, weight, key)
    plan: MergePlan | None = patcher.get_attachment(KEY)
    by_rows: dict = {}
    for term in plan.terms.get(key, ()) if plan is not None else ():
        by_rows.setdefault(term.rows, []).append((term, term.strength))
    for rows, terms in by_rows.items():
        target = weight if rows is None else weight[rows[0] : rows[1]]
        target += inplace.terms_delta(target.shape, terms, weight.device)
    return weight
