"""LoRA Loom math: pure torch + stdlib + safetensors, importable without ComfyUI.

Never import ``comfy``, ``folder_paths``, ``nodes`` or ``server`` anywhere under this package.
"""

from .adapters import Adapter, Full, LoHa, LoKr, LoRA, Replace, bypass_forward, merged_weight
from .errors import LoraFileError, LoraFormatError, LoraShapeError

__all__ = [
    "Adapter",
    "Full",
    "LoHa",
    "LoKr",
    "LoRA",
    "LoraFileError",
    "LoraFormatError",
    "LoraShapeError",
    "Replace",
    "bypass_forward",
    "merged_weight",
]
