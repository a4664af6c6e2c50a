"""The one place that turns lora_math key matches into ComfyUI patches.

Two paths, both inside ComfyUI's ModelPatcher contract (nodes clone, weights change only when
ComfyUI loads the model, a core unpatch restores the originals bit-exactly):

* **Merge injection** (the fast path, diffusion model on a regular patcher): the clone carries a
  plan (weight key -> terms) as an attachment plus a `PatcherInjection`. When ComfyUI injects the
  loaded patcher, the resident weights are moved from the plan they hold to this plan by low-rank
  deltas (``lora_math.merge``): a strength change touches only the LoRAs whose strength changed, with
  no file read, no full-weight copy and no reload. Originals go into ComfyUI's shared ``backup``
  dict on first touch, so any core unpatch restores them; Loom clones of one parent share one
  ``patches_uuid`` so ComfyUI does not unload/reload the model between them, while the parent and
  other clones keep theirs (switching to them makes ComfyUI restore the backups).
* **Core patches** (`add_patches` with a ComfyUI weight adapter) for everything else: CLIP, DoRA
  (not additive), quantised/unusual weight dtypes, and upstream's dynamic-VRAM patchers, where
  weights must not be written in place and ComfyUI applies patches lazily per weight.
"""

from __future__ import annotations

import collections
import functools
import logging
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import comfy.utils
import torch
from comfy.patcher_extension import PatcherInjection
from comfy.weight_adapter.base import WeightAdapterBase

from ..lora_math import adapters, blocks, keymap, merge
from ..lora_math.formats import ParsedLoRA

log = logging.getLogger("lora_loom")

KEY = "lora_loom"
_UUID_NAMESPACE = uuid.UUID("6f0c1f0e-7a55-4c7b-9a1e-2b1d5e0c4a10")
_FAST_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# ComfyUI's backup record (model_patcher.py builds the same two-field tuple).
_Backup = collections.namedtuple("Dimension", ["weight", "inplace_update"])
_factors = merge.FactorCache()
_MATCH_CACHE_SIZE = 64


class LoomWeightPatch(WeightAdapterBase):
    """Adapts a lora_math adapter to ComfyUI's weight-patch protocol.

    `weight` arrives as ComfyUI's fp32 working copy (already narrowed to the row slice for fused
    qkv/linear1 targets); the update is computed in fp32 by lora_math and written into that copy.
    """

    name = "loom"

    def __init__(self, adapter: adapters.Adapter):
        self.adapter = adapter
        self.loaded_keys = set()
        self.weights = []

    def calculate_weight(
        self,
        weight,
        key,
        strength,
        strength_model,
        offset,
        function,
        intermediate_dtype=torch.float32,
        original_weight=None,
    ):
        merged = adapters.merged_weight(weight, self.adapter, strength)
        if function is None:
            weight.copy_(merged)
        else:  # ComfyUI's per-key transform applies to the update, not the whole weight
            weight += function(merged - weight)
        return weight


class _ModelInfo:
    """Per model (shared by all its clones): key shapes, fast-path eligibility, key matches per file."""

    def __init__(self, module) -> None:
        self.keys = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        self.eligible: dict[str, bool] = {}
        # (id(parsed), models) -> match. Entries die with their parsed file (the file cache decides how
        # long that lives), so this cache never keeps a LoRA's tensors in memory on its own.
        self.matches: collections.OrderedDict = collections.OrderedDict()


_infos: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _info(patcher) -> _ModelInfo:
    info = _infos.get(patcher.model)
    if info is None:
        info = _infos[patcher.model] = _ModelInfo(patcher.model)
    return info


def model_keys(model, clip=None) -> dict[str, tuple[int, ...]]:
    """Weight key -> shape for a MODEL and/or CLIP, as ComfyUI's patchers name them (cached per model)."""
    keys: dict[str, tuple[int, ...]] = {}
    for patcher in (model, clip.patcher if clip is not None else None):
        if patcher is not None:
            keys.update(_info(patcher).keys)
    return keys


def _patch_key(p: keymap.Patch):
    return p.key if p.rows is None else (p.key, (0, p.rows[0], p.rows[1] - p.rows[0]))


# --- the merge injection -------------------------------------------------------------------------


