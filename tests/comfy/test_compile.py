"""torch.compile (inductor, on the CPU): the trainer's ``compile`` option and scheduled LoRAs under ComfyUI's own
``TorchCompileModel``. Each must give what eager gives (within the tolerance of a reordered fp32 sum) and compile
once per input shape: the steps of one bucket, and the sampling steps of one schedule, replay one graph.

Slow (inductor compiles the tiny SD1.5's forward and backward, ~1 min cold): pinned tree only.
"""

from __future__ import annotations

import comfy.model_management as mm
import pytest
import torch
from test_train_node import images, run

pytestmark = pytest.mark.pinned_only

# Eager vs inductor in fp32: the same math in another order (fused kernels, other GEMM blockings). Adam divides
# each update by its gradient's running size, so a single entry whose gradient is ~0 can take a different sign;
# a trained LoRA is compared as a whole: each module's update ΔW = up·down within 1e-3 in relative norm.
RTOL = 1e-3


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm())


@pytest.fixture()
def counters(monkeypatch):
    """Dynamo's counters, from a clean slate; attention as on a GPU (ComfyUI's CPU default, sub-quadratic attention,
    asks psutil for free memory inside the model call: a graph break by design, not ours to test)."""
    import comfy.ldm.modules.attention as attention
    import torch._dynamo

    for name in ("optimized_attention", "optimized_attention_masked"):
        monkeypatch.setattr(attention, name, attention.attention_pytorch)

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield torch._dynamo.utils.counters
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def train_mod(pack):
    import importlib

    return importlib.import_module("lora_loom.nodes.train.train_lora")


def _updates(lora) -> dict[str, torch.Tensor]:
    return {key: up @ down for key, (down, up) in lora.modules.items()}


def test_trainer_compiled_equals_eager(train_mod, sd15, counters):
    kw = dict(steps=4, seed=3)
    _, eager, _, _ = run(train_mod, sd15, **kw)
    _, compiled, _, _ = run(train_mod, sd15, **kw, compile="default")
    mm.unload_all_models()
    assert compiled.settings["compile"] == "default"
    errors = {k: relative_error(v, _updates(eager)[k]) for k, v in _updates(compiled).items()}
    assert max(errors.values()) < RTOL, max(errors.items(), key=lambda kv: kv[1])
    assert compiled.loss_history == pytest.approx(eager.loss_history, rel=RTOL)
    assert not counters["graph_break"], dict(counters["graph_break"])  # the side paths trace into the graph
    assert counters["stats"]["unique_graphs"] == 1  # four steps, one graph


def test_trainer_compiles_once_per_bucket(train_mod, sd15, counters, monkeypatch):
    """What recompiles is dynamo's decision (its guards), whatever the backend: counted with ``aot_eager`` (the same
    graphs, forward and backward, without inductor's minutes of code generation)."""
    monkeypatch.setattr(train_mod.comfy_bridge.compiled, "BACKEND", "aot_eager")
    # two buckets: 64×64 and 64×128 (images of two sizes, each trained at its own size), 6 steps
    data = images(2) + images(2, size=(64, 128), seed=1)
    run(train_mod, sd15, images=data, steps=6, seed=3, resolution=128, compile="max-autotune")
    mm.unload_all_models()
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 2  # one per bucket, for six steps
    assert counters["recompiles"].total() <= 1  # the second bucket, nothing else


def test_bad_compile_mode_names_the_input(train_mod, sd15):
    with pytest.raises(ValueError, match=r"^compile: 'fast' is not one of off, default, max-autotune"):
        run(train_mod, sd15, compile="fast")


def test_scheduled_sampling_under_core_torch_compile(pack, model, counters):
    """ComfyUI's ``TorchCompileModel`` after Loom's scheduled LoRA: same images as eager, one compile for the run."""
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    from conftest import SD15_LORA
    from test_schedule_sampling import loom, sample, spec

    scheduled = loom(pack, model, spec(pack, SD15_LORA, "0:0, 0.5:1, 1:0.3"))
    eager = sample(scheduled, steps=4)
    compiled_model = scheduled.clone()
    set_torch_compile_wrapper(compiled_model, backend="inductor")
    compiled = sample(compiled_model, steps=4)
    mm.unload_all_models()
    plain = sample(model, steps=4)
    assert (
        relative_error(compiled, eager) < 1e-4 < relative_error(plain, eager) / 100
    )  # matches; the LoRA shows  # the schedule shows, and matches
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1  # four steps, four strengths, one graph (cond+uncond batched)
