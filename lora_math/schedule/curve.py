"""The schedule itself: keyframes, their segments' modes, values per step and plateaus."""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass

MODES: tuple[str, ...] = ("hold", "linear", "smooth")
MODE_ALIASES = {"hold": "hold", "linear": "linear", "lin": "linear", "smooth": "smooth", "cosine": "smooth"}
MODE_ALIASES |= {"cos": "smooth", "ease": "smooth"}
_UNITS = ("progress", "steps")


def step_progress(step: int, num_steps: int) -> float:
    """Progress ``step / num_steps`` of step ``step`` (0-based) of ``num_steps``: where sigma index ``step`` is."""
    _check_num_steps(num_steps)
    if not 0 <= step <= num_steps:
        raise ValueError(f"step {step} is outside 0..{num_steps} for a {num_steps}-step run")
    return step / num_steps


def _check_num_steps(num_steps: int) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a whole number of at least 1, got {num_steps!r}")


@dataclass(frozen=True)
class Plateau:
    """A run of sampling steps ``start … stop - 1`` with one strength; progress ``start_progress`` to ``end_progress``."""

    start: int
    stop: int
    strength: float
    start_progress: float
    end_progress: float

    @property
    def length(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Schedule:
    """Strength keyframes over sampling progress or steps; frozen, hashable, validated when built.

    keyframes: ``((position, strength), …)`` with strictly increasing positions: progress in 0..1 when ``unit`` is
    ``progress``, whole step indices ``>= 0`` when it is ``steps``. Strengths are finite floats.
    modes: one mode (``hold``, ``linear``, ``smooth``) for every segment, or one per segment (``len(keyframes) - 1``);
    always stored as the per-segment tuple.
    """

    keyframes: tuple[tuple[float, float], ...]
    modes: tuple[str, ...] | str = "linear"
    unit: str = "progress"

    def __post_init__(self) -> None:
        keyframes = tuple((float(p), float(s)) for p, s in self.keyframes)
        if not keyframes:
            raise ValueError("Schedule: no keyframes; give at least one (position, strength)")
        if self.unit not in _UNITS:
            raise ValueError(f"Schedule: unit {self.unit!r} is neither 'progress' nor 'steps'")
        for i, (position, strength) in enumerate(keyframes):
            where = f"Schedule: keyframe {i + 1} ({format_number(position)}, {format_number(strength)})"
            if not (math.isfinite(position) and math.isfinite(strength)):
                raise ValueError(f"{where}: positions and strengths must be finite numbers")
            problem = range_problem(position, self.unit) or (
                order_problem(position, keyframes[i - 1][0], self.unit) if i else None
            )
            if problem:
                raise ValueError(f"{where}: {problem}")
        segments = len(keyframes) - 1
        raw = (self.modes,) * segments if isinstance(self.modes, str) else tuple(self.modes)
        if len(raw) != segments:
            raise ValueError(
                f"Schedule: {len(raw)} modes for {segments} segment(s); give one mode, or one per segment "
                "(one fewer than the keyframes)"
            )
        modes = []
        for mode in raw:
            canonical = MODE_ALIASES.get(str(mode).lower())
            if canonical is None:
                raise ValueError(f"Schedule: unknown interpolation {mode!r}; use {', '.join(MODES)}")
            modes.append(canonical)
        object.__setattr__(self, "keyframes", keyframes)
        object.__setattr__(self, "modes", tuple(modes))

    @classmethod
    def constant(cls, strength: float) -> Schedule:
        """The same strength for the whole run."""
        return cls(((0.0, strength),))

    @property
    def is_constant(self) -> bool:
        """True when every keyframe has the same strength (then every mode gives that strength everywhere)."""
        return len({s for _, s in self.keyframes}) == 1

    @property
    def mode(self) -> str:
        """The one mode of every segment, ``linear`` when there is none, or ``mixed``."""
        distinct = set(self.modes)
        if not distinct:
            return "linear"
        return distinct.pop() if len(distinct) == 1 else "mixed"

    def resolve(self, num_steps: int, input_name: str = "schedule") -> Schedule:
        """This schedule in progress units for an ``num_steps``-step run (``@k`` -> ``k / num_steps``).

        Raises ``ValueError`` naming ``input_name`` when a step keyframe lies past the end of the run.
        """
        _check_num_steps(num_steps)
        if self.unit == "progress":
            return self
        last = int(self.keyframes[-1][0])
        if last > num_steps:
            raise ValueError(
                f"{input_name}: keyframe @{last} is past the end of this {num_steps}-step run (steps @0 … "
                f"@{num_steps - 1}, @{num_steps} is the end); lower it, or use a progress position such as 0.5 or 50%"
            )
        return Schedule(tuple((p / num_steps, s) for p, s in self.keyframes), self.modes, "progress")

    def at(self, progress: float) -> float:
        """The strength at ``progress`` (0..1; outside, the first or last keyframe's strength)."""
        if self.unit != "progress":
            raise ValueError(
                "this schedule's positions are step indices (@n): use values(num_steps), or resolve(num_steps) first"
            )
        if math.isnan(progress):
            raise ValueError("progress is NaN")
        keyframes = self.keyframes
        if progress <= keyframes[0][0]:
            return keyframes[0][1]
        if progress >= keyframes[-1][0]:
            return keyframes[-1][1]
        i = bisect_right([p for p, _ in keyframes], progress) - 1
        (p0, s0), (p1, s1) = keyframes[i], keyframes[i + 1]
        mode = self.modes[i]
        if mode == "hold":
            return s0
        t = (progress - p0) / (p1 - p0)
        if mode == "smooth":
            t = (1.0 - math.cos(math.pi * t)) / 2.0
        return s0 + (s1 - s0) * t

    def values(self, num_steps: int) -> list[float]:
        """The strength of each of ``num_steps`` sampling steps: step ``i`` at progress ``i / num_steps``."""
        resolved = self.resolve(num_steps)
        return [resolved.at(i / num_steps) for i in range(num_steps)]

    def plateaus(self, num_steps: int, tolerance: float = 0.0) -> tuple[Plateau, ...]:
        """Runs of consecutive steps with equal strength (within ``tolerance`` of the run's first step).

        A plateau's strength is that of its first step. Few plateaus mean few distinct strengths: a caller may then
        merge the LoRA once per plateau instead of patching every step.
        """
        if not (tolerance >= 0 and math.isfinite(tolerance)):
            raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
        values = self.values(num_steps)
        out: list[Plateau] = []
        start = 0
        for i in range(1, num_steps + 1):
            if i == num_steps or abs(values[i] - values[start]) > tolerance:
                out.append(Plateau(start, i, values[start], start / num_steps, i / num_steps))
                start = i
        return tuple(out)

    def to_text(self) -> str:
        """The canonical text form; :func:`parse_schedule` reads it back to an equal schedule."""
        main = _main_mode(self.modes)
        parts = []
        for i, (position, strength) in enumerate(self.keyframes):
            pos = f"@{int(position)}" if self.unit == "steps" else format_number(position)
            part = f"{pos}:{format_number(strength)}"
            if i < len(self.modes) and self.modes[i] != main:
                part += f" {self.modes[i]}"
            parts.append(part)
        prefix = "" if main == "linear" else f"{main}: "
        return prefix + ", ".join(parts)

    def __str__(self) -> str:
        return self.to_text()


def _main_mode(modes: tuple[str, ...]) -> str:
    """The most common mode (ties: ``linear``, else the first to appear), ``linear`` when there are no segments."""
    counts = Counter(modes)
    best = max(counts.values(), default=0)
    if counts["linear"] == best:
        return "linear"
    return next(m for m in modes if counts[m] == best)


def range_problem(position: float, unit: str) -> str | None:
    if unit == "steps":
        if position < 0 or not position.is_integer():
            return f"step position {format_number(position)} must be a whole step index >= 0"
        return None
    if not 0.0 <= position <= 1.0:
        hint = ""
        if position > 1 and position.is_integer():
            n = int(position)
            hint = f"; for step {n} write '@{n}', for {n} percent write '{n}%'"
        return f"position {format_number(position)} is outside 0..1 (0 = start of sampling, 1 = end){hint}"
    return None


def order_problem(position: float, previous: float, unit: str) -> str | None:
    show = (lambda p: f"@{int(p)}") if unit == "steps" else format_number
    if position == previous:
        return (
            f"position {show(position)} repeats the previous keyframe's; positions must increase "
            "(for a jump, end the segment before it with 'hold')"
        )
    if position < previous:
        return (
            f"position {show(position)} comes before the previous keyframe's ({show(previous)}); "
            "keyframes must be in increasing order"
        )
    return None


def format_number(value: float) -> str:
    """Shortest text that reads back to exactly ``value`` (``1`` not ``1.0``)."""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)
