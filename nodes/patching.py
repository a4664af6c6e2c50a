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
* **Scheduled LoRAs** (a strength that follows a curve over the sampling steps) never touch the
  weights: they run as a low-rank bypass on the targeted layers (``lora_math.bypass``), installed by
  the same injection (each targeted module's ``forward`` wrapped, restored on eject), and an
  ``APPLY_MODEL`` wrapper sets the strengths from the sampler's current sigma before each model call.
  Static LoRAs of the same stack stay merged. Works the same on dynamic-VRAM and offloaded models.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import comfy.lora
import comfy.utils
import torch
from comfy.patcher_extension import PatcherInjection, WrappersMP
from comfy.weight_adapter.base import WeightAdapterBase

from ..lora_math import adapters, blocks, keymap, merge
from ..lora_math import bypass as bypass_math
from ..lora_math.formats import ParsedLoRA
from ..lora_math.schedule import BlockSchedules, Schedule

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
        self.bypass: _InstalledBypass | None = None


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
    _install_bypass(patcher)


def _eject(patcher) -> None:
    # The merge is lazy on purpose: ComfyUI ejects around every internal operation and when switching
    # clones. The next Loom clone moves the weights by deltas; any other patcher of this model has another
    # patches_uuid, so ComfyUI unpatches (restoring the backups we registered) before using the weights.
    # A bypass changes what the modules compute, so it leaves with its patcher.
    _uninstall_bypass(patcher.model)


def _ensure_injection(patcher) -> None:
    if not patcher.injections.get(KEY):
        patcher.set_injections(KEY, [PatcherInjection(inject=_inject, eject=_eject)])


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
        _ensure_injection(patcher)
        parent_plan = MergePlan()
    patcher.set_attachments(KEY, parent_plan.extended(terms))


# --- scheduled LoRAs: the bypass -----------------------------------------------------------------

KEY_SCHEDULE = "lora_loom_schedule"
_CONV_KINDS = {torch.nn.Conv1d: "conv1d", torch.nn.Conv2d: "conv2d", torch.nn.Conv3d: "conv3d"}


@dataclass(frozen=True)
class Channel:
    """One schedule that some bypass terms follow; ``input_name`` is what an error tells the user to fix."""

    schedule: Schedule
    input_name: str


@dataclass(frozen=True, eq=False)
class BypassPlan:
    """What a Loom clone runs as a bypass: weight key -> scheduled terms, and the schedules they follow."""

    terms: dict[str, tuple[bypass_math.BypassTerm, ...]] = field(default_factory=dict)
    channels: tuple[Channel, ...] = ()

    def extended(self, more: dict[str, list[bypass_math.BypassTerm]], channels: Sequence[Channel]) -> BypassPlan:
        offset = len(self.channels)
        terms = dict(self.terms)
        for key, new in more.items():
            shifted = tuple(dataclasses.replace(t, channel=t.channel + offset) for t in new)
            terms[key] = terms.get(key, ()) + shifted
        return BypassPlan(terms, self.channels + tuple(channels))


class _InstalledBypass:
    """A plan's bank, wired into the modules' forwards of one model."""

    def __init__(self, plan: BypassPlan, bank: bypass_math.BypassBank) -> None:
        self.plan, self.bank = plan, bank
        self.entries: list[tuple[torch.nn.Module, Callable, object, list[bool]]] = []
        self._values: dict[int, list[list[float]]] = {}  # steps in the run -> per step, per channel

    def set_step(self, step: int, num_steps: int) -> None:
        table = self._values.get(num_steps)
        if table is None:
            per_channel = [c.schedule.resolve(num_steps, c.input_name).values(num_steps) for c in self.plan.channels]
            table = self._values[num_steps] = [list(v) for v in zip(*per_channel, strict=True)]
        self.bank.set_coefficients(table[min(step, num_steps - 1)])

    def set_progress(self, progress: float) -> None:
        values = []
        for c in self.plan.channels:
            if c.schedule.unit != "progress":
                raise ValueError(
                    f"{c.input_name}: step keyframes (@n) need the sampler's steps, and this model call came "
                    "from outside a sampler; use progress positions (0.5 or 50%)"
                )
            values.append(c.schedule.at(progress))
        self.bank.set_coefficients(values)


_banks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # plan -> bank (factor copies die with the plan)


def _bank(model, plan: BypassPlan) -> bypass_math.BypassBank:
    bank = _banks.get(plan)
    if bank is None:
        layers = []
        for key, terms in plan.terms.items():
            module = comfy.utils.get_attr(model, key.rpartition(".")[0])
            kind = next((k for cls, k in _CONV_KINDS.items() if isinstance(module, cls)), "linear")
            conv_args = None
            if kind != "linear":
                conv_args = {a: getattr(module, a) for a in ("stride", "padding", "dilation", "groups", "padding_mode")}
            layers.append(bypass_math.BypassLayer(int(module.weight.shape[0]), kind, terms, conv_args))
        bank = _banks[plan] = bypass_math.BypassBank(layers, len(plan.channels))
    return bank


def _bypass_forward(inner, add, index: int, module, enabled: list[bool], needs_weight: bool):
    if needs_weight:

        def forward(x, *args, **kwargs):
            out = inner(x, *args, **kwargs)
            return add(index, x, out, module.weight) if enabled[0] else out

    else:

        def forward(x, *args, **kwargs):
            out = inner(x, *args, **kwargs)
            return add(index, x, out) if enabled[0] else out

    return forward


def _install_bypass(patcher) -> None:
    plan: BypassPlan | None = patcher.get_attachment(KEY_SCHEDULE)
    state = _state(patcher.model)
    if state.bypass is not None and state.bypass.plan is plan:
        return
    _uninstall_bypass(patcher.model)
    if plan is None or not plan.terms:
        return
    installed = _InstalledBypass(plan, _bank(patcher.model, plan))
    for index, (key, terms) in enumerate(plan.terms.items()):
        module = comfy.utils.get_attr(patcher.model, key.rpartition(".")[0])
        own = module.__dict__.get("forward")  # another pack's wrapper, if any: we wrap it, never assume we own it
        enabled = [True]
        dora = any(getattr(t.adapter, "dora_scale", None) is not None for t in terms)
        forward = _bypass_forward(own or module.forward, installed.bank.add, index, module, enabled, dora)
        module.forward = forward
        installed.entries.append((module, forward, own, enabled))
    state.bypass = installed


def _uninstall_bypass(model) -> None:
    state = _state(model)
    installed, state.bypass = state.bypass, None
    if installed is None:
        return
    for module, forward, own, enabled in reversed(installed.entries):
        if module.__dict__.get("forward") is forward:
            if own is None:
                del module.forward
            else:
                module.forward = own
        else:  # someone wrapped on top of us since: we cannot unlink, so we step aside
            enabled[0] = False


def _sigma_index(sigmas: list[float], sigma: float) -> int:
    """The step whose interval holds ``sigma``: i where sigmas[i] >= sigma > sigmas[i + 1] (multi-eval samplers too)."""
    above = sum(1 for s in sigmas if s >= sigma * (1 - 1e-5))
    return min(max(above - 1, 0), len(sigmas) - 2)


_sigmas_seen: list = [None, None]  # the last run's sample_sigmas tensor and its values (one sync per run)


def _apply_model_wrapper(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kw):
    installed = _state(executor.class_obj).bypass
    if installed is not None:
        sigmas = (transformer_options or {}).get("sample_sigmas")
        sigma = float(t.max())
        if sigmas is not None and len(sigmas) > 1:
            if _sigmas_seen[0] is not sigmas:
                _sigmas_seen[:] = [sigmas, [float(s) for s in sigmas.tolist()]]
            values = _sigmas_seen[1]
            installed.set_step(_sigma_index(values, sigma), len(values) - 1)
        else:  # a model call outside a sampler: ComfyUI's own percent convention
            installed.set_progress(_percent_of_sigma(executor.class_obj.model_sampling, sigma))
    return executor(
        x, t, c_concat, c_crossattn, control, {} if transformer_options is None else transformer_options, **kw
    )


def _percent_of_sigma(model_sampling, sigma: float) -> float:
    """Inverse of ``model_sampling.percent_to_sigma`` (decreasing in percent) by bisection."""
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if float(model_sampling.percent_to_sigma(mid)) > sigma:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _add_bypass_plan(patcher, terms: dict[str, list[bypass_math.BypassTerm]], channels: Sequence[Channel]) -> None:
    plan = patcher.get_attachment(KEY_SCHEDULE) or BypassPlan()
    patcher.set_attachments(KEY_SCHEDULE, plan.extended(terms, channels))
    _ensure_injection(patcher)
    if not patcher.get_wrappers(WrappersMP.APPLY_MODEL, KEY):
        patcher.add_wrapper_with_key(WrappersMP.APPLY_MODEL, KEY, _apply_model_wrapper)


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


def match_spec(spec: LoraSpec, model, clip=None) -> keymap.KeyMatch:
    """One LoRA's key match against a MODEL and/or CLIP, exactly as :func:`apply_stack` makes it (cached)."""
    infos = [_info(p) for p in (model, clip.patcher if clip is not None else None) if p is not None]
    return _match(spec, infos)


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
        target += merge.terms_delta(target.shape, terms, weight.device)
    return weight


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


def _is_layer(patcher, key: str) -> bool:
    if not key.endswith(".weight"):
        return False
    module = comfy.utils.get_attr(patcher.model, key.rpartition(".")[0])
    return isinstance(module, (torch.nn.Linear, *_CONV_KINDS))


def _schedule_for(schedule: Schedule | BlockSchedules, key: str) -> Schedule:
    return schedule.for_key(key) if isinstance(schedule, BlockSchedules) else schedule


def _schedule_to(patcher, patches: Sequence[keymap.Patch], spec: LoraSpec, fast: bool) -> int:
    """Add one scheduled LoRA's model patches as bypass terms; returns the number of weights it patches."""
    own_keys = _info(patcher).keys
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
        named = [Channel(s, f"{spec.input_name} schedule") for s in channels]
        _add_bypass_plan(patcher, terms, named)
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
    infos = [_info(p) for p in (model, clip.patcher if clip is not None else None) if p is not None]
    new_model = model.clone() if model is not None else None
    new_clip = clip.clone() if clip is not None else None
    fast_model = new_model is not None and not _is_dynamic(new_model)
    reports = []
    for spec in specs:
        match = _match(spec, infos)
        patched = 0
        static = _static_weight(spec)
        if new_model is not None and spec.strength_model != 0:
            if static.schedule is not None:
                patched += _schedule_to(new_model, match.patches, static, fast_model)
            else:
                patched += _apply_to(new_model, match.patches, spec.strength_model, static.block_weight, fast_model)
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
