"""Strength schedules: a LoRA's strength as a function of sampling progress, per LoRA and per block.

A :class:`Schedule` is a list of keyframes ``(position, strength)`` with an interpolation mode for each segment
between two keyframes:

- ``hold``: the segment keeps its first keyframe's strength up to (not including) the next keyframe;
- ``linear``: a straight line between the two strengths;
- ``smooth``: a cosine ease, ``s0 + (s1 - s0) * (1 - cos(pi * t)) / 2``: flat at both ends, linear's value halfway.

Before the first keyframe the first strength holds, after the last the last strength holds. Positions are either
*progress* (0 = start of sampling, 1 = end) or *steps* (sampling step indices, resolved against the run's step count
by :meth:`Schedule.resolve`); one schedule uses one kind.

Steps and progress
------------------
Step ``i`` of an ``n``-step run is at progress ``i / n`` (:func:`step_progress`): the step that starts at sigma
index ``i`` of ComfyUI's ``n + 1`` sigmas, so step 0 is at 0 and the last step at ``(n - 1) / n``; progress 1 is
the final sigma, where no step starts. :meth:`Schedule.values` gives the strength at the start of each step, as
ComfyUI's hook keyframes do (a keyframe applies from the first step whose sigma has reached it). A step keyframe
``@k`` is at progress ``k / n``, so it sets the strength of step ``k`` exactly. ComfyUI's own ``start_percent``
inputs pass through ``model_sampling.percent_to_sigma``, which is linear in the model's timestep rather than in the
step index; with the ``simple``/``sgm_uniform`` schedulers the two agree, with others (karras, exponential) a
percent may land a step or so away. A caller that turns :meth:`Schedule.plateaus` into hook keyframes should
therefore key them to the step index (the position of the current sigma in the run's sigmas), not to percents.

Text form (:func:`parse_schedule`)
----------------------------------
::

    [MODE:] POSITION:STRENGTH [MODE], POSITION:STRENGTH [MODE], …

- Keyframes are separated by commas, semicolons or new lines; spaces are free.
- POSITION is progress ``0.4``, a percent ``40%`` (= 0.4) or a step index ``@3``; positions must increase.
- STRENGTH is any finite number (negative and above 1 allowed).
- MODE is ``hold``, ``linear`` (alias ``lin``) or ``smooth`` (aliases ``cosine``, ``cos``, ``ease``). A mode
  in front, ``smooth: 0:0, 1:1``, is the schedule's mode (``linear`` when left out); a mode after a keyframe's
  strength sets the segment that *starts* at that keyframe: ``0:0 smooth, 0.5:1 hold, 0.8:1, 1:0``.
- A lone number (``0.8``) is a constant schedule; a lone preset name (``fade_in``) is that preset with its
  default parameters (:data:`PRESETS`; ``cross_fade`` makes two schedules, so it has no text form).

Examples: ``0:0.2, 0.4:1.0, 1:0`` · ``smooth: 0%:0, 50%:1, 100%:0`` · ``@0:1 hold, @10:0`` · ``0:0 hold, 0.5:1``.
:meth:`Schedule.to_text` writes the canonical form (fractions; the most common mode in front, left out when it is
``linear`` or ties with it; other modes after their keyframes), which parses back to an equal schedule.

Per-block schedules (:func:`parse_block_schedules`)
--------------------------------------------------
::

    SELECTOR: SCHEDULE | SELECTOR: SCHEDULE | …

Entries are separated by ``|`` or new lines (so within one entry, keyframes are separated by commas or
semicolons). SELECTOR is a block (``IN04``/``IN4``, ``MID``/``M00``, ``OUT11``, ``D05``, ``S12``, ``BASE``, the ids of
:func:`lora_math.blocks.block_id`), a group (``IN``, ``OUT``, ``D``/``DOUBLE``, ``S``/``SINGLE``: each of its blocks
without its own entry) or ``*``/``DEFAULT`` (every block not named). A block entry beats its group, a group beats
``*``. Example::

    IN: 0:1, 1:0 | OUT: smooth: 0:0, 1:1 | *: 1

Errors are ``ValueError`` naming the input, the entry number, its character position (from 1, in the whole text)
and the token, as in :mod:`lora_math.blocks`, and saying what to write instead. :class:`Schedule` and
:class:`BlockSchedules` check themselves when built, so a schedule made in code is validated too.
"""

