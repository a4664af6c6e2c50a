"""lora_math.lowrank.delta: factor-space inner products and SVDs against dense references computed with a full SVD."""

import math

import pytest
import torch

from lora_math.adapters import LoHa, LoRA, merged_weight
from lora_math.lowrank.delta import Delta, RankRule, adapter_delta, compress, exact, inner, sq_norm, svd


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def low_rank(out_f, in_f, r, seed):
    return Delta((out_f, in_f), rand(out_f, r, seed=seed), rand(r, in_f, seed=seed + 100))


def dense(out_f, in_f, seed):
    return Delta((out_f, in_f), dense=rand(out_f, in_f, seed=seed))


def decaying(out_f, in_f, seed, decay=0.85):
    """A dense matrix with singular values decay**i (a fine-tune difference looks like this)."""
    u, _ = torch.linalg.qr(rand(out_f, out_f, seed=seed))
    v, _ = torch.linalg.qr(rand(in_f, in_f, seed=seed + 1))
    n = min(out_f, in_f)
    s = torch.tensor([decay**i for i in range(n)])
    return (u[:, :n] * s) @ v[:, :n].T


@pytest.mark.parametrize(
    "a, b",
    [
        (low_rank(24, 16, 4, 1), low_rank(24, 16, 6, 2)),
        (low_rank(24, 16, 4, 3), dense(24, 16, 4)),
        (dense(24, 16, 5), low_rank(24, 16, 3, 6)),
        (dense(24, 16, 7), dense(24, 16, 8)),
        (low_rank(24, 16, 4, 9) + dense(24, 16, 10), low_rank(24, 16, 2, 11)),
    ],
)
def test_inner_through_factors_equals_dense(a, b):
    want = float((a.matrix().double() * b.matrix().double()).sum())
    assert inner(a, b) == pytest.approx(want, rel=1e-5)
    assert sq_norm(a) == pytest.approx(float(a.matrix().double().pow(2).sum()), rel=1e-5)


