"""Training a LoRA on the MODEL already in the graph: the ComfyUI side of ``lora_math.train.loop``.

The loop (optimizer, LR schedule, scaler, prior mix, resume) is pure torch; this module hands it what only ComfyUI
knows: the layers to train (``targets``), the data (``dataset``), a ``denoise(x, sigma, conds)`` that runs the model's
own ``apply_model``, the model's noise schedule, and ComfyUI's interrupt. The frozen base runs in its own dtype; only
the targeted layers get a differentiable low-rank side path (``LoraFactors.apply``: one ``addmm``, hooked on by
``comfy_bridge.train_hooks``), so nothing rebuilds ``W + ΔW`` and no second copy of the model exists.

ComfyUI runs nodes under ``torch.inference_mode``; tensors made there cannot be saved for backward, so the loop
runs with inference mode off (and ``train_hooks`` re-makes parameters that were created as inference tensors).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import comfy.model_management
import torch

from ...lora_math.names.shared_inputs import shared_inputs
from ...lora_math.train import LoomLoRA, LoraFactors, loop
from ...lora_math.train.loop import Item, Settings
from .. import comfy_bridge
from .dataset import batch_conds, caption_variants, concat_groups, encode_text, prepare
from .targets import TARGETS, TRAIN_GUIDANCE, arch_of, distilled_guidance, family, target_modules

__all__ = [
    "TARGETS", "TRAIN_GUIDANCE", "Item", "Run", "Settings", "arch_of", "batch_conds", "caption_variants",
    "concat_groups", "denoise", "distilled_guidance", "encode_text", "family", "prepare", "target_modules", "train",
]  # fmt: skip


@dataclass
class Run:
    """Everything the loop needs, prepared by the node."""

    model: object  # ModelPatcher
    items: list[Item]
    class_items: list[Item]
    settings: Settings
    arch: str
    prediction: str
    resume: LoomLoRA | None = None
    on_step: Callable[[int, float, object], None] | None = None  # (step, loss, factors) after each step


def denoise(
    base, device: torch.device, x: torch.Tensor, sigma: torch.Tensor, conds: Sequence[dict], compiled=None
) -> torch.Tensor:
    """x̂0 of a noised batch by the model's ``apply_model``, in as few calls as the conditioning allows (the sampler
    concatenates conds only where every entry can; Z-Image's captions of different token counts cannot); on the
    compiled model when the run has one."""
    if compiled is not None:
        with compiled.swapped():
            return denoise(base, device, x, sigma, conds)
    groups = concat_groups(conds)
    if len(groups) == 1:
        return base.apply_model(x, sigma, **batch_conds(conds, device))
    out: list = [None] * len(conds)
    for group in groups:
        part = base.apply_model(x[group], sigma[group], **batch_conds([conds[i] for i in group], device))
        for row, index in enumerate(group):
            out[index] = part[row]
    return torch.stack(out)


def _interrupted(step: int) -> bool:
    try:
        comfy.model_management.throw_exception_if_processing_interrupted()
    except comfy.model_management.InterruptProcessingException:
        return True
    return False


def train(run: Run) -> LoomLoRA:
    """Train the run's LoRA on its model; returns the LoRA so far when interrupted (``interrupted=True``)."""
    s = run.settings
    base = run.model.model
    device = comfy.model_management.get_torch_device()
    modules = target_modules(base, run.arch, s.target)
    shapes = {k: (int(m.weight.shape[0]), int(m.weight.shape[1])) for k, m in modules.items()}
    with torch.inference_mode(False), torch.enable_grad():
        compute = getattr(base, "manual_cast_dtype", None) or base.get_dtype()  # the dtype the layers run in
        groups = shared_inputs(modules)  # q/k/v that read one input share one down-projection
        factors = LoraFactors(shapes, s.rank, s.alpha, device=device, seed=s.seed, compute_dtype=compute, groups=groups)
        side_paths = {module: functools.partial(factors.apply, key) for key, module in modules.items()}
        shapes = len({item.bucket for item in [*run.items, *run.class_items]})
        with (
            comfy_bridge.train_hooks.trainable(base, side_paths, device, s.gradient_checkpointing),
            comfy_bridge.compiled.maybe_compiled(base, s.compile, shapes) as compiled,  # after the hooks: traced in
        ):
            return loop.train(
                factors,
                s,
                run.items,
                functools.partial(denoise, base, device, compiled=compiled),
                base.model_sampling,  # the model's own schedule and shift (FLUX.2 2.02, Z-Image 3, SD3 3 …)
                run.prediction,
                run.arch,
                class_items=run.class_items,
                resume=run.resume,
                dtype=base.get_dtype(),
                callbacks=loop.Callbacks(should_stop=_interrupted, on_step=run.on_step),
            )