from __future__ import annotations

import inspect
import math
import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType

from .entries import entry_label, split_entries
from .names.blocks import block_id

__all__ = [
    "MODES",
    "PRESETS",
    "BlockSchedules",
    "Plateau",
    "Schedule",
    "parse_any_schedule",
    "parse_block_schedules",
    "parse_schedule",
    "preset",
    "step_progress",
]

MODES: tuple[str, ...] = ("hold", "linear", "smooth")
_MODE_ALIASES = {"hold": "hold", "linear": "linear", "lin": "linear", "smooth": "smooth", "cosine": "smooth"}
_MODE_ALIASES |= {"cos": "smooth", "ease": "smooth"}
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


# --- the schedule ---------------------------------------------------------------------------------------------------


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
            where = f"Schedule: keyframe {i + 1} ({_fmt(position)}, {_fmt(strength)})"
            if not (math.isfinite(position) and math.isfinite(strength)):
                raise ValueError(f"{where}: positions and strengths must be finite numbers")
            problem = _range_problem(position, self.unit) or (
                _order_problem(position, keyframes[i - 1][0], self.unit) if i else None
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
            canonical = _MODE_ALIASES.get(str(mode).lower())
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
            pos = f"@{int(position)}" if self.unit == "steps" else _fmt(position)
            part = f"{pos}:{_fmt(strength)}"
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


def _range_problem(position: float, unit: str) -> str | None:
    if unit == "steps":
        if position < 0 or not position.is_integer():
            return f"step position {_fmt(position)} must be a whole step index >= 0"
        return None
    if not 0.0 <= position <= 1.0:
        hint = ""
        if position > 1 and position.is_integer():
            n = int(position)
            hint = f"; for step {n} write '@{n}', for {n} percent write '{n}%'"
        return f"position {_fmt(position)} is outside 0..1 (0 = start of sampling, 1 = end){hint}"
    return None


def _order_problem(position: float, previous: float, unit: str) -> str | None:
    show = (lambda p: f"@{int(p)}") if unit == "steps" else _fmt
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


def _fmt(value: float) -> str:
    """Shortest text that reads back to exactly ``value`` (``1`` not ``1.0``)."""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


# --- presets --------------------------------------------------------------------------------------------------------


def _check_fraction(name: str, param: str, value: float, *, zero: bool = True, one: bool = True) -> float:
    value = float(value)
    ok = math.isfinite(value) and (0 < value < 1 or (zero and value == 0) or (one and value == 1))
    if not ok:
        bounds = f"{'from 0' if zero else 'above 0'} {'to 1' if one else 'and below 1'}"
        raise ValueError(f"preset {name}: {param} must be {bounds} (progress), got {value!r}")
    return value


def _check_span(name: str, start: float, end: float) -> None:
    _check_fraction(name, "start", start)
    _check_fraction(name, "end", end)
    if not start < end:
        raise ValueError(f"preset {name}: start ({start!r}) must be before end ({end!r})")


def fade_in(
    start: float = 0.0, end: float = 1.0, low: float = 0.0, high: float = 1.0, mode: str = "linear"
) -> Schedule:
    """``low`` until ``start``, rising to ``high`` at ``end``."""
    _check_span("fade_in", start, end)
    return Schedule(((start, low), (end, high)), mode)


def fade_out(
    start: float = 0.0, end: float = 1.0, high: float = 1.0, low: float = 0.0, mode: str = "linear"
) -> Schedule:
    """``high`` until ``start``, falling to ``low`` at ``end``."""
    _check_span("fade_out", start, end)
    return Schedule(((start, high), (end, low)), mode)


def late_only(at: float = 0.5, strength: float = 1.0) -> Schedule:
    """Off (0) before progress ``at``, ``strength`` from there on: the LoRA shapes details, not composition."""
    _check_fraction("late_only", "at", at, zero=False, one=False)
    return Schedule(((0.0, 0.0), (at, strength)), "hold")


def early_only(until: float = 0.5, strength: float = 1.0) -> Schedule:
    """``strength`` before progress ``until``, off (0) from there on: the LoRA shapes composition only."""
    _check_fraction("early_only", "until", until, zero=False, one=False)
    return Schedule(((0.0, strength), (until, 0.0)), "hold")


def pulse(
    center: float = 0.5, width: float = 0.5, strength: float = 1.0, low: float = 0.0, mode: str = "smooth"
) -> Schedule:
    """``low``, rising to ``strength`` at ``center`` and back to ``low``, over ``width`` of the run."""
    _check_fraction("pulse", "center", center)
    if not (math.isfinite(width) and width > 0):
        raise ValueError(f"preset pulse: width must be above 0, got {width!r}")
    lo, hi = center - width / 2, center + width / 2
    if lo < 0 or hi > 1:
        raise ValueError(
            f"preset pulse: center {center!r} ± width/2 ({lo:g} … {hi:g}) leaves 0..1; "
            f"narrow the width to at most {2 * min(center, 1 - center):g} or move the center"
        )
    return Schedule(((lo, low), (center, strength), (hi, low)), mode)


def cross_fade(
    start: float = 0.0, end: float = 1.0, strength: float = 1.0, mode: str = "linear"
) -> tuple[Schedule, Schedule]:
    """Two schedules for two LoRAs: the first fades out while the second fades in; they sum to ``strength``."""
    _check_span("cross_fade", start, end)
    return (
        Schedule(((start, strength), (end, 0.0)), mode),
        Schedule(((start, 0.0), (end, strength)), mode),
    )


PRESETS: Mapping[str, Callable[..., Schedule | tuple[Schedule, Schedule]]] = MappingProxyType(
    {
        "fade_in": fade_in,
        "fade_out": fade_out,
        "late_only": late_only,
        "early_only": early_only,
        "pulse": pulse,
        "cross_fade": cross_fade,
    }
)


def _preset_key(name: str) -> str:
    return re.sub(r"[\s-]+", "_", name.strip().lower())


def preset(name: str, **params: float | str) -> Schedule | tuple[Schedule, Schedule]:
    """The preset ``name`` (:data:`PRESETS`) with ``params``; ``cross_fade`` returns a pair of schedules."""
    key = _preset_key(name)
    make = PRESETS.get(key)
    if make is None:
        raise ValueError(f"unknown schedule preset {name!r}; known presets: {', '.join(PRESETS)}")
    signature = inspect.signature(make)
    unknown = [p for p in params if p not in signature.parameters]
    if unknown:
        raise ValueError(
            f"preset {key} has no parameter {', '.join(map(repr, unknown))}; it takes {', '.join(signature.parameters)}"
        )
    try:
        return make(**params)
    except (TypeError, ValueError) as e:  # a parameter of the wrong kind, or a Schedule it cannot build
        if str(e).startswith(f"preset {key}"):
            raise
        raise ValueError(f"preset {key}: {str(e).removeprefix('Schedule: ')}") from e


# --- parsing --------------------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_NONFINITE = re.compile(r"^[+-]?(nan|inf|infinity)$", re.I)
_WORD_PREFIX = re.compile(r"^([A-Za-z_][\w-]*)\s*:")
_WORD = re.compile(r"^[A-Za-z_][\w -]*$")


def _number(raw: str, where: str, what: str) -> float:
    raw = raw.strip()
    if _NONFINITE.match(raw):
        raise ValueError(f"{where}: {what} {raw!r} is not a finite number")
    if not _NUMBER.match(raw):
        raise ValueError(f"{where}: {what} {raw!r} is not a number")
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"{where}: {what} {raw!r} is too large (not a finite number)")
    return value


