"""Splitting user-typed lists (block weights, schedules) into entries that errors can point at."""

from __future__ import annotations

import re

ENTRY = re.compile(r"[^,;\n]+")  # entries are separated by ',', ';' or new lines


def split_entries(text: str, offset: int = 0, pattern: re.Pattern[str] = ENTRY) -> list[tuple[int, int, str]]:
    """(entry number from 1, character position from 1, stripped entry) of each non-empty entry.

    ``offset`` is where ``text`` starts inside the whole input, so positions are the user's.
    """
    out = []
    for m in pattern.finditer(text):
        raw = m.group()
        token = raw.strip()
        if token:
            out.append((len(out) + 1, offset + m.start() + (len(raw) - len(raw.lstrip())) + 1, token))
    return out


def entry_label(input_name: str, n: int, pos: int, token: str) -> str:
    """The prefix of an error about one entry: which input, which entry, where, what was typed."""
    return f"{input_name}: entry {n} {token!r} (at character {pos})"
