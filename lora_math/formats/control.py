"""BFL's FLUX.1 control LoRAs (FLUX.1 Depth / Canny [dev] LoRA): what makes a file one, and its two extra parts.

As BFL writes them: no prefix; PEFT ``lora_A``/``lora_B`` pairs, each with a ``lora_B.bias`` (a bias difference);
the q/k RMSNorm scales of every block as whole tensors (``…attn.norm.query_norm.scale``, ``…norm.key_norm.scale``)
that replace the model's; and an ``img_in`` pair whose ``lora_A`` takes twice FLUX.1's 64 input features (16 latent
channels × 2×2 patches): the noisy latent plus the control image's latent, which ComfyUI concatenates to it
(``model_base.Flux.concat_cond`` widens its conditioning as soon as ``img_in`` is wider).

A file is a control LoRA exactly when core converts it as one (``comfy/lora_convert.py``: it has
``img_in.lora_A.weight`` and ``single_blocks.0.norm.key_norm.scale``), so one file behaves alike in both.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from torch import Tensor

from ..adapters import Adapter, LoRA, Replace
from ..errors import LoraShapeError

__all__ = ["IMG_IN", "is_control", "norm_replacements", "widened_shapes"]

IMG_IN = "img_in"
_MARKERS = ("img_in.lora_A.weight", "single_blocks.0.norm.key_norm.scale")
_NORM_SCALE = re.compile(r"^(?P<module>.+_norm)\.scale$")


def is_control(keys: Iterable[str]) -> bool:
    present = set(keys)
    return all(k in present for k in _MARKERS)


def norm_replacements(state_dict: Mapping[str, Tensor], unknown: list[str]) -> tuple[dict[str, Replace], list[str]]:
    """The ``…_norm.scale`` keys among the keys no adapter took, as ``{module: Replace}``; and the keys left."""
    out: dict[str, Replace] = {}
    rest: list[str] = []
    for key in unknown:
        m = _NORM_SCALE.match(key)
        if m is None:
            rest.append(key)
            continue
        try:
            out[m.group("module")] = Replace(state_dict[key])
        except LoraShapeError as exc:
            raise LoraShapeError(f"{key}: {exc}") from exc
    return out, rest


def widened_shapes(adapters: Mapping[str, Adapter]) -> dict[str, tuple[int, int]]:
    """``{"img_in": (out, in)}``: the weight shape the ``img_in`` pair needs, as core's ``reshape_weight``
    (``[lora_B rows, lora_A columns]``); the model's narrower ``img_in`` is zero-padded to it first."""
    adapter = adapters.get(IMG_IN)
    if not isinstance(adapter, LoRA):
        return {}
    return {IMG_IN: (adapter.out_features, adapter.fan_in)}