def _mode(word: str, where: str) -> str:
    mode = _MODE_ALIASES.get(word.lower())
    if mode is None:
        raise ValueError(
            f"{where}: {word!r} is not an interpolation; use hold, linear or smooth (also lin, cosine, cos, ease)"
        )
    return mode


def _position(raw: str, where: str) -> tuple[float, str]:
    """(position, unit) of a POSITION token: ``0.4``, ``40%`` or ``@3``."""
    raw = raw.strip()
    if not raw:
        raise ValueError(f"{where}: no position before ':'; write e.g. '0.4:1.0', '40%:1.0' or '@3:1.0'")
    if raw.startswith("@"):
        body = raw[1:].strip()
        if not re.fullmatch(r"[0-9]+", body):
            raise ValueError(f"{where}: step position {raw!r} must be a whole step index like '@3'")
        return float(int(body)), "steps"
    if raw.endswith("%"):
        body = raw[:-1].strip()
        percent = _number(body, where, "percent")
        if not 0 <= percent <= 100:
            raise ValueError(f"{where}: position {raw} is outside 0%..100%")
        return float(Decimal(body) / 100), "progress"  # exact: '33.3%' reads as 0.333, not 0.33299999999999996
    position = _number(raw, where, "position")
    problem = _range_problem(position, "progress")
    if problem:
        raise ValueError(f"{where}: {problem}")
    return position, "progress"