def test_svd_of_factors_is_the_products_svd():
    d = low_rank(40, 30, 6, 1) + low_rank(40, 30, 5, 2)  # rank 11, concatenated
    u, s, vh = svd(d)
    ref = torch.linalg.svdvals(d.matrix())
    torch.testing.assert_close(s, ref[: s.numel()], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close((u * s) @ vh, d.matrix(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(u.T @ u, torch.eye(s.numel()), rtol=0, atol=1e-5)


@pytest.mark.parametrize("make", ["factors", "dense", "dense_randomized"])
def test_compressed_error_matches_the_dropped_singular_values(make):
    if make == "factors":
        d = low_rank(64, 48, 12, 3) + low_rank(64, 48, 12, 4)
        ranks = [1, 4, 8, 16, 24]
    elif make == "dense":
        d = Delta((64, 48), dense=decaying(64, 48, 5))
        ranks = [1, 4, 8, 16, 24]
    else:  # large enough that a small rank takes torch.svd_lowrank
        d = Delta((256, 192), dense=decaying(256, 192, 6, decay=0.9))
        ranks = [2, 4, 8, 16]
    ref = torch.linalg.svdvals(d.matrix().double())
    total = float((ref**2).sum())
    errors = []
    for k in ranks:
        c = compress(d, RankRule("rank", k))
        assert c.rank == k
        dropped = float((ref[k:] ** 2).sum())
        err_sq = float((d.matrix().double() - c.up.double() @ c.down.double()).pow(2).sum())
        assert err_sq == pytest.approx(dropped, rel=1e-3, abs=1e-6 * total)  # Eckart–Young optimum
        assert c.kept == pytest.approx(1 - err_sq / total, abs=1e-5)  # and the report says so
        errors.append(c.relative_error)
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0]


def test_rules_pick_the_documented_rank():
    d = Delta((64, 48), dense=decaying(64, 48, 7, decay=0.5))
    s = torch.linalg.svdvals(d.matrix().double())
    energy = torch.cumsum(s**2, 0) / (s**2).sum()
    c = compress(d, RankRule("energy", 0.99))
    assert c.rank == int((energy < 0.99).sum()) + 1 and c.kept >= 0.99
    c = compress(d, RankRule("sv_ratio", 10.0))
    assert c.rank == int((s >= s[0] / 10).sum())
    c = compress(d, RankRule("energy", 0.9999, max_rank=3))
    assert c.rank == 3
    # a rank above what the update holds keeps what there is
    assert compress(low_rank(32, 32, 4, 8), RankRule("rank", 16)).rank == 4


def test_rank_above_the_layer_is_refused_naming_rank():
    with pytest.raises(ValueError, match=r"rank: 40 is above the rank of my\.key \(\[32, 24\]: at most 24\)"):
        compress(low_rank(32, 24, 4, 1), RankRule("rank", 40), key="my.key")


@pytest.mark.parametrize(
    "mode, value, match",
    [
        ("rank", 0, "rank"),
        ("rank", 2.5, "rank"),
        ("energy", 1.5, "energy"),
        ("sv_ratio", 0.5, "sv_ratio"),
        ("x", 1, "method"),
    ],
)
def test_bad_rules(mode, value, match):
    with pytest.raises(ValueError, match=match):
        RankRule(mode, value)


def test_exact_keeps_everything():
    d = low_rank(32, 24, 4, 1).scaled(0.7) + low_rank(32, 24, 8, 2).scaled(-0.4)
    c = exact(d)
    assert c.rank == 12 and c.kept == 1.0
    torch.testing.assert_close(c.up @ c.down, d.matrix(), rtol=1e-5, atol=1e-5)
    loha = LoHa(rand(32, 3, seed=3), rand(3, 24, seed=4), rand(32, 3, seed=5), rand(3, 24, seed=6), alpha=3.0)
    d = adapter_delta(loha, (32, 24))
    c = exact(d)
    assert c.rank <= 9  # a Hadamard product of two rank-3 matrices has rank ≤ 9
    torch.testing.assert_close(c.up @ c.down, d.matrix(), rtol=1e-4, atol=1e-4)


def test_adapter_delta_matches_the_merge():
    w = rand(48, 16, seed=1)
    a = LoRA(down=rand(4, 16, seed=2), up=rand(16, 4, seed=3), alpha=2.0)
    d = adapter_delta(a, (48, 16), rows=(16, 32), strength=0.6)  # a fused qkv slice: rows 16..32
    assert d.is_low_rank and d.factor_rank == 4
    want = torch.zeros(48, 16)
    want[16:32] = merged_weight(w[16:32], a, 0.6) - w[16:32]
    torch.testing.assert_close(d.matrix(), want, rtol=1e-5, atol=1e-5)

    conv = LoRA(down=rand(4, 8, 3, 3, seed=4), up=rand(6, 4, 1, 1, seed=5), alpha=4.0)
    wc = rand(6, 8, 3, 3, seed=6)
    d = adapter_delta(conv, tuple(wc.shape), strength=1.3)
    torch.testing.assert_close(d.matrix().reshape(wc.shape), merged_weight(wc, conv, 1.3) - wc, rtol=1e-5, atol=1e-5)
    c = exact(d)
    assert c.down.shape == (4, 8, 3, 3) and c.up.shape == (6, 4, 1, 1)

    dora = LoRA(down=rand(4, 16, seed=7), up=rand(48, 4, seed=8), alpha=4.0, dora_scale=rand(48, 1, seed=9).abs() + 1)
    for s in (1.0, 0.4):  # ComfyUI's DoRA strength interpolates from W: linear in s
        d = adapter_delta(dora, (48, 16), strength=s, base=w)
        torch.testing.assert_close(d.matrix(), merged_weight(w, dora, s) - w, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="base weight"):
        adapter_delta(dora, (48, 16))


def test_zero_update_compresses_to_nothing():
    assert compress(Delta((8, 8)), RankRule("rank", 2)) is None
    assert exact(Delta((8, 8), dense=torch.zeros(8, 8))) is None
    assert math.isclose(sq_norm(Delta((8, 8))), 0.0)
