"""Likely trigger words of a LoRA file, from its header.

Trigger words, in order, without repeats (case-insensitive): ``modelspec.trigger_phrase`` and ``loom_trigger_words``
(comma separated), the phrase after "trigger word(s)" in ``ss_training_comment``, OneTrainer's bundled embedding
placeholders (``ot_config`` ``additional_embeddings``), the most frequent tags of ``ss_tag_frequency`` (counts summed
over dataset folders; ai-toolkit writes its trigger word there), and ``ss_output_name`` only when none of those exist.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .header_values import decode_value, is_present, ranked_tags

TOP_TAGS = 5  # trigger words taken from ss_tag_frequency
_COMMENT_TRIGGER = re.compile(r"trigger(?:\s*words?)?\s*(?:is|are|:|=)\s*(.+)", re.I)


def _split(text: Any) -> list[str]:
    return [p.strip() for p in str(text).split(",")] if is_present(text) else []


def _placeholders(ot_config: Any) -> list[str]:
    """OneTrainer bundles the embeddings it trains next to a LoRA into the file; their placeholders go in the prompt."""
    if not isinstance(ot_config, Mapping):
        return []
    embeddings = ot_config.get("additional_embeddings")
    if not isinstance(embeddings, list):
        return []
    return [
        str(e["placeholder"]).strip() for e in embeddings if isinstance(e, Mapping) and is_present(e.get("placeholder"))
    ]


def trigger_words(metadata: Mapping[str, str], top: int = TOP_TAGS) -> list[str]:
    """Likely trigger words from the header metadata (see the module docstring for the sources and their order)."""
    found = _split(metadata.get("modelspec.trigger_phrase")) + _split(metadata.get("loom_trigger_words"))
    comment = metadata.get("ss_training_comment")
    if is_present(comment):
        m = _COMMENT_TRIGGER.search(str(comment))
        if m:
            found += _split(m.group(1).strip().rstrip("."))
    found += _placeholders(decode_value(metadata.get("ot_config")))
    found += [tag for tag, _ in ranked_tags(decode_value(metadata.get("ss_tag_frequency")))[:top]]
    if not [f for f in found if f] and is_present(metadata.get("ss_output_name")):
        found.append(str(metadata["ss_output_name"]).strip())
    seen: set[str] = set()
    out = []
    for word in found:
        if word and word.lower() not in seen:
            seen.add(word.lower())
            out.append(word)
    return out