def _keyframe(token: str, where: str) -> tuple[float, str, float, str | None]:
    """(position, unit, strength, mode of the segment it starts or None) of a ``POSITION:STRENGTH [MODE]`` token."""
    if "|" in token:
        raise ValueError(f"{where}: '|' separates blocks in per-block schedules; separate keyframes with commas")
    if ":" not in token:
        raise ValueError(f"{where}: expected POSITION:STRENGTH, like '0.4:1.0', '40%:1.0' or '@3:1.0'")
    raw_position, rest = token.split(":", 1)
    words = rest.split()
    if ":" in rest or len(words) > 2:
        hint = "; is a comma missing between two keyframes?" if ":" in rest else ""
        raise ValueError(f"{where}: expected one strength and at most one interpolation after ':'{hint}")
    position, unit = _position(raw_position, where)
    if not words:
        raise ValueError(f"{where}: no strength after ':'")
    strength = _number(words[0], where, "strength")
    mode = _mode(words[1], where) if len(words) == 2 else None
    return position, unit, strength, mode


def parse_schedule(text: str, input_name: str = "schedule") -> Schedule:
    """Parse a schedule text (see the module docstring). Raises ``ValueError`` starting with ``input_name``."""
    return _parse(text or "", 0, input_name)


def _parse(text: str, offset: int, input_name: str) -> Schedule:
    stripped = text.strip()
    if not stripped:
        raise ValueError(
            f"{input_name}: empty; write keyframes like '0:0.2, 0.4:1.0, 1:0', one strength like '0.8', "
            f"or a preset name ({', '.join(p for p in PRESETS if p != 'cross_fade')})"
        )
    lead = offset + text.index(stripped)
    if _NUMBER.match(stripped) or _NONFINITE.match(stripped):
        return Schedule.constant(_number(stripped, entry_label(input_name, 1, lead + 1, stripped), "strength"))
    if _WORD.match(stripped):
        key = _preset_key(stripped)
        if key == "cross_fade":
            raise ValueError(
                f"{input_name}: cross_fade makes two schedules (one per LoRA), so it cannot be one schedule's text; "
                "write the two fades, e.g. '0:1, 1:0' and '0:0, 1:1'"
            )
        if key in PRESETS:
            made = preset(key)
            assert isinstance(made, Schedule)
            return made
        raise ValueError(
            f"{entry_label(input_name, 1, lead + 1, stripped)}: unknown schedule preset; known presets: "
            f"{', '.join(p for p in PRESETS if p != 'cross_fade')} (or write keyframes like '0:0, 1:1')"
        )
    default_mode = "linear"
    body, body_offset = stripped, lead
    prefix = _WORD_PREFIX.match(stripped)
    if prefix and not _NONFINITE.match(prefix.group(1)):
        default_mode = _mode(prefix.group(1), entry_label(input_name, 1, lead + 1, prefix.group(0)))
        body, body_offset = stripped[prefix.end() :], lead + prefix.end()
    tokens = split_entries(body, body_offset)
    if not tokens:
        raise ValueError(f"{input_name}: no keyframes after '{prefix.group(0) if prefix else ''}'")
    keyframes: list[tuple[float, float]] = []
    segment_modes: list[str | None] = []
    unit = None
    for n, pos, token in tokens:
        where = entry_label(input_name, n, pos, token)
        position, kind, strength, mode = _keyframe(token, where)
        if unit is not None and kind != unit:
            raise ValueError(
                f"{where}: mixes step positions (@n) with progress positions (0..1 or %); use one kind per schedule"
            )
        unit = kind
        problem = _order_problem(position, keyframes[-1][0], kind) if keyframes else None
        if problem:
            raise ValueError(f"{where}: {problem}")
        keyframes.append((position, strength))
        segment_modes.append(mode)
    if segment_modes[-1] is not None:
        n, pos, token = tokens[-1]
        raise ValueError(
            f"{entry_label(input_name, n, pos, token)}: '{segment_modes[-1]}' after the last keyframe has no segment to "
            "apply to; put a mode on the keyframe where its segment starts"
        )
    modes = tuple(m or default_mode for m in segment_modes[:-1])
    return Schedule(tuple(keyframes), modes, unit or "progress")


