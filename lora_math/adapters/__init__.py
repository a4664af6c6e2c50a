"""Adapters: one frozen dataclass per algorithm, and the two ways to apply them.

    LoRA (plain, LoCon, Tucker) | LoHa | LoKr | Full     -> .rank, .scale, .delta_weight(shape, device)
    Replace (a tensor that takes the weight's place)     -> .replaced(shape, device); no delta
    merged_weight(weight, adapter, strength)              -> patched weight (DoRA included), weight.dtype
    bypass_forward(adapter, x, base_out, strength, *, kind, conv_args=None, weight=None) -> patched output
    bypass_delta(...same arguments)                     -> strength * Δ(x), the output's update alone

Each algorithm module holds its pure ``diff_weight`` (unscaled ΔW in fp32); ``apply`` holds merge and bypass.
"""

from .apply import Adapter, bypass_delta, bypass_forward, merged_bias, merged_weight
from .dora import dora_axis, weight_decompose
from .full import Full
from .loha import LoHa
from .lokr import LoKr
from .lora import LoRA
from .replace import Replace

__all__ = [
    "Adapter",
    "Full",
    "LoHa",
    "LoKr",
    "LoRA",
    "Replace",
    "bypass_delta",
    "bypass_forward",
    "dora_axis",
    "merged_bias",
    "merged_weight",
    "weight_decompose",
]
