"""Kernel-launching ops per step, counted on full-size architectures on the ``meta`` device (no weights allocated).

On a GPU, what separates LoRA work from the bare model is mostly the number of small kernels launched (each costs
the host ~10–25 µs; see shared/docs/anchors.md), and launch counts need no GPU: every op is dispatched on ``meta``
(nothing computed) through a ``TorchDispatchMode`` that counts it.

Counting convention: every dispatched aten op counts once, except views and metadata-only ops (``is_view`` ops,
``_unsafe_view``, ``detach``, ``alias``, allocations with no kernel: ``empty*``, ``lift_fresh``). Attention is one
op (``scaled_dot_product_attention`` is counted as the single fused kernel a GPU runs; on ``meta`` it would
decompose into its math). ComfyUI runs with its PyTorch attention (``--use-pytorch-cross-attention``), as on a GPU.

Cases (SDXL UNet full size, fp16, 1024², batch 2 = cond + uncond in one call, LoRAs of rank 32 on the 560 attention
projections):
  base_forward              one model call, no LoRA
  merge_strength_change_N   0.3.75 fast path: re-apply N LoRAs at new strengths (Loom's in-place delta merge; eager
                            here, one CUDA-graph replay on a GPU)
  dynamic_repatch_N         upstream dynamic VRAM: after a strength change every patched weight is re-patched as it
                            loads (``LowVramPatch`` → ``calculate_weight`` per weight, in the compute dtype), with
                            Loom's patch objects, not counting the cast of the weight itself (ComfyUI does that for
                            every weight); ``core_dynamic_repatch_N`` the same with core's LoRA adapters. Weights
                            that are not resident (low VRAM) pay this at every model call.
  bypass_call_N             one model call with N LoRAs as a low-rank bypass (what static LoRAs would cost per call
                            on a dynamic model if they took the bypass; what scheduled LoRAs cost everywhere)
  bypass_over_base_N        bypass_call_N / base_forward
  static_call_N             one model call with N static LoRAs merged (0.3.75, upstream's regular patchers)
  core_hook_call_N          core's scheduled LoRAs (hooks with keyframes): the re-patch of every hooked weight a
                            keyframe change costs, plus the model call (bench/_launch_core.py)
  sched3_call, sched3_over_base   bypass_call_3 and bypass_over_base_3 under the issue's names
  train_floor               one training step's forward and backward to the input, no LoRA (the floor)
  loom_train_step           Loom's training step (forward + backward to its rank-16 factors on the attention preset)
  loom_train_over_floor     loom_train_step / train_floor
  core_train_step           core TrainLoraNode's step at the same rank, its layers as it builds them (every weight);
                            core_train_step_attention: core's adapters on Loom's layers only
  flux_*                    the same three on the full-size FLUX.1-dev DiT (bf16, 1024², batch 1; its fused qkv
                            and single-block linear1 are one layer each: no input shared between target layers)
Run: ``python bench/launches.py [--json]`` (a minute or two on a CPU).
"""

from __future__ import annotations

import contextlib
import sys
import time

from _common import FLUX_FULL, REPO, SDXL_FULL, bridge, emit
from _launch_core import core_hook_call, core_train_step

sys.path.insert(0, str(REPO / "scripts"))

RANK = 32
SIDE = 1024


def _setup():
    from comfy_env import comfyui_dir, comfyui_version, load_pack

    path = comfyui_dir()
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    comfy.cli_args.args.use_pytorch_cross_attention = True  # one SDPA kernel per attention, as on a GPU
    import comfy.model_management  # noqa: F401

    return load_pack(), comfyui_version(path)