# --- per-block schedules --------------------------------------------------------------------------------------------

_ENTRY = re.compile(r"[^|\n]+")
_SELECTOR = re.compile(r"^(\*|[A-Za-z][A-Za-z0-9]*)\s*:")
_GROUPS = {"IN": "IN", "OUT": "OUT", "D": "D", "DOUBLE": "D", "S": "S", "SINGLE": "S"}
_BLOCK = re.compile(r"^(IN|OUT|D|S|M)(\d{1,2})$")
_NUMBERED = re.compile(r"^(IN|OUT|D|S)(\d+)$")
_RANK = {"BASE": 0, "IN": 1, "MID": 2, "OUT": 3, "D": 4, "S": 5}
_SELECTOR_HELP = "a block (IN04, MID, OUT11, D05, S12, BASE), a group (IN, OUT, D, S) or * for all others"


def _selector(text: str) -> str | None:
    """Canonical selector: ``*``, ``BASE``, ``MID``, a group (``IN``/``OUT``/``D``/``S``) or a block id; else None."""
    sel = text.strip().upper()
    if sel in ("*", "DEFAULT"):
        return "*"
    if sel in ("BASE", "MID"):
        return sel
    if sel in _GROUPS:
        return _GROUPS[sel]
    m = _BLOCK.match(sel)
    if not m:
        return None
    if m.group(1) == "M":
        return "MID" if int(m.group(2)) == 0 else None
    return f"{m.group(1)}{int(m.group(2)):02d}"


def _selector_order(sel: str) -> tuple[int, int]:
    m = _NUMBERED.match(sel)
    if m:
        return _RANK[m.group(1)], int(m.group(2))
    return _RANK[sel], -1


_ONE = Schedule.constant(1.0)


