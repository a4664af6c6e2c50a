"""Kernel-launch budgets (issue 15), counted as ``bench/launches.py`` counts them: full-size SDXL UNet on ``meta``
(nothing computed, every dispatched op seen; views and metadata-only ops not counted), 1024², batch 2.

A launch costs a host-bound GPU 10-25 µs whatever the kernel does, so these counts are the GPU cost of the LoRA
paths that no CPU timing shows, and they are deterministic: a change that adds kernels per layer fails here.
"""

import sys

import pytest
from comfy_env import REPO

sys.path.insert(0, str(REPO / "bench"))
import launches  # noqa: E402


@pytest.fixture
def sdxl_meta(monkeypatch):
    """The model on ``meta`` with PyTorch's attention (one SDPA call, as on a GPU, and as the bench runs): the CPU's
    default attention sizes its chunks from free memory, which ``meta`` has none of."""
    import comfy.ldm.modules.attention as attention

    monkeypatch.setattr(attention, "optimized_attention", attention.attention_pytorch)
    monkeypatch.setattr(attention, "optimized_attention_masked", attention.attention_pytorch)
    return launches.sdxl_on_meta(), launches.sdxl_inputs()


def test_training_side_path_costs_at_most_seven_launches_per_layer_and_step(pack, sdxl_meta):
    """Forward and backward of one step: the side path is one down-projection and one ``addmm`` into the layer's
    output on working copies in the model's dtype (no cast, no scale, no add of its own), and its backward the four
    matmuls and the one gradient add that autograd needs. Before: 12.2 per layer (2.48x the floor)."""
    patcher, (x, t, kw) = sdxl_meta
    counts = launches.train_counts(pack, patcher.clone(), x, t, kw)
    assert counts["train_targets"] == 560  # every attention projection of the SDXL UNet
    extra = (counts["loom_train_step"] - counts["train_floor"]) / counts["train_targets"]
    assert extra <= 7.05, counts
    assert counts["loom_train_over_floor"] <= 1.9, counts
