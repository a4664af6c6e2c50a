"""Header values: decoding the strings a safetensors header holds, and the tag counts of ``ss_tag_frequency``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

_UNSET = ("", "None", "none", "null")


def decode_value(value: Any) -> Any:
    """Header values are strings; JSON ones (ss_tag_frequency, lora_adapter_metadata, software …) are decoded."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text[:1] in "{[":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return value
    return value


def is_present(value: Any) -> bool:
    return value is not None and (not isinstance(value, str) or value.strip() not in _UNSET)


def is_unset(value: str) -> bool:
    return not is_present(value) or decode_value(value) in ({}, [])


def scalar(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def flat(value: Any) -> str:
    """One line: a JSON object as ``field: value, …``, a list of scalars comma separated, whitespace collapsed."""
    if isinstance(value, Mapping):
        text = ", ".join(f"{k}: {scalar(v)}" for k, v in value.items())
    elif isinstance(value, list) and all(not isinstance(v, Mapping | list) for v in value):
        text = ", ".join(scalar(v) for v in value)
    else:
        text = scalar(value)
    return " ".join(text.split())


def number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def tag_totals(tag_frequency: Any) -> dict[str, float]:
    totals: dict[str, float] = {}
    if not isinstance(tag_frequency, Mapping):
        return totals
    for tags in tag_frequency.values():
        if not isinstance(tags, Mapping):
            continue
        for tag, count in tags.items():
            if isinstance(count, int | float) and not isinstance(count, bool):
                tag = str(tag).strip()
                if tag:
                    totals[tag] = totals.get(tag, 0) + count
    return totals


def ranked_tags(tag_frequency: Any) -> list[tuple[str, float]]:
    return sorted(tag_totals(tag_frequency).items(), key=lambda kv: (-kv[1], kv[0]))