@dataclass(frozen=True)
class BlockSchedules:
    """A schedule per block or group of blocks, and a default for the rest; frozen, hashable.

    entries: ``((selector, schedule), …)`` or a mapping; selectors are block ids (``IN04``, ``MID``, ``OUT11``,
    ``D05``, ``S12``, ``BASE``) or groups (``IN``, ``OUT``, ``D``, ``S``), stored canonical and in block order.
    default: for blocks no entry covers (constant 1.0 unless given).
    """

    entries: tuple[tuple[str, Schedule], ...] = ()
    default: Schedule = field(default=_ONE)

    def __post_init__(self) -> None:
        pairs = self.entries.items() if isinstance(self.entries, Mapping) else self.entries
        seen: dict[str, Schedule] = {}
        for raw, schedule in pairs:
            sel = _selector(raw)
            if sel == "*":
                raise ValueError("BlockSchedules: give the schedule for all other blocks as default=, not as '*'")
            if sel is None:
                raise ValueError(f"BlockSchedules: {raw!r} is not a block (IN04, MID, OUT11, D05, S12, BASE) or group")
            if sel in seen:
                raise ValueError(f"BlockSchedules: {sel} given twice")
            if not isinstance(schedule, Schedule):
                raise ValueError(f"BlockSchedules: {sel} maps to {type(schedule).__name__}, not a Schedule")
            seen[sel] = schedule
        if not isinstance(self.default, Schedule):
            raise ValueError(f"BlockSchedules: default is {type(self.default).__name__}, not a Schedule")
        object.__setattr__(self, "entries", tuple(sorted(seen.items(), key=lambda kv: _selector_order(kv[0]))))

    @property
    def schedules(self) -> Mapping[str, Schedule]:
        """Selector -> schedule (read-only)."""
        return MappingProxyType(dict(self.entries))

    @property
    def is_constant(self) -> bool:
        """True when every block's schedule is constant (strengths may still differ between blocks)."""
        return self.default.is_constant and all(s.is_constant for _, s in self.entries)

    def for_block(self, bid: str) -> Schedule:
        """The schedule of block ``bid`` (``IN04``, ``MID``, ``D05``, ``BASE``…): its own, its group's, or the default."""
        canonical = _selector(bid) or bid.upper()
        schedules = dict(self.entries)
        if canonical in schedules:
            return schedules[canonical]
        m = _NUMBERED.match(canonical)
        if m and m.group(1) in schedules:
            return schedules[m.group(1)]
        return self.default

    def for_key(self, model_key: str) -> Schedule:
        """The schedule of the block that ModelPatcher key ``model_key`` is in (:func:`lora_math.blocks.block_id`)."""
        return self.for_block(block_id(model_key))

    def to_text(self) -> str:
        """The canonical text form; :func:`parse_block_schedules` reads it back to an equal value."""
        parts = [f"{sel}: {schedule.to_text()}" for sel, schedule in self.entries]
        if self.default != _ONE:
            parts.append(f"*: {self.default.to_text()}")
        return " | ".join(parts)


def parse_block_schedules(
    text: str, input_name: str = "block_schedules", default: Schedule | None = None
) -> BlockSchedules:
    """Parse ``SELECTOR: SCHEDULE | …`` (see the module docstring); empty text schedules no block.

    default: for blocks no entry covers when the text has no ``*`` entry (constant 1.0 when None).
    Raises ``ValueError`` starting with ``input_name``.
    """
    text = text or ""
    entries: dict[str, Schedule] = {}
    first_entry: dict[str, int] = {}
    star: Schedule | None = None
    for n, pos, token in split_entries(text, 0, _ENTRY):
        where = entry_label(input_name, n, pos, token)
        m = _SELECTOR.match(token)
        if m is None:
            raise ValueError(
                f"{where}: expected SELECTOR: SCHEDULE, e.g. 'IN: 0:1, 1:0'; a selector is {_SELECTOR_HELP}"
            )
        sel = _selector(m.group(1))
        if sel is None:
            raise ValueError(f"{where}: unknown selector {m.group(1)!r}; use {_SELECTOR_HELP}")
        if sel in first_entry:
            raise ValueError(f"{where}: {sel} already has a schedule (entry {first_entry[sel]}); give each block once")
        first_entry[sel] = n
        schedule = _parse(token[m.end() :], pos - 1 + m.end(), f"{input_name}, {sel}")
        if sel == "*":
            star = schedule
        else:
            entries[sel] = schedule
    return BlockSchedules(tuple(entries.items()), star or default or _ONE)


def parse_any_schedule(text: str, input_name: str = "schedule") -> Schedule | BlockSchedules:
    """One schedule, or per-block schedules when the text has ``|`` or starts with a block selector (``IN: …``).

    Mode prefixes (``smooth: …``) and preset names are not selectors, so they read as one schedule.
    """
    m = _SELECTOR.match(text.strip())
    if "|" in text or (m is not None and _selector(m.group(1)) is not None):
        return parse_block_schedules(text, input_name)
    return parse_schedule(text, input_name)
