"""The text form of one schedule (``0:0.2, 0.4:1.0, 1:0``): parsing, with errors that point at the token."""

from __future__ import annotations

import math
import re
from decimal import Decimal

from ..entries import entry_label, split_entries
from .curve import MODE_ALIASES, Schedule, order_problem, range_problem
from .presets import PRESETS, preset, preset_key

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
    mode = MODE_ALIASES.get(word.lower())
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
    problem = range_problem(position, "progress")
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
    return parse_at(text or "", 0, input_name)


def parse_at(text: str, offset: int, input_name: str) -> Schedule:
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
        key = preset_key(stripped)
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
        problem = order_problem(position, keyframes[-1][0], kind) if keyframes else None
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
