"""What differs between the ComfyUI versions LoRA Loom runs on (0.3.75 and upstream 0.2x+), named in one place.

Everything here is feature-detected on the running ComfyUI, never read from a version number.
"""

from __future__ import annotations

import contextlib

import comfy.lora
import comfy.model_management

# The attachment upstream's ``load_lora_for_models`` sets on the patchers it returns (the LoRA file's header
# metadata); some core nodes read it (IC-LoRA-style ``comfy_extras/nodes_lt.py``). 0.3.75 sets none and reads none.
LORA_METADATA = "lora_metadata"


def is_dynamic(patcher) -> bool:
    """Upstream's dynamic-VRAM patcher (``ModelPatcherDynamic``, the default on NVIDIA since 0.2x): ComfyUI casts and
    patches each weight as it is used, so nothing may write the weights in place. 0.3.75 has none."""
    return bool(getattr(patcher, "is_dynamic", lambda: False)())


def prefetches_patches() -> bool:
    """Upstream 0.2x+ copies patch objects into its prefetch buffers, rebuilding each weight adapter as
    ``type(p)(p.loaded_keys, weights)`` (``comfy.lora.prefetch_prepared_value``); 0.3.75 uses them as they are."""
    return hasattr(comfy.lora, "prefetch_prepared_value")


@contextlib.contextmanager
def training():
    """``comfy.model_management.in_training`` on for the run: upstream turns inference-only fast kernels off while it
    is set (0.3.75 ignores it). Restored after, whatever happens."""
    was = getattr(comfy.model_management, "in_training", False)
    comfy.model_management.in_training = True
    try:
        yield
    finally:
        comfy.model_management.in_training = was


def set_lora_metadata(patcher, metadata) -> None:
    """Attach a LoRA file's header metadata the way core's loaders do (the last LoRA applied wins, as when core
    loaders are chained)."""
    if metadata:
        patcher.set_attachments(LORA_METADATA, dict(metadata))
