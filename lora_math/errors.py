"""Errors raised by ``lora_math``.

All three subclass :class:`ValueError`, so a caller that only wants "this LoRA is unusable" can catch ``ValueError``;
nodes catch the specific class to tell the user which input to fix. Messages name the culprit (file, key, shape found,
shape expected) and say what to do about it.
"""

from __future__ import annotations

__all__ = ["LoraFileError", "LoraFormatError", "LoraShapeError"]


class LoraFileError(ValueError):
    """The file itself is unusable: wrong container (pickle), truncated or corrupt, or holds NaN/Inf tensors."""


class LoraShapeError(ValueError):
    """Adapter tensors disagree with each other or with the weight they patch (names expected vs found shape)."""


class LoraFormatError(ValueError):
    """The keys of a state dict match no supported LoRA format, or a known-but-refused one (e.g. cloneofsimo)."""
