"""Scheduled LoRAs (a strength that follows a curve over the sampling steps): a low-rank bypass, weights untouched.

The targeted layers get an output hook that adds the bank's terms (``lora_math.bypass``), installed by the Loom
injection and removed on eject; an ``APPLY_MODEL`` wrapper sets the strengths from the sampler's current sigma
before each model call. The wrapper is the only place a step changes anything, and it only writes new values into
tensors that stay the same (``BypassBank.set_coefficients``): inside the model every step runs the same ops on the
same tensors, which is what upstream's CUDA-graph replay of resident blocks needs. No in-place weight writes, so
the same path runs on 0.3.75, offloaded models and upstream's dynamic-VRAM models.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import comfy.utils
import torch
from comfy.patcher_extension import WrappersMP

from ...lora_math.names.shared_inputs import shared_inputs
from ...lora_math.schedule import Schedule
from ...lora_math.weights import bypass as bypass_math
from .module_hooks import ModuleHooks

KEY = "lora_loom_schedule"
WRAPPER_KEY = "lora_loom"
CONV_KINDS = {torch.nn.Conv1d: "conv1d", torch.nn.Conv2d: "conv2d", torch.nn.Conv3d: "conv3d"}


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


class _Installed:
    """A plan's bank, hooked onto the layers of one model."""

    def __init__(self, plan: BypassPlan, bank: bypass_math.BypassBank) -> None:
        self.plan, self.bank = plan, bank
        self.hooks = ModuleHooks()
        self._values: dict[int, list[list[float]]] = {}  # steps in the run -> per step, per channel
        self._sigmas: tuple[object, list[float]] | None = None  # the run's sample_sigmas and their values

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

    def sigma_values(self, sigmas) -> list[float]:
        """The run's sigmas as floats, read once per run (one host sync), not once per model call."""
        if self._sigmas is None or self._sigmas[0] is not sigmas:
            self._sigmas = (sigmas, [float(s) for s in sigmas.tolist()])
        return self._sigmas[1]


_banks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # plan -> bank (factor copies die with the plan)
_installed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> _Installed


def _bank(model, plan: BypassPlan) -> bypass_math.BypassBank:
    bank = _banks.get(plan)
    if bank is None:
        layers = []
        for key, terms in plan.terms.items():
            module = comfy.utils.get_attr(model, key.rpartition(".")[0])
            kind = next((k for cls, k in CONV_KINDS.items() if isinstance(module, cls)), "linear")
            conv_args = None
            if kind != "linear":
                conv_args = {a: getattr(module, a) for a in ("stride", "padding", "dilation", "groups", "padding_mode")}
            layers.append(bypass_math.BypassLayer(int(module.weight.shape[0]), kind, terms, conv_args))
        index = {key: i for i, key in enumerate(plan.terms)}
        shared = [[index[k] for k in group] for group in shared_inputs(plan.terms)]  # q/k/v: one down GEMM
        bank = _banks[plan] = bypass_math.BypassBank(layers, len(plan.channels), shared)
    return bank


def _layer_hook(add, index: int, needs_weight: bool):
    if needs_weight:
        return lambda module, x, out: add(index, x, out, module.weight)
    return lambda module, x, out: add(index, x, out)


def install(patcher) -> None:
    """Hook this patcher's bypass plan (if any) onto its model, replacing whatever plan was hooked there."""
    plan: BypassPlan | None = patcher.get_attachment(KEY)
    current = _installed.get(patcher.model)
    if current is not None and current.plan is plan:
        return
    uninstall(patcher.model)
    if plan is None or not plan.terms:
        return
    installed = _Installed(plan, _bank(patcher.model, plan))
    for index, (key, terms) in enumerate(plan.terms.items()):
        module = comfy.utils.get_attr(patcher.model, key.rpartition(".")[0])
        dora = any(getattr(t.adapter, "dora_scale", None) is not None for t in terms)
        installed.hooks.on_output(module, _layer_hook(installed.bank.add, index, dora))
    _installed[patcher.model] = installed


def uninstall(model) -> None:
    installed = _installed.pop(model, None)
    if installed is not None:
        installed.hooks.remove()


def installed_on(model) -> _Installed | None:
    return _installed.get(model)


def _sigma_index(sigmas: list[float], sigma: float) -> int:
    """The step whose interval holds ``sigma``: i where sigmas[i] >= sigma > sigmas[i + 1] (multi-eval samplers too)."""
    above = sum(1 for s in sigmas if s >= sigma * (1 - 1e-5))
    return min(max(above - 1, 0), len(sigmas) - 2)


def _apply_model_wrapper(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kw):
    installed = _installed.get(executor.class_obj)
    if installed is not None:
        sigmas = (transformer_options or {}).get("sample_sigmas")
        sigma = float(t.max())
        if sigmas is not None and len(sigmas) > 1:
            values = installed.sigma_values(sigmas)
            installed.set_step(_sigma_index(values, sigma), len(values) - 1)
        else:  # a model call outside a sampler: ComfyUI's own percent convention
            installed.set_progress(_percent_of_sigma(executor.class_obj.model_sampling, sigma))
        # the factors on the device, in the dtype apply_model runs the layers in, before the call (a compiled model
        # must find them there: made inside, they would cost a second compile)
        base = executor.class_obj
        installed.bank.prepare(x.device, getattr(base, "manual_cast_dtype", None) or base.get_dtype())
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


def add_bypass_plan(patcher, terms: dict[str, list[bypass_math.BypassTerm]], channels: Sequence[Channel]) -> None:
    plan = patcher.get_attachment(KEY) or BypassPlan()
    patcher.set_attachments(KEY, plan.extended(terms, channels))
    if not patcher.get_wrappers(WrappersMP.APPLY_MODEL, WRAPPER_KEY):
        patcher.add_wrapper_with_key(WrappersMP.APPLY_MODEL, WRAPPER_KEY, _apply_model_wrapper)
