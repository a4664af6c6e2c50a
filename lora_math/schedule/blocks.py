"""Per-block schedules (``IN: 0:1, 1:0 | OUT: smooth: 0:0, 1:1 | *: 1``): one schedule per block of the model."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..entries import entry_label, split_entries
from ..names.blocks import block_id
from .curve import Schedule
from .text import parse_at, parse_schedule

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
        schedule = parse_at(token[m.end() :], pos - 1 + m.end(), f"{input_name}, {sel}")
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
