"""File-side module names: the role prefix a writer puts in front (``lora_unet_``, ``lora_te2_``, ``text_encoder.``,
PEFT's ``base_model.model.`` wrapper) and the other spellings a path may have. Read by key matching (``keymap``) and
family detection (``families``) alike."""

from __future__ import annotations

import re
from collections.abc import Iterator

__all__ = ["ROLE_PREFIXES", "path_spellings", "split_role"]

# File-side prefixes -> role. Tried in order; "base_model.model." (PEFT's wrapper) is stripped around them.
ROLE_PREFIXES = (
    ("lora_unet_", "unet"),  # kohya; Wan-Fun's "lora_unet__" leaves a leading "_" that is stripped later
    ("lora_transformer_", "unet"),  # OneTrainer
    ("lycoris_", "unet"),  # SimpleTuner LyCORIS
    ("lora_te1_", "te1"),
    ("lora_te2_", "te2"),
    ("lora_te3_", "te3"),
    ("lora_te_", "te"),
    ("text_encoder_2.", "te2"),
    ("text_encoder_3.", "te3"),
    ("text_encoder.", "te"),
    ("unet.", "unet"),
    ("transformer.", "unet"),
    ("model.diffusion_model.", "unet"),
    ("diffusion_model.", "unet"),
)
_PEFT_WRAPPER = "base_model.model."
_OLD_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora$")


def split_role(name: str) -> tuple[str | None, str]:
    """File module name -> (role, path): ``lora_te2_text_model…`` -> ("te2", "text_model…"). Role None: unprefixed."""
    rest = name.removeprefix(_PEFT_WRAPPER)
    for prefix, role in ROLE_PREFIXES:
        if rest.startswith(prefix):
            return role, rest[len(prefix) :].removeprefix(_PEFT_WRAPPER)
    return None, rest


def path_spellings(path: str) -> Iterator[str]:
    """Candidate spellings of a file-side path, most literal first.

    SimpleTuner's trailing and Wan-Fun's leading underscores are dropped; diffusers attention-processor names
    (``attn1.processor.to_out_lora``) become module names (``attn1.to_out.0``), and so do the ``…_to_k_lora`` names
    diffusers' kohya conversion (``convert_state_dict_to_kohya``) gives its own ``lora.down`` UNet keys.
    """
    yield path
    stripped = path.strip("_")
    if stripped != path:
        yield stripped
    m = _OLD_PROCESSOR.search(path)
    if m:
        name = m.group(1)
        yield path[: m.start()] + "." + name + (".0" if name == "to_out" else "")
    elif path.endswith("_lora"):  # diffusers' kohya conversion of its own ``lora.down`` files: ``…_to_k_lora.down``
        yield path[: -len("_lora")]
