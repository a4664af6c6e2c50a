"""Scheduled strengths are graph-safe: every sampling step runs the same ops on the same tensors inside the model.

Upstream ComfyUI (0.38) captures resident blocks into CUDA graphs and replays them; a replay re-runs the recorded
kernels on the recorded memory, so anything a step changes through a Python branch (a layer skipped at strength 0)
or a freshly made tensor (a strength baked in as a kernel scalar) would be frozen at its captured value. Here a
``TorchDispatchMode`` records, for two sampling steps with different strengths, every op dispatched inside the
diffusion model and what each tensor argument is: a tensor that existed before the call (by data pointer: weights,
LoRA factors, the strength buffers) or one made during the call (by which earlier op made it). Both steps must give
the same record, while their outputs differ exactly as the schedule says.
"""

from __future__ import annotations

import comfy.model_management as mm
import comfy.utils
import torch
from conftest import SD15_LORA
from test_schedule_sampling import SD15_LOHA, assert_matches, loom, sample, spec
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# Three steps at progress 0, 1/3, 2/3. Step 0 is the warm-up (the bank copies its factors to the device on its first
# call, as a real run does before any capture); steps 1 and 2 are compared. The LoRA is at strength 0 on step 1 and
# 0.86 on step 2 (a layer that would be skipped, then not); the LoHa (the generic, materialising path) at 2/3, then 1/3.
LORA_SCHEDULE = "0:0, 0.4:0, 0.7:1, 1:1"
LOHA_SCHEDULE = "0:1, 1:0"


class OpRecorder(TorchDispatchMode):
    """Every op dispatched while active: its name, and per argument a label that is equal across two calls exactly
    when a replay would see the same thing there. The call's own inputs (latents, timesteps, text) are new tensors at
    every step by nature (a graph replay copies them into its input buffers): they are labelled by position."""

    def __init__(self, inputs) -> None:
        super().__init__()
        self.ops: list[tuple] = []
        self._made: dict[int, tuple[int, int]] = {}  # storage data_ptr -> (op index, output index)
        leaves, _ = tree_flatten(inputs)
        tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
        self._inputs = {t.untyped_storage().data_ptr(): i for i, t in enumerate(tensors)}

    def _label(self, value):
        if isinstance(value, torch.Tensor):
            ptr = value.untyped_storage().data_ptr()
            if ptr in self._made:
                where = ("made", *self._made[ptr])
            elif ptr in self._inputs:
                where = ("input", self._inputs[ptr])
            else:
                where = ("existing", ptr)
            return (*where, value.storage_offset(), tuple(value.shape), value.stride(), value.dtype)
        if isinstance(value, (bool, int, float, complex, str, type(None), torch.dtype, torch.device, torch.layout)):
            return value
        return repr(value)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        leaves, _ = tree_flatten((args, kwargs))
        index = len(self.ops)
        self.ops.append((str(func), tuple(self._label(v) for v in leaves)))
        # A fresh output (not a view of, or written into, an argument) may reuse freed memory: label it by this op.
        read = {v.untyped_storage().data_ptr() for v in leaves if isinstance(v, torch.Tensor)}
        outs, _ = tree_flatten(out)
        for j, t in enumerate(outs):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in read:
                self._made[t.untyped_storage().data_ptr()] = (index, j)
        return out


def record_model_calls(diffusion_model):
    """Hooks that record every call of ``diffusion_model``: its ops, inputs and output."""
    calls: list[dict] = []

    def pre(module, args, kwargs):
        recorder = OpRecorder((args, kwargs))
        inputs = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
        calls.append({"recorder": recorder, "args": inputs, "kwargs": dict(kwargs)})
        recorder.__enter__()

    def post(module, args, kwargs, out):
        calls[-1]["recorder"].__exit__(None, None, None)
        calls[-1]["out"] = out.detach().clone()

    handles = [
        diffusion_model.register_forward_pre_hook(pre, with_kwargs=True),
        diffusion_model.register_forward_hook(post, with_kwargs=True),
    ]
    return calls, handles


def merged_forward(pack, model, call, strengths: dict[str, float]):
    """The plain model (no bypass) with ``W + s·ΔW`` merged for each LoRA at its strength, on a recorded call."""
    from lora_loom.lora_math import adapters
    from lora_loom.lora_math.names import keymap

    keys = {k: tuple(v.shape) for k, v in model.model.state_dict().items()}
    originals = {}
    try:
        for name, strength in strengths.items():
            for p in keymap.match(pack.nodes.files.lora_files.load(name, "lora_name"), keys).patches:
                weight = comfy.utils.get_attr(model.model, p.key)
                originals.setdefault(p.key, weight.detach().clone())
                weight.data.copy_(adapters.merged_weight(weight.detach(), p.adapter, strength))
        with torch.no_grad():
            return model.model.diffusion_model(*call["args"], **call["kwargs"])
    finally:
        for key, weight in originals.items():
            comfy.utils.get_attr(model.model, key).data.copy_(weight)


def test_steps_replay_the_same_ops_on_the_same_tensors(pack, model):
    from lora_loom.lora_math.schedule import parse_schedule

    patched = loom(pack, model, spec(pack, SD15_LORA, LORA_SCHEDULE), spec(pack, SD15_LOHA, LOHA_SCHEDULE))
    calls, handles = record_model_calls(model.model.diffusion_model)
    try:
        sample(patched, steps=3)
    finally:
        for h in handles:
            h.remove()
    assert len(calls) == 3  # cond and uncond run as one batch: one model call per step
    lora_values = parse_schedule(LORA_SCHEDULE).values(3)
    loha_values = parse_schedule(LOHA_SCHEDULE).values(3)
    assert lora_values[1] == 0 and lora_values[2] > 0.5 and loha_values[1] != loha_values[2]

    one, two = calls[1]["recorder"].ops, calls[2]["recorder"].ops
    assert len(one) > 500  # the whole UNet was recorded, not just the LoRA side paths
    first_difference = next((i for i, (a, b) in enumerate(zip(one, two, strict=False)) if a != b), None)
    assert len(one) == len(two) and first_difference is None, (
        f"step 1 dispatched {len(one)} ops, step 2 {len(two)}; first difference at op {first_difference}: "
        f"{one[first_difference] if first_difference is not None and first_difference < len(one) else None} vs "
        f"{two[first_difference] if first_difference is not None and first_difference < len(two) else None}"
    )

    mm.load_models_gpu([model])  # the base takes over: the bypass leaves, the weights are the originals
    for step in (1, 2):
        strengths = {SD15_LORA: lora_values[step], SD15_LOHA: loha_values[step]}
        expected = merged_forward(pack, model, calls[step], strengths)
        assert_matches(calls[step]["out"], expected, msg=f"step {step}")
    # ...and the schedule's effect is far beyond that tolerance: the two steps really ran different strengths
    base = merged_forward(pack, model, calls[2], {SD15_LORA: 0.0, SD15_LOHA: 0.0})
    assert (calls[2]["out"] - base).abs().max() > 100 * 2e-5 * base.abs().max()
