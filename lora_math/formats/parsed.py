"""The result of parsing a LoRA file: its format, one adapter per module, and the header metadata."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..adapters import Adapter

__all__ = ["ParsedLoRA"]


@dataclass(frozen=True)
class ParsedLoRA:
    """A parsed LoRA file.

    format: the family and algorithm, e.g. ``"kohya"``, ``"lycoris-lokr"``, ``"diffusers-peft"``,
        ``"flux-diffusers"``; ``"+dora"`` is appended when any module carries a DoRA magnitude.
    modules: file-side module name (the key as stored, minus the part suffix such as ``.lora_down.weight``) ->
        adapter. A bias difference stored beside a low-rank pair (BFL control LoRAs' ``lora_B.bias``) is its own
        entry ``"<module>.bias"`` holding ``Full(diff_b=…)``; its norm scales are ``Replace`` entries
        (``"double_blocks.0.img_attn.norm.query_norm"``).
    metadata: the safetensors header metadata (``ss_*``, ``modelspec.*``, ``lora_adapter_metadata`` …).
    ignored: keys of the file that belong to no adapter (embeddings, orphan alphas), sorted.
    widened: module -> the weight shape its delta needs, which may be wider than the model's weight: that is
        zero-padded to it first (BFL control LoRAs' ``img_in``, 64 -> 128 input features; ``formats.control``).
    """

    format: str
    modules: Mapping[str, Adapter]
    metadata: Mapping[str, str]
    ignored: tuple[str, ...] = field(default=())
    widened: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
