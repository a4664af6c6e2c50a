"""Learning-rate schedules for the trainer: a multiplier on the base learning rate at each optimizer step.

Steps are optimizer steps, 0-based: a run of ``total_steps`` steps runs steps ``0 … total_steps - 1``.

Warmup
------
``warmup_steps = w`` ramps the factor linearly over the first ``w`` steps: step ``s < w`` runs at ``(s + 1) / (w + 1)``,
so the ramp is ``1/(w+1), 2/(w+1), … w/(w+1)`` and step ``w`` is the first at the full rate (1). No step runs at 0,
so no step is wasted. (diffusers' ``get_scheduler`` uses ``s / w``, whose step 0 runs at 0 and step ``w`` reaches 1:
the same ramp, shifted by one step.)

After warmup
------------
The decay spans steps ``w … total_steps - 1``; ``t = (s - w) / (total_steps - 1 - w)`` goes from 0 at step ``w`` to 1
at the last step:

- ``constant``: 1 (``min_factor`` is not used);
- ``cosine``: ``min_factor + (1 - min_factor) * (1 + cos(pi * t)) / 2``;
- ``linear``: ``1 - (1 - min_factor) * t``.

So cosine and linear start at 1 on step ``w`` and reach ``min_factor`` exactly on the last step (with the default
``min_factor = 0`` the last step runs at 0). When warmup leaves a single step (``w = total_steps - 1``) there is nothing
to decay over and that step runs at 1.

:func:`lr_lambda` wraps the same function for ``torch.optim.lr_scheduler.LambdaLR``, which asks for step
``total_steps`` after the last optimizer step (``scheduler.step()`` after the last update): steps past the end hold
the last step's factor. Errors are ``ValueError`` naming the input (``lr_schedule``, ``steps``, ``warmup_steps``,
``min_factor``, ``step``).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

__all__ = ["LR_SCHEDULES", "LRLambda", "lr_factor", "lr_lambda"]

LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine", "linear")


def _whole(value: object, name: str, low: int, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name}: must be a whole number {what}, got {value!r}")
    try:
        number = operator.index(value)  # int, numpy integers; not floats
    except TypeError:
        raise ValueError(f"{name}: must be a whole number {what}, got {value!r}") from None
    if number < low:
        raise ValueError(f"{name}: must be a whole number {what}, got {value!r}")
    return number


def _check(schedule: str, total_steps: int, warmup_steps: int, min_factor: float) -> tuple[str, int, int, float]:
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule: {schedule!r} is not a schedule; use one of {', '.join(LR_SCHEDULES)}")
    total = _whole(total_steps, "steps", 1, "of at least 1")
    warmup = _whole(warmup_steps, "warmup_steps", 0, "of at least 0")
    if warmup >= total:
        raise ValueError(
            f"warmup_steps: {warmup} warmup steps leave no step at the full learning rate in a {total}-step run; "
            f"use at most {total - 1}"
        )
    if isinstance(min_factor, bool) or not isinstance(min_factor, (int, float)):
        raise ValueError(f"min_factor: must be a number in 0..1, got {min_factor!r}")
    floor = float(min_factor)
    if not (math.isfinite(floor) and 0.0 <= floor <= 1.0):
        raise ValueError(f"min_factor: must be a number in 0..1, got {min_factor!r}")
    return schedule, total, warmup, floor


def _factor(schedule: str, step: int, total: int, warmup: int, floor: float) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    span = total - 1 - warmup
    if schedule == "constant" or span == 0:
        return 1.0
    t = (step - warmup) / span
    if schedule == "cosine":
        return floor + (1.0 - floor) * (1.0 + math.cos(math.pi * t)) / 2.0
    return 1.0 - (1.0 - floor) * t


def lr_factor(schedule: str, step: int, total_steps: int, warmup_steps: int = 0, min_factor: float = 0.0) -> float:
    """The multiplier on the base learning rate at optimizer step ``step`` (0-based) of ``total_steps``.

    schedule: one of :data:`LR_SCHEDULES`; warmup_steps: ``0 … total_steps - 1`` (see the module docstring);
    min_factor: where cosine and linear end on the last step, in 0..1. ``step`` must be in ``0 … total_steps - 1``.
    """
    schedule, total, warmup, floor = _check(schedule, total_steps, warmup_steps, min_factor)
    index = _whole(step, "step", 0, "of at least 0")
    if index >= total:
        raise ValueError(f"step: {index} is past the last step ({total - 1}) of a {total}-step run")
    return _factor(schedule, index, total, warmup, floor)


@dataclass(frozen=True)
class LRLambda:
    """``lr_factor`` as a callable of the step for ``LambdaLR``; steps past the end hold the last step's factor.

    A callable object rather than a closure, so ``LambdaLR.state_dict()`` keeps its settings for resuming.
    """

    schedule: str
    total_steps: int
    warmup_steps: int = 0
    min_factor: float = 0.0

    def __post_init__(self) -> None:
        schedule, total, warmup, floor = _check(self.schedule, self.total_steps, self.warmup_steps, self.min_factor)
        object.__setattr__(self, "total_steps", total)
        object.__setattr__(self, "warmup_steps", warmup)
        object.__setattr__(self, "min_factor", floor)

    def __call__(self, step: int) -> float:
        index = min(max(int(step), 0), self.total_steps - 1)
        return _factor(self.schedule, index, self.total_steps, self.warmup_steps, self.min_factor)


def lr_lambda(schedule: str, total_steps: int, warmup_steps: int = 0, min_factor: float = 0.0) -> LRLambda:
    """A callable ``step -> factor`` for ``torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(...))``.

    Validated now (same errors as :func:`lr_factor`). Call ``scheduler.step()`` once after each ``optimizer.step()``:
    the optimizer's learning rate for step ``s`` is then ``base_lr * lr_factor(schedule, s, …)``.
    """
    return LRLambda(schedule, total_steps, warmup_steps, min_factor)
