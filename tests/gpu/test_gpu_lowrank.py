"""lora_math.lowrank.delta on CUDA: factored and randomized SVDs give the CPU's fp64 optimum on full-size layer shapes."""

import pytest
import torch


def lowrank_module():
    from comfy_env import load_pack

    return load_pack().lora_math.lowrank.delta


@pytest.mark.parametrize("shape", [(1280, 1280), (1280, 2048), (640, 640)])
def test_merge_compress_on_cuda_is_the_optimum(shape):
    lowrank = lowrank_module()
    g = torch.Generator().manual_seed(0)
    parts = [
        lowrank.Delta(shape, torch.randn(shape[0], 32, generator=g) * 0.01, torch.randn(32, shape[1], generator=g))
        for _ in range(3)
    ]
    d = lowrank.sum_deltas(parts)
    c = lowrank.compress(d.to("cuda"), lowrank.RankRule("rank", 64))
    s = torch.linalg.svdvals(d.matrix().double())
    dropped = float((s[64:] ** 2).sum())
    err = float((d.matrix().double() - (c.up.double() @ c.down.double()).cpu()).pow(2).sum())
    assert c.up.is_cuda and err == pytest.approx(dropped, rel=1e-3)


def test_extract_randomized_on_cuda_is_near_the_optimum():
    lowrank = lowrank_module()
    g = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(1280, 1280, generator=g))
    v, _ = torch.linalg.qr(torch.randn(1280, 1280, generator=g))
    m = (u * torch.tensor([0.97**i for i in range(1280)])) @ v.T  # a slowly decaying fine-tune spectrum
    c = lowrank.compress(lowrank.Delta((1280, 1280), dense=m.cuda()), lowrank.RankRule("rank", 32))
    s = torch.linalg.svdvals(m.double())
    optimum = float((s[32:] ** 2).sum())
    err = float((m.double() - (c.up.double() @ c.down.double()).cpu()).pow(2).sum())
    assert optimum <= err <= optimum * 1.01  # randomized: within 1% of the best rank-32 error
    assert c.kept == pytest.approx(1 - err / float((s**2).sum()), abs=1e-4)
