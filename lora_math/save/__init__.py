"""Saving every kind of result (trained, merged, resized, extracted, converted LoRAs) as a file every tool loads.

One result type (``result.LoomLoRA``), its provenance (``provenance``), its tensors under kohya names
(``state_dict``, names from ``names.kohya``), its header (``metadata``), a trained LoRA's resume file (``resume``),
and the one atomic writer (``write``). The names below are the API the nodes use.
"""

from ..names.kohya import CLIP_LAYER, TEXT_ENCODER_PREFIXES, UNET_PREFIX, kohya_names
from .metadata import describe, metadata, tag_frequency
from .result import LoomLoRA
from .resume import STATE_SUFFIX, ResumeState, load_resume_state, load_trained, state_path
from .state_dict import layer_key, named_keys, to_state_dict
from .write import save

__all__ = [
    "CLIP_LAYER", "STATE_SUFFIX", "TEXT_ENCODER_PREFIXES", "UNET_PREFIX", "LoomLoRA", "ResumeState", "describe",
    "kohya_names", "layer_key", "load_resume_state", "load_trained", "metadata", "named_keys", "save", "state_path",
    "tag_frequency", "to_state_dict",
]  # fmt: skip