@dataclass(frozen=True)
class MergePlan:
    """What a Loom clone wants merged into its diffusion model: weight key -> terms."""

    terms: dict[str, tuple[merge.Term, ...]] = field(default_factory=dict)

    @functools.cached_property
    def structure(self) -> tuple:
        """Which adapters on which weights/rows, in order: equal structures differ only in strengths."""
        return tuple((key, tuple((id(t.adapter), t.rows) for t in terms)) for key, terms in self.terms.items())

    @functools.cached_property
    def strengths(self) -> list[float]:
        return [t.strength for terms in self.terms.values() for t in terms]

    def extended(self, more: dict[str, list[merge.Term]]) -> MergePlan:
        terms = dict(self.terms)
        for key, new in more.items():
            terms[key] = terms.get(key, ()) + tuple(new)
        return MergePlan(terms)


class _MergeState:
    """What the shared weights hold (our part), kept on the model all clones share."""

    def __init__(self) -> None:
        self.applied: dict[str, tuple[merge.Term, ...]] = {}
        self.backup_ref: dict[str, object] = {}
        self.applied_plan: MergePlan | None = None  # set when `applied` is exactly that plan's terms
        self.program: merge.MergeProgram | None = None
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
        if state.program_structure == plan.structure or merge.MergeProgram.supports(plan.terms):
            return _update_strengths(model, state, previous, plan)
    touched = 0
    for key in plan.terms.keys() | state.applied.keys():
        want, have = plan.terms.get(key, ()), state.applied.get(key, ())
        if want == have:
            continue
        weight = comfy.utils.get_attr(model, key)
        if key not in backup:
            backup[key] = _Backup(weight.detach().to(device=patcher.offload_device, copy=True), False)
        merge.update_weight(weight.data, *_difference(have, want), _factors)
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
            state.program = merge.MergeProgram(plan.terms, dtypes, device, _factors)
            state.program_structure = plan.structure
        leaf = state.leaf_modules
        for key in plan.terms.keys() - leaf.keys():
            module_path, _, attr = key.rpartition(".")
            leaf[key] = (comfy.utils.get_attr(model, module_path), attr)
        state.program.apply(deltas, lambda key: getattr(*leaf[key]).data)
    state.applied = dict(plan.terms)
    state.applied_plan = plan
    return len(plan.terms) if any(deltas) else 0


def _inject(patcher) -> None:
    reconcile(patcher)


def _eject(patcher) -> None:
    # Lazy on purpose: ComfyUI ejects around every internal operation and when switching clones. The next
    # Loom clone moves the weights by deltas; any other patcher of this model has another patches_uuid,
    # so ComfyUI unpatches (restoring the backups we registered) before using the weights.
    return None


def _fast_eligible(patcher, key: str, adapter) -> bool:
    if not merge.is_additive(adapter):
        return False
    eligible = _info(patcher).eligible
    if key not in eligible:
        module_path, _, leaf = key.rpartition(".")
        op = comfy.utils.get_attr(patcher.model, module_path)
        # quantised / custom-cast weights: ComfyUI's own patch path knows how to write them
        custom = hasattr(op, f"set_{leaf}") or hasattr(op, f"convert_{leaf}")
        eligible[key] = not custom and comfy.utils.get_attr(patcher.model, key).dtype in _FAST_DTYPES
    return eligible[key]


def _is_dynamic(patcher) -> bool:
    return bool(getattr(patcher, "is_dynamic", lambda: False)())


def _add_merge_plan(patcher, terms: dict[str, list[merge.Term]]) -> None:
    parent_plan = patcher.get_attachment(KEY)
    if parent_plan is None:
        # Every Loom clone of this parent shares one uuid: ComfyUI keeps the model loaded between them.
        patcher.patches_uuid = uuid.uuid5(_UUID_NAMESPACE, str(patcher.patches_uuid))
        patcher.set_injections(KEY, [PatcherInjection(inject=_inject, eject=_eject)])
        parent_plan = MergePlan()
    patcher.set_attachments(KEY, parent_plan.extended(terms))


