"""lora_math.weights.bypass: a bank's layer outputs equal the merged layer, for every coefficient setting (bypass == merged)."""

import pytest
import torch
import torch.nn.functional as F

from lora_math.adapters import LoHa, LoRA, merged_weight
from lora_math.weights.bypass import BypassBank, BypassLayer, BypassTerm

TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 3e-2}


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def lora(out_f, in_f, r=4, seed=0, **kw):
    return LoRA(down=rand(r, in_f, seed=seed) * 0.1, up=rand(out_f, r, seed=seed + 1) * 0.1, alpha=2.0, **kw)


def merged(w, terms, values):
    for t in terms:
        s = values[t.channel] * t.multiplier
        if t.rows is None:
            w = merged_weight(w, t.adapter, s)
        else:
            w = w.clone()
            w[t.rows[0] : t.rows[1]] = merged_weight(w[t.rows[0] : t.rows[1]], t.adapter, s)
    return w


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_linear_layers_with_channels_rows_and_mixed_adapters(dtype):
    w1, w2 = rand(24, 16, seed=1), rand(30, 16, seed=2)  # same input width: one shared A buffer
    loha = LoHa(rand(24, 2, seed=7) * 0.3, rand(2, 16, seed=8) * 0.3, rand(24, 2, seed=9) * 0.3, rand(2, 16, seed=10))
    layers = [
        BypassLayer(24, "linear", (BypassTerm(lora(24, 16, seed=3), 0, 0.8), BypassTerm(loha, 1, -1.2))),
        BypassLayer(
            30,
            "linear",
            (  # a fused-qkv-like target: two LoRAs on row slices, one on the whole weight
                BypassTerm(lora(10, 16, seed=4), 1, 1.0, (0, 10)),
                BypassTerm(lora(20, 16, r=6, seed=5), 2, 0.5, (10, 30)),
                BypassTerm(lora(30, 16, r=2, seed=6), 0, 1.5),
            ),
        ),
    ]
    bank = BypassBank(layers, 3)
    x = rand(2, 5, 16, seed=11).to(dtype)
    for values in ([1.0, 0.0, 2.0], [0.3, -0.7, 0.0], [0.3, -0.7, 0.0], [0.0, 0.0, 0.0], [2.0, 1.0, -1.0]):
        bank.set_coefficients(values)
        for index, w in enumerate((w1, w2)):
            out = bank.add(index, x, F.linear(x, w.to(dtype)))
            expected = F.linear(x.float(), merged(w, layers[index].terms, values)).to(dtype)
            scale = float(expected.abs().max())
            torch.testing.assert_close(out, expected, rtol=0, atol=TOL[dtype] * scale)


def test_zero_coefficients_add_exactly_nothing_and_changes_are_reported():
    layer = BypassLayer(8, "linear", (BypassTerm(lora(8, 4, seed=1), 0),))
    bank = BypassBank([layer], 1)
    x, base = rand(3, 4, seed=2), rand(3, 8, seed=3)
    assert bank.add(0, x, base.clone()).equal(base)  # coefficients start at 0: the layer runs and adds zeros
    assert bank.set_coefficients([0.5]) and not bank.set_coefficients([0.5])
    assert not bank.add(0, x, base.clone()).equal(base)
    bank.set_coefficients([0.0])
    assert bank.add(0, x, base.clone()).equal(base)


def test_coefficients_change_in_place_in_tensors_that_stay_the_same():
    """What a CUDA graph replay needs: a step writes new values into the same tensors, nothing is re-made."""
    loha = LoHa(rand(8, 2, seed=4), rand(2, 4, seed=5), rand(8, 2, seed=6), rand(2, 4, seed=7))
    layer = BypassLayer(8, "linear", (BypassTerm(lora(8, 4, seed=1), 0), BypassTerm(loha, 1, 0.5)))
    bank = BypassBank([layer], 2)
    x = rand(3, 4, seed=2)
    bank.add(0, x, rand(3, 8, seed=3))
    mat = bank._materialised(x.device, x.dtype)
    before = [
        mat.coef.data_ptr(),
        *(g.scaled.data_ptr() for g in mat.groups),
        *(c.data_ptr() for c in mat.channel_coef),
    ]
    bank.set_coefficients([0.25, -1.0])
    after = [mat.coef.data_ptr(), *(g.scaled.data_ptr() for g in mat.groups), *(c.data_ptr() for c in mat.channel_coef)]
    assert after == before and mat.coef.tolist() == [0.25, -1.0]


