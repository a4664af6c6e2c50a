"""lora_math.weights.inplace: in-place incremental merges equal the fp32 reference, within one rounding per update."""

import pytest
import torch

from lora_math.adapters import Full, LoHa, LoRA, merged_weight
from lora_math.weights.inplace import FactorCache, Term, is_additive, is_low_rank, terms_delta, update_weight

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def lora(out_f, in_f, r=4, seed=0, conv=False):
    if conv:
        return LoRA(down=rand(r, in_f, 3, 3, seed=seed) * 0.1, up=rand(out_f, r, 1, 1, seed=seed + 1) * 0.1, alpha=2.0)
    return LoRA(down=rand(r, in_f, seed=seed) * 0.1, up=rand(out_f, r, seed=seed + 1) * 0.1, alpha=2.0)


def reference(w0, terms):
    return (w0.float() + terms_delta(w0.shape, [(t, t.strength) for t in terms], w0.device)).to(w0.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_stack_then_strength_change_equals_reference(dtype):
    w0 = rand(32, 24, seed=1).to(dtype)
    a, b = lora(32, 24, seed=2), lora(32, 24, r=8, seed=3)
    w, cache = w0.clone(), FactorCache()
    first = [Term(a, 0.7), Term(b, -0.4)]
    update_weight(w, [], first, cache)
    torch.testing.assert_close(w, reference(w0, first), rtol=0, atol=TOL[dtype])
    second = [Term(a, 0.7), Term(b, 1.1)]  # only b changes: a's term is kept, not re-applied
    update_weight(w, [Term(b, -0.4)], [Term(b, 1.1)], cache)
    torch.testing.assert_close(w, reference(w0, second), rtol=0, atol=2 * TOL[dtype])


def test_single_lora_equals_merged_weight():
    w0 = rand(16, 8, seed=4)
    a = lora(16, 8, seed=5)
    w = w0.clone()
    update_weight(w, [], [Term(a, 0.9)], FactorCache())
    torch.testing.assert_close(w, merged_weight(w0, a, 0.9), rtol=0, atol=1e-6)


def test_remove_everything_returns_to_original_within_rounding():
    w0 = rand(16, 8, seed=6).half()
    terms = [Term(lora(16, 8, seed=7), 1.3), Term(lora(16, 8, seed=9), -0.6)]
    w, cache = w0.clone(), FactorCache()
    update_weight(w, [], terms, cache)
    update_weight(w, terms, [], cache)
    assert (w.float() - w0.float()).abs().max() <= 2 * torch.finfo(torch.float16).eps * w0.abs().max()


def test_row_slices_touch_only_their_rows():
    w0 = rand(12, 8, seed=10)
    q, v = lora(4, 8, seed=11), lora(4, 8, seed=12)
    w = w0.clone()
    update_weight(w, [], [Term(q, 1.0, rows=(0, 4)), Term(v, 0.5, rows=(8, 12))], FactorCache())
    assert torch.equal(w[4:8], w0[4:8])
    torch.testing.assert_close(w[0:4], merged_weight(w0[0:4], q, 1.0), rtol=0, atol=1e-6)
    torch.testing.assert_close(w[8:12], merged_weight(w0[8:12], v, 0.5), rtol=0, atol=1e-6)


def test_conv_locon_and_non_low_rank_terms_mix_in_one_rounding():
    w0 = rand(6, 5, 3, 3, seed=13)
    locon = lora(6, 5, seed=14, conv=True)
    loha = LoHa(w1a=rand(6, 2, seed=15), w1b=rand(2, 45, seed=16), w2a=rand(6, 2, seed=17), w2b=rand(2, 45, seed=18))
    full = Full(diff=rand(6, 5, 3, 3, seed=19) * 0.01)
    terms = [Term(locon, 0.8), Term(loha, 0.05), Term(full, -1.0)]
    assert is_low_rank(locon) and not is_low_rank(loha) and not is_low_rank(full)
    w = w0.clone()
    update_weight(w, [], terms, FactorCache())
    torch.testing.assert_close(w, reference(w0, terms), rtol=0, atol=1e-5)


def test_dora_and_tucker_are_not_routed_as_plain_low_rank():
    dora = LoRA(down=rand(2, 8, seed=20), up=rand(16, 2, seed=21), dora_scale=torch.ones(16, 1))
    tucker = LoRA(down=rand(2, 5, 1, 1, seed=22), up=rand(6, 2, 1, 1, seed=23), mid=rand(2, 2, 3, 3, seed=24))
    assert not is_additive(dora) and is_additive(tucker) and not is_low_rank(tucker)


def test_factor_cache_uploads_once_per_device_and_dtype():
    a, cache = lora(8, 8, seed=25), FactorCache()
    first = cache.factors(a, torch.device("cpu"), torch.float16)
    assert cache.factors(a, torch.device("cpu"), torch.float16) is first
    assert cache.factors(a, torch.device("cpu"), torch.float32)[0].dtype == torch.float32
    torch.testing.assert_close(first[0].float(), (a.up * a.scale).half().float())


def test_program_applies_strength_deltas_like_update_weight():
    from lora_math.weights.inplace import MergeProgram

    w0 = {"a": rand(12, 8, seed=30), "b": rand(6, 8, seed=31)}
    la, lb, lq = lora(12, 8, seed=32), lora(6, 8, r=2, seed=33), lora(4, 8, seed=34)
    terms = {"a": (Term(la, 0.5), Term(lq, 1.0, rows=(4, 8))), "b": (Term(lb, -0.2),)}
    assert MergeProgram.supports(terms)
    program = MergeProgram(terms, {"a": torch.float32, "b": torch.float32}, "cpu", FactorCache())
    weights = {k: v.clone() for k, v in w0.items()}
    program.apply([0.5, 1.0, -0.2], weights.__getitem__)
    program.apply([0.25, 0.0, 0.7], weights.__getitem__)  # strengths now 0.75, 1.0, 0.5
    expected = {k: v.clone() for k, v in w0.items()}
    cache = FactorCache()
    update_weight(expected["a"], [], [Term(la, 0.75), Term(lq, 1.0, rows=(4, 8))], cache)
    update_weight(expected["b"], [], [Term(lb, 0.5)], cache)
    for k in w0:
        torch.testing.assert_close(weights[k], expected[k], rtol=0, atol=1e-5)
    assert not MergeProgram.supports({"a": (Term(Full(diff=rand(12, 8, seed=35)), 1.0),)})
