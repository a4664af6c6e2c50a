"""The key grammar of LoRA files: ``<module><sep><part suffix>``, grouped into modules.

Every family stores one tensor per (module, part). The suffix says which algorithm the part belongs to:

====================================  ==========  =====================================================
suffix                                algorithm   written by
====================================  ==========  =====================================================
``.lora_down/up/mid.weight``          lora        kohya / sd-scripts, LyCORIS LoCon (``mid`` = Tucker)
``.lora_A/B.weight`` (``.default``)   lora        PEFT, diffusers ≥ 0.25, ai-toolkit, SimpleTuner
``.lora_A`` / ``.lora_B``             lora        bare PEFT tensors (Mochi-style)
``.lora.down/up.weight``              lora        diffusers 0.21–0.24
``.lora_linear_layer.down/up.weight`` lora        diffusers text encoders (2023)
``…_lora.down/up.weight``             lora        diffusers attention processors (2023), xlabs FLUX
``.lora_B.bias``                      bias        BFL FLUX control LoRAs (a bias difference)
``.hada_w{1,2}_{a,b}``, ``.hada_t*``  loha        LyCORIS LoHa
``.lokr_w{1,2}[_a|_b]``, ``.lokr_t2`` lokr        LyCORIS LoKr
``.diff`` / ``.diff_b``               full        LyCORIS full, kohya "diff" modules
``.alpha``, ``.dora_scale``           shared      kohya / LyCORIS
``.lora_magnitude_vector[…]``         shared      PEFT DoRA (stored as ``dora_scale``)
====================================  ==========  =====================================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["ModuleParts", "SUFFIX_PARTS", "group_keys"]

# suffix -> (algorithm, part). The part names are the adapter dataclasses' field names.
SUFFIX_PARTS: dict[str, tuple[str, str]] = {
    "lora_down.weight": ("lora", "down"),
    "lora_up.weight": ("lora", "up"),
    "lora_mid.weight": ("lora", "mid"),
    "lora_A.weight": ("lora", "down"),
    "lora_B.weight": ("lora", "up"),
    "lora_A.default.weight": ("lora", "down"),
    "lora_B.default.weight": ("lora", "up"),
    "lora_A": ("lora", "down"),
    "lora_B": ("lora", "up"),
    "lora.down.weight": ("lora", "down"),
    "lora.up.weight": ("lora", "up"),
    "lora_linear_layer.down.weight": ("lora", "down"),
    "lora_linear_layer.up.weight": ("lora", "up"),
    "lora_B.bias": ("bias", "diff_b"),
    "hada_w1_a": ("loha", "w1a"),
    "hada_w1_b": ("loha", "w1b"),
    "hada_w2_a": ("loha", "w2a"),
    "hada_w2_b": ("loha", "w2b"),
    "hada_t1": ("loha", "t1"),
    "hada_t2": ("loha", "t2"),
    "lokr_w1": ("lokr", "w1"),
    "lokr_w1_a": ("lokr", "w1a"),
    "lokr_w1_b": ("lokr", "w1b"),
    "lokr_w2": ("lokr", "w2"),
    "lokr_w2_a": ("lokr", "w2a"),
    "lokr_w2_b": ("lokr", "w2b"),
    "lokr_t2": ("lokr", "t2"),
    "diff": ("full", "diff"),
    "diff_b": ("full", "diff_b"),
    "alpha": ("shared", "alpha"),
    "dora_scale": ("shared", "dora_scale"),
    "lora_magnitude_vector": ("shared", "dora_scale"),
    "lora_magnitude_vector.weight": ("shared", "dora_scale"),
    "lora_magnitude_vector.default": ("shared", "dora_scale"),
    "lora_magnitude_vector.default.weight": ("shared", "dora_scale"),
}

# The shortest module wins, so at each split point the longest suffix that ends the key is taken.
_SUFFIX = re.compile(
    r"^(?P<module>.+?)\.(?P<suffix>"
    + "|".join(re.escape(s) for s in sorted(SUFFIX_PARTS, key=len, reverse=True))
    + r")$"
)
# diffusers attention processors (``to_q_lora.down.weight``) and xlabs (``qkv_lora1.down.weight``): the ``_lora``
# belongs to the module name, the part is a bare ``down``/``up``.
_PROCESSOR = re.compile(r"^(?P<module>.+_lora\d?)\.(?P<part>down|up)\.weight$")


@dataclass
class ModuleParts:
    """The tensors of one module, by algorithm and part, with the original keys (for messages)."""

    parts: dict[str, dict[str, Tensor]] = field(default_factory=dict)  # algorithm -> part -> tensor
    keys: dict[tuple[str, str], str] = field(default_factory=dict)  # (algorithm, part) -> file key
    suffixes: set[str] = field(default_factory=set)

    def add(self, algorithm: str, part: str, key: str, suffix: str, tensor: Tensor) -> None:
        self.parts.setdefault(algorithm, {})[part] = tensor
        self.keys[(algorithm, part)] = key
        self.suffixes.add(suffix)


def split_key(key: str) -> tuple[str, str, str, str] | None:
    """``key`` -> (module, suffix, algorithm, part), or None when the key is no adapter part."""
    m = _SUFFIX.match(key)
    if m:
        algorithm, part = SUFFIX_PARTS[m.group("suffix")]
        return m.group("module"), m.group("suffix"), algorithm, part
    m = _PROCESSOR.match(key)
    if m:
        return m.group("module"), f"{m.group('part')}.weight", "lora", m.group("part")
    return None


def group_keys(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, ModuleParts], list[str]]:
    """Group a state dict's keys by module. Returns ({module: parts}, keys that are no adapter part)."""
    modules: dict[str, ModuleParts] = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        split = split_key(key)
        if split is None:
            unknown.append(key)
            continue
        module, suffix, algorithm, part = split
        modules.setdefault(module, ModuleParts()).add(algorithm, part, key, suffix, tensor)
    return modules, unknown