def test_conv_and_dora_terms_take_the_generic_path():
    conv_lora = LoRA(down=rand(2, 3, 3, 3, seed=1) * 0.2, up=rand(5, 2, 1, 1, seed=2) * 0.2, alpha=1.0)
    args = {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "groups": 1, "padding_mode": "zeros"}
    bank = BypassBank([BypassLayer(5, "conv2d", (BypassTerm(conv_lora, 0, 2.0),), args)], 1)
    w, x = rand(5, 3, 3, 3, seed=3), rand(1, 3, 6, 6, seed=4)
    bank.set_coefficients([0.75])
    out = bank.add(0, x, F.conv2d(x, w, padding=1))
    torch.testing.assert_close(out, F.conv2d(x, merged_weight(w, conv_lora, 1.5), padding=1), rtol=0, atol=1e-5)

    dora = lora(6, 4, seed=5, dora_scale=rand(6, 1, seed=6).abs() + 0.5)
    wd, xd = rand(6, 4, seed=7), rand(2, 4, seed=8)
    bank = BypassBank([BypassLayer(6, "linear", (BypassTerm(dora, 0, 1.0),))], 1)
    bank.set_coefficients([0.6])
    out = bank.add(0, xd, F.linear(xd, wd), weight=wd)
    torch.testing.assert_close(out, F.linear(xd, merged_weight(wd, dora, 0.6)), rtol=0, atol=1e-5)


def test_bad_channels_are_refused():
    with pytest.raises(ValueError, match="channel 2 outside 0..1"):
        BypassBank([BypassLayer(8, "linear", (BypassTerm(lora(8, 4), 2),))], 2)
    bank = BypassBank([], 2)
    with pytest.raises(ValueError, match="3 coefficients for 2 channels"):
        bank.set_coefficients([1, 2, 3])


@pytest.mark.parametrize("same_input", [True, False])
def test_layers_that_read_one_input_share_one_down_gemm_with_the_same_outputs(same_input):
    """q/k/v given as ``shared``: their A rows run as one GEMM (by the input's identity), with the outputs of three;
    a layer outside the group, one without fast terms and different inputs are all still right."""
    loha = LoHa(rand(8, 2, seed=20), rand(2, 16, seed=21), rand(8, 2, seed=22), rand(2, 16, seed=23), alpha=2.0)
    layers = [
        BypassLayer(
            24, "linear", (BypassTerm(lora(24, 16, seed=30), 0, 0.7), BypassTerm(lora(24, 16, r=2, seed=31), 1))
        ),
        BypassLayer(8, "linear", (BypassTerm(loha, 1, 0.5),)),  # other terms only: no fast rows
        BypassLayer(12, "linear", (BypassTerm(lora(12, 16, seed=32), 1, -1.1),)),
        BypassLayer(20, "linear", (BypassTerm(lora(20, 16, seed=33), 0, 0.9),)),
    ]
    plain, shared = BypassBank(layers, 2), BypassBank(layers, 2, shared=[[0, 1, 2, 3]])
    for bank in (plain, shared):
        bank.set_coefficients([0.6, -0.3])
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(3, 5, 16, generator=gen)
    inputs = [x] * 4 if same_input else [torch.randn(3, 5, 16, generator=gen) for _ in range(4)]
    for step in range(2):  # twice: the group's cache is forgotten after each layer had its part
        for i, layer in enumerate(layers):
            base = torch.randn(3, 5, layer.out_features, generator=torch.Generator().manual_seed(40 + i + step))
            want = plain.add(i, inputs[i], base.clone())
            got = shared.add(i, inputs[i], base.clone())
            assert torch.allclose(got, want, atol=1e-6), (step, i)
    mat = shared._materialised(x.device, x.dtype)
    assert sorted(mat.shared_of) == [0, 2, 3]  # layer 1 has no rows of A
