"""The one place LoRA Loom touches ComfyUI's internals: patches, attachments, injections, wrappers, module forwards.

Nodes hand this package parsed LoRAs and strengths (``apply_stack``) or a training run's side paths
(``train_hooks.trainable``); it decides how each weight is patched and undoes it all. Only this package imports
``comfy.model_patcher``, ``comfy.patcher_extension``, ``comfy.weight_adapter`` or ``comfy.lora`` (a unit test keeps
it so); what differs between the ComfyUI versions the pack runs on is named in ``compat``.

    apply.py            stacks -> which path each weight takes, and the match report
    merge_injection.py  static LoRAs merged in place by low-rank deltas (regular patchers)
    weight_patch.py     Loom adapters as ComfyUI weight patches (CLIP, DoRA, dynamic-VRAM models)
    schedule_bypass.py  scheduled LoRAs as a graph-safe bypass, strengths set per model call
    injection.py        the one PatcherInjection a Loom clone carries
    model_info.py       per-model key shapes and cached key matches
    module_hooks.py     the one way a module's call is extended or wrapped, and restored
    train_hooks.py      the trainer's side paths and checkpointing for one run
    compiled.py         torch.compile for a training run (the model swapped in per call, as core's node does)
    compat.py           0.3.75 vs upstream 0.2x+
"""

from . import compat, compiled, injection, merge_injection, model_info, schedule_bypass, train_hooks
from .apply import LoraSpec, PatchReport, apply_stack, match_spec
from .merge_injection import effective_weight, original_weight
from .model_info import model_keys

__all__ = [
    "LoraSpec",
    "PatchReport",
    "apply_stack",
    "compat",
    "compiled",
    "injection",
    "merge_injection",
    "model_info",
    "schedule_bypass",
    "effective_weight",
    "match_spec",
    "model_keys",
    "original_weight",
    "train_hooks",
]
