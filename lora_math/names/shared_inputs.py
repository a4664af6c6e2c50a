"""Which layers of a model read one input, by their ComfyUI weight keys: the layers a LoRA's side paths can give one
shared down-projection (the trainer does; a bypass could)."""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["shared_inputs"]

# Layers of one attention that read the same input, by their names' endings: self-attention's q/k/v (UNet attn1,
# Qwen-Image's image stream), cross-attention's k/v (UNet attn2: the text), Qwen-Image's text stream. FLUX, SD3 and
# Z-Image fuse q/k/v into one layer already.
_SHARED_INPUT = re.compile(
    r"^(?P<parent>.*\.(?:attn1|attn))\.to_[qkv]\.weight$"
    r"|^(?P<cross>.*\.attn2)\.to_[kv]\.weight$"
    r"|^(?P<text>.*\.attn)\.add_[qkv]_proj\.weight$"
)


def shared_inputs(keys: Iterable[str]) -> list[list[str]]:
    """Groups of target keys whose layers read one input (they can share one down-projection)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for key in keys:
        m = _SHARED_INPUT.match(key)
        if m:
            kind = next(k for k, v in m.groupdict().items() if v is not None)
            groups.setdefault((kind, m.group(kind)), []).append(key)
    return [g for g in groups.values() if len(g) > 1]