class OpCounter:
    """Counts kernel-launching ops dispatched while active (see the module docstring for what counts)."""

    def __init__(self) -> None:
        import torch
        from torch.overrides import TorchFunctionMode
        from torch.utils._python_dispatch import TorchDispatchMode

        aten = torch.ops.aten
        skip = {
            aten._unsafe_view.default,
            aten.detach.default,
            aten.alias.default,
            aten.lift_fresh.default,
            aten.empty.memory_format,
            aten.empty_strided.default,
            aten.empty_like.default,
        }
        counter = self
        self.count = 0
        self.paused = 0
        self.by_op: dict[str, int] = {}

        class _Dispatch(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if not counter.paused and not func.is_view and func not in skip:
                    counter.count += 1
                    counter.by_op[str(func)] = counter.by_op.get(str(func), 0) + 1
                return out

        class _Function(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if func is torch.nn.functional.scaled_dot_product_attention and not counter.paused:
                    counter.paused += 1
                    try:
                        out = func(*args, **(kwargs or {}))
                    finally:
                        counter.paused -= 1
                    counter.count += 1
                    counter.by_op["sdpa (one fused kernel)"] = counter.by_op.get("sdpa (one fused kernel)", 0) + 1
                    return out
                return func(*args, **(kwargs or {}))

        self._modes = (_Function(), _Dispatch())

    @contextlib.contextmanager
    def active(self):
        with self._modes[0], self._modes[1]:
            yield self


def count(fn, grad: bool = False) -> int:
    """Ops ``fn`` dispatches; under no_grad unless ``grad`` (a training step: forward and backward counted)."""
    import torch

    counter = OpCounter()
    with torch.set_grad_enabled(grad), counter.active():
        fn()
    return counter.count


TRAIN_RANK = 16  # the trainer's default rank, as in the table and bench/train.py


def train_counts(pack, patcher, x, t, kw) -> dict:
    """One training step, forward + backward, on the full-size model (the optimizer's foreach step is not counted).

    train_floor: the base forward and its backward to the input (what any trainer pays before its LoRA; with the
    trainer's hooks minus the side paths, which only FLUX's norm-input copies make a difference to);
    loom_train_step: Loom's trainer as it runs (``nodes.train.engine``): the attention preset, rank 16 fp32 factors
    attached by ``comfy_bridge.train_hooks.trainable``, backward to the factors.
    """
    import functools

    import torch
    from lora_loom.lora_math.train import LoraFactors

    engine = pack.nodes.train.engine
    base = patcher.model
    dm = base.diffusion_model
    meta = torch.device("meta")
    base.requires_grad_(False)
    out = {}
    with torch.no_grad():
        grad_out = torch.empty_like(dm(x, t, **kw))
    x_in = x.detach().clone().requires_grad_(True)
    # Under the trainer's hooks with no side path: what a model needs to train at all (FLUX's in-place residual
    # adds after a norm that saved its input need that norm fed a copy, in 0.3.75; see bench/train.py).
    with pack.nodes.comfy_bridge.train_hooks.trainable(base, {}, meta):
        out["train_floor"] = count(lambda: torch.autograd.grad(dm(x_in, t, **kw), x_in, grad_out), grad=True)

    arch = engine.arch_of(base)
    modules = engine.target_modules(base, arch, "attention")
    shapes = {k: (int(m.weight.shape[0]), int(m.weight.shape[1])) for k, m in modules.items()}
    groups = pack.lora_math.names.shared_inputs.shared_inputs(modules)
    factors = LoraFactors(
        shapes, TRAIN_RANK, float(TRAIN_RANK), device=meta, compute_dtype=base.get_dtype(), groups=groups
    )
    sides = {m: functools.partial(factors.apply, k) for k, m in modules.items()}
    params = factors.leaves()
    with pack.nodes.comfy_bridge.train_hooks.trainable(base, sides, meta):
        out["loom_train_step"] = count(lambda: torch.autograd.grad(dm(x, t, **kw), params, grad_out), grad=True)
    out["train_targets"] = len(modules)
    out["loom_train_over_floor"] = round(out["loom_train_step"] / out["train_floor"], 3)
    # core under the floor's hooks too (FLUX's norm copies; core's own checkpointing wrapper would avoid them)
    with pack.nodes.comfy_bridge.train_hooks.trainable(base, {}, meta):
        out["core_train_step"], out["core_train_layers"] = core_train_step(patcher, x, t, kw, TRAIN_RANK)
        # core's adapters on Loom's layers only: the cost of materialising W + BA each forward, like for like
        out["core_train_step_attention"] = core_train_step(patcher, x, t, kw, TRAIN_RANK, modules.values())[0]
    out["core_train_over_floor"] = round(out["core_train_step"] / out["train_floor"], 3)
    out["core_attention_over_floor"] = round(out["core_train_step_attention"] / out["train_floor"], 3)
    return out


def _on_meta(unet_config: dict, dtype):
    """A ModelPatcher around the ComfyUI BaseModel ``unet_config`` detects, built on ``meta``, as its loaders build it."""
    import comfy.model_detection
    import comfy.model_patcher
    import torch

    config = comfy.model_detection.model_config_from_unet_config(unet_config)
    config.set_inference_dtype(dtype, None)
    with torch.device("meta"):
        base = config.get_model({}, device="meta")
    meta = torch.device("meta")
    return comfy.model_patcher.ModelPatcher(base, load_device=meta, offload_device=meta)


def sdxl_on_meta():
    """ComfyUI's SDXL BaseModel on ``meta``, fp16."""
    import torch

    return _on_meta(dict(SDXL_FULL), torch.float16)


def flux_on_meta():
    """ComfyUI's FLUX.1-dev BaseModel on ``meta``, bf16."""
    import torch
    from comfy_env import flux_dit_config

    return _on_meta(flux_dit_config(FLUX_FULL), torch.bfloat16)


def flux_inputs():
    """One 1024² image (batch 1, as the trainer's default), T5 context of 512 tokens, pooled CLIP, guidance 1."""
    import torch

    meta = dict(device="meta", dtype=torch.bfloat16)
    kw = {"context": torch.empty(1, 512, 4096, **meta), "y": torch.empty(1, 768, **meta)}
    kw["guidance"] = torch.empty(1, device="meta")
    return torch.empty(1, 16, SIDE // 8, SIDE // 8, **meta), torch.empty(1, device="meta"), kw


def sdxl_inputs():
    import torch

    side = SIDE // 8
    meta = dict(device="meta", dtype=torch.float16)
    return (
        torch.empty(2, 4, side, side, **meta),
        torch.empty(2, device="meta"),
        {"context": torch.empty(2, 77, 2048, **meta), "y": torch.empty(2, 2816, **meta)},
    )


def attention_loras(patcher, count: int, rank: int = RANK):
    """``count`` parsed LoRAs (Loom's form) of rank ``rank`` on every attention projection, tensors on ``meta``."""
    import torch
    from lora_loom.lora_math.adapters import LoRA
    from lora_loom.lora_math.formats import ParsedLoRA

    targets = {k: v.shape for k, v in patcher.model.state_dict().items() if k.endswith(_attn())}
    out = []
    for _ in range(count):
        modules = {
            key[: -len(".weight")]: LoRA(
                down=torch.empty(rank, shape[1], device="meta", dtype=torch.float16),
                up=torch.empty(shape[0], rank, device="meta", dtype=torch.float16),
                alpha=float(rank),
            )
            for key, shape in targets.items()
        }
        out.append(ParsedLoRA("kohya", modules, {}))
    return out, len(targets)


def _attn():
    from _common import ATTN

    return ATTN


def core_patches(patcher, count: int, rank: int = RANK) -> dict:
    """Core's own LoRA adapters for the same targets: ``{key: [adapter per LoRA]}``."""
    import torch
    from comfy.weight_adapter.lora import LoRAAdapter

    out = {}
    for key, shape in ((k, v.shape) for k, v in patcher.model.state_dict().items() if k.endswith(_attn())):
        out[key] = [
            LoRAAdapter(
                set(),
                (
                    torch.empty(shape[0], rank, device="meta", dtype=torch.float16),
                    torch.empty(rank, shape[1], device="meta", dtype=torch.float16),
                    float(rank),
                    None,
                    None,
                    None,
                ),
            )
            for _ in range(count)
        ]
    return out


def repatch_ops(patcher) -> int:
    """What upstream's dynamic loader runs per patched weight after a change, beyond casting the weight it loads:
    ``calculate_weight`` on the weight in the compute dtype (``LowVramPatch.__call__``), for every key with patches."""
    import comfy.lora

    loaded = {key: patcher.model.get_parameter(key).detach().clone() for key in patcher.patches}

    def run():
        for key, patches in patcher.patches.items():
            comfy.lora.calculate_weight(patches, loaded[key], key, intermediate_dtype=loaded[key].dtype)

    return count(run)


def bypass_call(bridge_mod, base, specs, x, t, kw) -> int:
    """Launches of one model call with ``specs`` scheduled (a ramp), through the bypass, after a warm-up call."""
    import torch
    from lora_loom.lora_math.schedule import parse_schedule

    ramp = parse_schedule("0:0.2, 1:1")
    scheduled = [bridge_mod.LoraSpec(s.name, s.parsed, s.strength_model, 0.0, schedule=ramp) for s in specs]
    patched = bridge_mod.apply_stack(base, None, scheduled)[0]
    bridge_mod.schedule_bypass.install(patched)
    installed = bridge_mod.schedule_bypass.installed_on(patched.model)
    dm = patched.model.diffusion_model
    try:
        installed.set_progress(0.3)
        with torch.no_grad():
            dm(x, t, **kw)  # the first call copies the factors to the device (a warm-up)
        installed.set_progress(0.6)
        return count(lambda: dm(x, t, **kw))
    finally:
        bridge_mod.schedule_bypass.uninstall(patched.model)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    t_start = time.perf_counter()
    pack, version = _setup()

    bridge_mod = bridge(pack)
    base = sdxl_on_meta()
    x, t, kw = sdxl_inputs()
    diffusion_model = base.model.diffusion_model
    result: dict = {"bench": "launches", "comfyui": version, "rank": RANK, "side": SIDE}
    result["base_forward"] = count(lambda: diffusion_model(x, t, **kw))
    result |= train_counts(pack, base.clone(), x, t, kw)
    flux = train_counts(pack, flux_on_meta(), *flux_inputs())
    result |= {f"flux_{k}": v for k, v in flux.items()}

    for n in (1, 3):
        loras, targets = attention_loras(base, n)
        result["targets"] = targets
        specs = [bridge_mod.LoraSpec(f"l{i}", p, 0.5 + 0.1 * i, 0.0) for i, p in enumerate(loras)]

        # 0.3.75's fast path: merged in place; a strength change moves the weights by the deltas
        first = bridge_mod.apply_stack(base, None, specs)[0]
        bridge_mod.merge_injection.reconcile(first)
        again = [bridge_mod.LoraSpec(s.name, s.parsed, s.strength_model + 0.25, 0.0) for s in specs]
        second = bridge_mod.apply_stack(base, None, again)[0]
        result[f"merge_strength_change_{n}"] = count(lambda p=second: bridge_mod.merge_injection.reconcile(p))
        base.unpatch_model()

        # upstream dynamic VRAM: Loom patch objects, re-patched per weight by ComfyUI
        dynamic = bridge_mod.apply_stack(_as_dynamic(base.clone()), None, specs)[0]
        result[f"dynamic_repatch_{n}"] = repatch_ops(dynamic)
        core = base.clone()
        for key, adapters in core_patches(base, n).items():
            for adapter in adapters:
                core.add_patches({key: adapter}, 0.6)
        result[f"core_dynamic_repatch_{n}"] = repatch_ops(core)

        # the bypass (scheduled LoRAs; or static ones, were they to take it)
        result[f"bypass_call_{n}"] = bypass_call(bridge_mod, base, specs, x, t, kw)
        result[f"bypass_over_base_{n}"] = round(result[f"bypass_call_{n}"] / result["base_forward"], 3)
        # static LoRAs merged (0.3.75): a model call on the merged weights
        merged = bridge_mod.apply_stack(base, None, specs)[0]
        bridge_mod.merge_injection.reconcile(merged)
        result[f"static_call_{n}"] = count(lambda p=merged: p.model.diffusion_model(x, t, **kw))
        base.unpatch_model()
        # core's scheduled LoRAs: hooks whose keyframe changes re-patch every hooked weight, then the call
        result[f"core_hook_call_{n}"] = core_hook_call(base, core_patches(base, n), x, t, kw)
        result[f"core_hook_over_base_{n}"] = round(result[f"core_hook_call_{n}"] / result["base_forward"], 3)
    # the names for the headline: one sampling call with 3 scheduled LoRAs, Loom's way
    result["sched3_call"] = result["bypass_call_3"]
    result["sched3_over_base"] = result["bypass_over_base_3"]
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    emit(result, args.json)


def _as_dynamic(patcher):
    from comfy.model_patcher import ModelPatcher

    class Dynamic(ModelPatcher):  # how upstream's ModelPatcherDynamic presents itself (is_dynamic)
        def is_dynamic(self):
            return True

    patcher.__class__ = Dynamic
    return patcher


if __name__ == "__main__":
    main()
