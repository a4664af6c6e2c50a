"""Named schedules with parameters: fade in/out, early/late only, pulse, cross-fade."""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType

from .curve import Schedule


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


def preset_key(name: str) -> str:
    return re.sub(r"[\s-]+", "_", name.strip().lower())


def preset(name: str, **params: float | str) -> Schedule | tuple[Schedule, Schedule]:
    """The preset ``name`` (:data:`PRESETS`) with ``params``; ``cross_fade`` returns a pair of schedules."""
    key = preset_key(name)
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
