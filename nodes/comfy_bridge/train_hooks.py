"""The trainer's changes to the MODEL in the graph, for one run: frozen base, differentiable low-rank side paths on
the target layers, optional gradient checkpointing; all of it taken back out when the run ends, however it ends.

Nothing rebuilds ``W + ΔW`` and no second copy of the model exists: the side paths are output hooks
(``module_hooks``), so the base weights are only read, never written, which is also what upstream's dynamic-VRAM
models need.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import torch

from . import compat
from .module_hooks import ModuleHooks

# Transformer blocks that gradient checkpointing wraps: SD UNets, FLUX.1/.2 and Chroma, SD3, Z-Image (Lumina NextDiT)
_BLOCK_NAMES = {
    "BasicTransformerBlock",
    "DoubleStreamBlock",
    "SingleStreamBlock",
    "JointBlock",
    "JointTransformerBlock",
}
# Blocks that add to their input tensors in place (ComfyUI's FLUX blocks: ``img += …``, ``txt += …``, ``x += …``),
# and the norms that read those tensors first: autograd saves a LayerNorm's input for backward, so the in-place add
# would corrupt it ("modified by an inplace operation"). Each of these norms gets a copy of its input instead.
_INPLACE_NORMS = {
    "DoubleStreamBlock": ("img_norm1", "img_norm2", "txt_norm1", "txt_norm2"),
    "SingleStreamBlock": ("pre_norm",),
}


def _on_copies(inner, *args, **kwargs):
    """Run a block on copies of its tensor inputs: the checkpoint keeps the originals for recomputation intact."""

    def copy(v):
        return v.clone() if isinstance(v, torch.Tensor) else v

    return inner(*[copy(a) for a in args], **{k: copy(v) for k, v in kwargs.items()})


def _checkpointed(inner: Callable, copies: bool) -> Callable:
    if copies:
        inner = functools.partial(_on_copies, inner)

    def forward(*args, **kwargs):
        return torch.utils.checkpoint.checkpoint(inner, *args, use_reentrant=False, **kwargs)

    return forward


def _normal_tensors(module: torch.nn.Module, device: torch.device) -> None:
    """Parameters/buffers made under inference mode cannot be saved for backward: re-make those on the compute device
    (same values). Weights kept elsewhere (offloaded, or upstream's dynamic host copies) reach the ops as fresh casts
    made during the run, so they are left as they are."""
    for sub in module.modules():
        for name, p in list(sub.named_parameters(recurse=False)):
            if p.is_inference() and p.device == device:
                sub._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=False)
        for name, b in list(sub.named_buffers(recurse=False)):
            if b is not None and b.is_inference() and b.device == device:
                sub._buffers[name] = b.clone()


@contextlib.contextmanager
def trainable(
    base_model,
    side_paths: dict[torch.nn.Module, Callable],
    device: torch.device,
    checkpointing: bool = False,
) -> Iterator[None]:
    """For the ``with`` block: the base frozen, each module's output ``out`` replaced by ``side_paths[module](x, out)``
    (the output with the LoRA's update added), FLUX's
    in-place norms fed copies, transformer blocks checkpointed if asked, ComfyUI in training mode.

    base_model: ComfyUI's BaseModel (``patcher.model``); side paths get the module's input and output.
    """
    diffusion_model = base_model.diffusion_model
    requires = {n: p.requires_grad for n, p in base_model.named_parameters()}
    hooks = ModuleHooks()
    try:
        with compat.training():
            base_model.requires_grad_(False)
            _normal_tensors(diffusion_model, device)
            for module, side in side_paths.items():
                hooks.on_output(module, lambda m, x, out, _side=side: _side(x, out))
            for block in diffusion_model.modules():
                for name in _INPLACE_NORMS.get(type(block).__name__, ()):
                    norm = getattr(block, name, None)
                    if norm is not None:
                        hooks.on_input(norm, torch.Tensor.clone)
            if checkpointing:
                for block in diffusion_model.modules():
                    kind = type(block).__name__
                    if kind in _BLOCK_NAMES:
                        hooks.around(block, functools.partial(_checkpointed, copies=kind in _INPLACE_NORMS))
            yield
    finally:
        hooks.remove()
        for n, p in base_model.named_parameters():
            p.requires_grad_(requires.get(n, False))
