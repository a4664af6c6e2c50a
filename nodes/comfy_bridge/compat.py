"""What differs between the ComfyUI versions LoRA Loom runs on (0.3.75 and upstream 0.2x+), named in one place.

Everything here is feature-detected on the running ComfyUI, never read from a version number.
"""

from __future__ import annotations

import contextlib

import comfy.lora
import comfy.model_management
from comfy.weight_adapter.lora import LoRAAdapter

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
    """Attach a LoRA file's header metadata the way core's loaders do: the whole ``__metadata__`` dict as the file
    holds it (what ``comfy.utils.load_torch_file(..., return_metadata=True)`` returns), nothing when the file has none
    (an earlier LoRA's then stays), the last LoRA applied winning, as when core loaders are chained."""
    if metadata:
        patcher.set_attachments(LORA_METADATA, dict(metadata))


def patched_shape(patches, key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape weight ``key`` of ``shape`` has once ``patches`` (its ModelPatcher patch list) are applied: a FLUX
    control LoRA's patch widens ``img_in``. Upstream's patch objects say so themselves (``calculate_shape``, which
    its dynamic loader asks); 0.3.75 has no such call, and there only core's own control-LoRA patch (a
    ``LoRAAdapter`` with a ``reshape``), a padding ``diff`` and Loom's widening patch change a shape."""
    current = tuple(shape)
    for patch in patches:
        value, offset = patch[1], patch[3]
        if offset is not None or isinstance(value, list):
            continue  # a row slice keeps the shape; a list is a nested diff without shape metadata
        found = None
        if hasattr(value, "calculate_shape"):
            found = value.calculate_shape(key)
        elif isinstance(value, LoRAAdapter):
            found = value.weights[5]
        elif isinstance(value, tuple) and len(value) == 2 and value[0] == "diff" and len(value[1]) > 1:
            found = value[1][0].shape if value[1][1].get("pad_weight") else None
        if found is not None:
            current = tuple(int(d) for d in found)
    return current