# --- stacks --------------------------------------------------------------------------------------


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

    def summary(self) -> str:
        text = f"{self.name}: {self.matched}/{self.targets - self.skipped} modules matched, {self.patched_keys} weights patched"
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
        is_text = keymap.split_role(name)[0] in _TEXT_ROLES
        if (is_text and not has_clip) or (not is_text and not has_model):
            skipped += 1
        else:
            real.append(name)
    return tuple(real), skipped


def _match(spec: LoraSpec, infos: Sequence[_ModelInfo]) -> keymap.KeyMatch:
    """Key match of a parsed file against the given models, cached while both live."""
    cache = infos[0].matches
    token = (id(spec.parsed), *(id(i) for i in infos))
    if token in cache:
        cache.move_to_end(token)
        match = cache[token]
    else:
        keys: dict[str, tuple[int, ...]] = {}
        for info in infos:
            keys.update(info.keys)
        match = cache[token] = keymap.match(spec.parsed, keys)
        weakref.finalize(spec.parsed, cache.pop, token, None)  # before its id can be reused
        while len(cache) > _MATCH_CACHE_SIZE:
            cache.popitem(last=False)
    if not match.patches:
        guess = keymap.guess_base_model(spec.parsed)
        raise ValueError(
            f"{spec.input_name}: nothing in '{spec.name}' ({spec.parsed.format}, {match.targets} modules) "
            "matches this model"
            + (f"; it looks like a {guess} LoRA" if guess != "unknown" else "")
            + "; load it with a matching checkpoint"
        )
    return match


def _apply_to(patcher, patches: Sequence[keymap.Patch], strength: float, block_weight, fast: bool) -> int:
    """Add one LoRA's patches for this patcher; returns the number of weights it patches."""
    own_keys = _info(patcher).keys
    merged: dict[str, list[merge.Term]] = {}
    core: dict[float, dict] = {}
    for p in patches:
        if p.key not in own_keys:
            continue
        s = strength * (1.0 if block_weight is None else float(block_weight(p.key)))
        if s == 0:
            continue
        if fast and _fast_eligible(patcher, p.key, p.adapter):
            merged.setdefault(p.key, []).append(merge.Term(p.adapter, s, p.rows))
        else:
            core.setdefault(s, {})[_patch_key(p)] = LoomWeightPatch(p.adapter)
    count = sum(len(patcher.add_patches(group, s)) for s, group in core.items())
    if merged:
        _add_merge_plan(patcher, merged)
    return count + len(merged)


def apply_stack(model, clip, specs: Sequence[LoraSpec]):
    """Clone model/clip once and add every LoRA of the stack; returns (model, clip, reports).

    Raises ValueError naming `lora_name` when nothing in a file matches the given model/clip.
    """
    specs = [s for s in specs if s.strength_model != 0 or (clip is not None and s.strength_clip != 0)]
    if not specs:
        return model, clip, []
    infos = [_info(p) for p in (model, clip.patcher if clip is not None else None) if p is not None]
    new_model = model.clone() if model is not None else None
    new_clip = clip.clone() if clip is not None else None
    fast_model = new_model is not None and not _is_dynamic(new_model)
    reports = []
    for spec in specs:
        match = _match(spec, infos)
        patched = 0
        if new_model is not None and spec.strength_model != 0:
            patched += _apply_to(new_model, match.patches, spec.strength_model, spec.block_weight, fast_model)
        if new_clip is not None and spec.strength_clip != 0:
            patched += _apply_to(new_clip.patcher, match.patches, spec.strength_clip, spec.block_weight, False)
        unmatched, skipped = _split_unmatched(match.unmatched, new_model is not None, new_clip is not None)
        report = PatchReport(
            spec.name, match.targets, len(match.matched), unmatched, patched, skipped, _per_block(match)
        )
        (log.warning if report.unmatched else log.info)("[LoRA Loom] %s", report.summary())
        reports.append(report)
    return new_model, new_clip, reports


def apply_lora(model, clip, parsed: ParsedLoRA, name: str, strength_model: float, strength_clip: float):
    """One LoRA: `apply_stack` with a single entry; returns (model, clip, report)."""
    new_model, new_clip, reports = apply_stack(model, clip, [LoraSpec(name, parsed, strength_model, strength_clip)])
    return new_model, new_clip, reports[0]
