"""ComfyUI core's side of bench/launches.py: its trainer's step and its scheduled (hooked) LoRAs, counted on ``meta``.

Both are driven through core's own objects, as its nodes build them, so the counts are what core dispatches:
- ``core_train_step``: ``TrainLoraNode``'s layers (``comfy_extras/nodes_train.py``): a ``LoRAAdapter.create_train``
  weight wrapper on every weight of ≥ 2 dims and a ``BiasDiff`` on every 1-D weight and bias, installed on the
  modules' ``weight_function`` / ``bias_function`` lists as ``ModelPatcher.load`` installs them; forward and backward
  to its parameters. Its LoRA dtype is the model's (core's default on a GPU is bf16 with a bf16 model; a mismatch
  would only add casts), and ``torch.autocast`` is left out (it does not run on ``meta``; the model is already in its
  compute dtype).
- ``core_hook_call_N``: core's scheduled LoRAs are ``WeightHook``s with keyframes; on each step whose keyframe changes
  the strength, ``prepare_hook_patches_current_keyframe`` drops the cached weights and ``patch_hooks`` re-computes
  every hooked weight (``calculate_weight`` in fp32, rounded back), then the model runs: that re-patch plus one base
  call is a scheduled step.
"""

from __future__ import annotations


def _counter():
    from launches import count

    return count


def core_train_step(patcher, x, t, kw, rank: int, only=None) -> tuple[int, int]:
    """(launches, LoRA layers) of one core training step; ``only`` (modules) restricts core's layers to those."""
    import torch
    from comfy.weight_adapter.lora import LoRAAdapter
    from comfy_extras.nodes_train import BiasDiff

    dm = patcher.model.diffusion_model
    patcher.model.requires_grad_(False)
    dtype = patcher.model.get_dtype()
    params, touched, layers = [], [], 0
    for module in patcher.model.modules():
        if not hasattr(module, "weight_function") or (only is not None and not any(module is m for m in only)):
            continue
        module.weight_function, module.bias_function = [], []  # instance lists: comfy.ops' defaults are the class's
        touched.append(module)
        if module.weight is not None:
            if module.weight.ndim >= 2:
                with torch.device(module.weight.device):  # its Linear layers, built where the weight is
                    adapter = LoRAAdapter.create_train(module.weight, rank=rank, alpha=1.0).to(dtype)
                layers += 1
            else:
                adapter = BiasDiff(torch.nn.Parameter(torch.zeros_like(module.weight, requires_grad=True)))
            module.weight_function.append(adapter)
            params += [p for p in adapter.parameters() if p.requires_grad]
        if getattr(module, "bias", None) is not None:
            diff = BiasDiff(torch.nn.Parameter(torch.zeros_like(module.bias, requires_grad=True)))
            module.bias_function.append(diff)
            params += list(diff.parameters())
    try:
        with torch.no_grad():
            grad_out = torch.empty_like(dm(x, t, **kw))
        return _counter()(lambda: torch.autograd.grad(dm(x, t, **kw), params, grad_out), grad=True), layers
    finally:
        for module in touched:
            del module.weight_function, module.bias_function  # back to the class's empty lists


def core_hook_call(patcher, adapters: dict, x, t, kw) -> int:
    """One scheduled step with core's hooks: the re-patch a keyframe change costs plus the model call.

    ``adapters``: ``{weight key: [LoRAAdapter per LoRA]}``; each LoRA is one ``WeightHook``."""
    import comfy.hooks
    import torch

    hooked = patcher.clone()
    hooked.hook_mode = comfy.hooks.EnumHookMode.MinVram  # no cache to fill; a changed keyframe drops it anyway
    group = comfy.hooks.HookGroup()
    n = len(next(iter(adapters.values())))
    for i in range(n):
        hook = comfy.hooks.WeightHook(strength_model=0.5 + 0.1 * i)
        hook.need_weight_init = False
        hooked.add_hook_patches(hook=hook, patches={k: v[i] for k, v in adapters.items()}, strength_patch=0.6)
        group.add(hook)
    dm = hooked.model.diffusion_model
    count = _counter()
    try:
        hooked.patch_hooks(group)  # the first step (a warm-up: backups taken)
        hooked.cached_hook_patches.clear()
        with torch.no_grad():
            return count(lambda: hooked.patch_hooks(group)) + count(lambda: dm(x, t, **kw))
    finally:
        hooked.unpatch_hooks()
