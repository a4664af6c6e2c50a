"""lora_math.adapters: every algorithm x layer kind x dtype, bypass == merged; scale rules; DoRA; shape errors."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from fixtures_path import REAL_LORAS, needs_fixtures  # noqa: E402
from torch import Tensor

from lora_math.adapters import Full, LoHa, LoKr, LoRA, bypass_forward, merged_bias, merged_weight
from lora_math.errors import LoraFormatError, LoraShapeError
from lora_math.formats.io import load_state_dict

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# bypass and merge round differently (merge rounds W + sΔW to the dtype once; bypass rounds base_out and the delta
# output separately), so they agree to an ulp or two of the
# output magnitude (~1-10 here) plus a small absolute floor. Measured worst errors: fp32 2.4e-6, fp16 7.8e-3 and bf16
# 6.3e-2, each about one ulp of the largest output.
TOLERANCE = {
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.float16: {"atol": 1e-2, "rtol": 2e-3},
    torch.bfloat16: {"atol": 4e-2, "rtol": 1.6e-2},
}
STRENGTH = 0.8
LINEAR = (12, 10)
CONV = (8, 6, 3, 3)
CONV_ARGS = {"stride": 2, "padding": 1}
DILATED = {"padding": 2, "dilation": 2}

Rand = Callable[..., Tensor]


@dataclass(frozen=True)
class Case:
    name: str
    kind: str
    weight_shape: tuple[int, ...]
    build: Callable[[Rand], Any]
    conv_args: dict[str, Any] | None = None


def _dora(shape: tuple[int, ...]) -> Callable[[Rand], Tensor]:
    return lambda r: r(*shape).abs() + 1.0


CASES = [
    Case("lora-linear", "linear", LINEAR, lambda r: LoRA(down=r(4, 10), up=r(12, 4), alpha=2.0)),
    Case("locon-conv3x3", "conv2d", CONV, lambda r: LoRA(down=r(4, 6, 3, 3), up=r(8, 4, 1, 1), alpha=4.0), CONV_ARGS),
    Case("lora-conv1x1-as-linear", "conv2d", (8, 6, 1, 1), lambda r: LoRA(down=r(4, 6), up=r(8, 4)), {}),
    Case(
        "tucker-conv",
        "conv2d",
        CONV,
        lambda r: LoRA(down=r(4, 6, 1, 1), up=r(8, 4, 1, 1), mid=r(4, 4, 3, 3), alpha=2.0),
        DILATED,
    ),
    Case("loha-linear", "linear", LINEAR, lambda r: LoHa(r(12, 3), r(3, 10), r(12, 3), r(3, 10), alpha=9.0)),
    Case(
        "loha-conv-flat",
        "conv2d",
        CONV,
        lambda r: LoHa(r(8, 3), r(3, 54), r(8, 2), r(2, 54), alpha=3.0),
        {**CONV_ARGS, "kernel_size": 3},
    ),
    Case(
        "loha-tucker-conv",
        "conv2d",
        CONV,
        lambda r: LoHa(r(3, 8), r(3, 6), r(3, 8), r(3, 6), alpha=3.0, t1=r(3, 3, 3, 3), t2=r(3, 3, 3, 3)),
        CONV_ARGS,
    ),
    Case("lokr-full-linear", "linear", LINEAR, lambda r: LoKr(w1=r(3, 2), w2=r(4, 5), alpha=9.0)),
    Case(
        "lokr-factorised-linear",
        "linear",
        LINEAR,
        lambda r: LoKr(w1a=r(3, 2), w1b=r(2, 2), w2a=r(4, 2), w2b=r(2, 5), alpha=16.0),
    ),
    Case("lokr-full-conv", "conv2d", CONV, lambda r: LoKr(w1=r(2, 2), w2=r(4, 3, 3, 3)), CONV_ARGS),
    Case(
        "lokr-tucker-conv",
        "conv2d",
        CONV,
        lambda r: LoKr(w1=r(2, 2), w2a=r(2, 4), w2b=r(2, 3), t2=r(2, 2, 3, 3), alpha=4.0),
        DILATED,
    ),
    Case("full-linear", "linear", LINEAR, lambda r: Full(diff=r(12, 10), diff_b=r(12))),
    Case("full-conv", "conv2d", CONV, lambda r: Full(diff=r(8, 6, 3, 3), diff_b=r(8)), CONV_ARGS),
    Case(
        "lora-linear-dora-rows",
        "linear",
        LINEAR,
        lambda r: LoRA(down=r(4, 10), up=r(12, 4), alpha=2.0, dora_scale=_dora((12, 1))(r)),
    ),
    Case(
        "locon-conv-dora-cols",
        "conv2d",
        CONV,
        lambda r: LoRA(down=r(4, 6, 3, 3), up=r(8, 4, 1, 1), alpha=4.0, dora_scale=_dora((1, 6))(r)),
        CONV_ARGS,
    ),
    Case(
        "loha-linear-dora-1d",
        "linear",
        LINEAR,
        lambda r: LoHa(r(12, 3), r(3, 10), r(12, 3), r(3, 10), alpha=1.5, dora_scale=_dora((12,))(r)),
    ),
    Case(
        "lokr-conv-dora-rows",
        "conv2d",
        CONV,
        lambda r: LoKr(w1=r(2, 2), w2=r(4, 3, 3, 3), dora_scale=_dora((8, 1, 1, 1))(r)),
        CONV_ARGS,
    ),
]


def _rand(seed: int = 0) -> Rand:
    gen = torch.Generator().manual_seed(seed)
    return lambda *shape: torch.randn(*shape, generator=gen) * 0.5


def _cast(adapter: Any, dtype: torch.dtype) -> Any:
    """The same adapter with every tensor field stored in ``dtype`` (as a file would store it)."""
    changes = {
        f.name: getattr(adapter, f.name).to(dtype)
        for f in dataclasses.fields(adapter)
        if isinstance(getattr(adapter, f.name), Tensor)
    }
    return dataclasses.replace(adapter, **changes)


def _layer(case: Case, dtype: torch.dtype) -> tuple[Any, Tensor, Tensor, Tensor]:
    r = _rand()
    adapter = _cast(case.build(r), dtype)
    weight = r(*case.weight_shape).to(dtype)
    bias = r(case.weight_shape[0]).to(dtype)
    x = (r(2, 3, case.weight_shape[1]) if case.kind == "linear" else r(2, case.weight_shape[1], 9, 9)).to(dtype)
    return adapter, weight, bias, x


def _forward(case: Case, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    if case.kind == "linear":
        return F.linear(x, weight, bias)
    args = {k: v for k, v in (case.conv_args or {}).items() if k != "kernel_size"}
    return F.conv2d(x, weight, bias, **args)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bypass_equals_merged(case: Case, dtype: torch.dtype) -> None:
    adapter, weight, bias, x = _layer(case, dtype)
    base_out = _forward(case, x, weight, bias)
    merged = merged_weight(weight, adapter, STRENGTH)
    expected = _forward(case, x, merged, merged_bias(bias, adapter, STRENGTH))
    needs_weight = getattr(adapter, "dora_scale", None) is not None
    got = bypass_forward(
        adapter,
        x,
        base_out,
        STRENGTH,
        kind=case.kind,
        conv_args=case.conv_args,
        weight=weight if needs_weight else None,
    )
    assert got.dtype == dtype and merged.dtype == dtype
    assert got.shape == base_out.shape
    tol = TOLERANCE[dtype]
    # The adapter must move the output well beyond the tolerance, or agreement would prove nothing.
    assert (expected.float() - base_out.float()).abs().max() > max(0.5, 10 * tol["atol"])
    torch.testing.assert_close(got.float(), expected.float(), **tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("case", [c for c in CASES if "dora" not in c.name], ids=lambda c: c.name)
def test_merge_is_one_cast_of_fp32_sum_and_unpatch_is_bit_exact(case: Case, dtype: torch.dtype) -> None:
    adapter, weight, _, _ = _layer(case, dtype)
    original = weight.clone()
    merged = merged_weight(weight, adapter, STRENGTH)
    delta = adapter.delta_weight(weight.shape)
    assert delta.dtype == torch.float32 and delta.shape == weight.shape
    # W + sΔW computed in fp32 and rounded exactly once.
    assert torch.equal(merged, (weight.float() + STRENGTH * delta).to(dtype))
    assert not torch.equal(merged, weight)
    # The input is never written to, so keeping it is the unpatch: restoring it is bit-exact.
    assert merged.data_ptr() != weight.data_ptr()
    assert torch.equal(weight, original)


@pytest.mark.parametrize("case", [c for c in CASES if "dora" not in c.name], ids=lambda c: c.name)
def test_merged_minus_weight_is_strength_times_delta(case: Case) -> None:
    adapter, weight, _, _ = _layer(case, torch.float32)
    diff = merged_weight(weight, adapter, STRENGTH) - weight
    torch.testing.assert_close(diff, STRENGTH * adapter.delta_weight(weight.shape), atol=1e-6, rtol=1e-5)


def test_strength_zero_leaves_weight_and_output_unchanged() -> None:
    r = _rand()
    lora = LoRA(down=r(4, 10), up=r(12, 4), alpha=4.0, dora_scale=r(12, 1).abs() + 1)
    weight, x = r(12, 10), r(3, 10)
    assert torch.equal(merged_weight(weight, lora, 0.0), weight)
    base = F.linear(x, weight)
    assert torch.equal(bypass_forward(lora, x, base, 0.0, kind="linear", weight=weight), base)


# --- scale rules -------------------------------------------------------------------------------------------------


def test_lora_scale_is_alpha_over_rank() -> None:
    r = _rand()
    assert LoRA(down=r(4, 10), up=r(12, 4)).scale == 1.0
    assert LoRA(down=r(4, 10), up=r(12, 4), alpha=8.0).scale == 2.0
    lora = LoRA(down=r(4, 10), up=r(12, 4), alpha=torch.tensor(2.0, dtype=torch.float16))
    assert lora.alpha == 2.0 and isinstance(lora.alpha, float) and lora.scale == 0.5 and lora.rank == 4
    torch.testing.assert_close(lora.delta_weight((12, 10)), 0.5 * lora.up @ lora.down)


def test_loha_scale_uses_w1b_rank() -> None:
    r = _rand()
    loha = LoHa(r(12, 3), r(3, 10), r(12, 5), r(5, 10), alpha=6.0)
    assert loha.rank == 3 and loha.scale == 2.0
    assert LoHa(r(12, 3), r(3, 10), r(12, 5), r(5, 10)).scale == 1.0
    expected = 2.0 * (loha.w1a @ loha.w1b) * (loha.w2a @ loha.w2b)
    torch.testing.assert_close(loha.delta_weight((12, 10)), expected)


def test_lokr_scale_rules() -> None:
    r = _rand()
    both = LoKr(w1a=r(3, 2), w1b=r(2, 2), w2a=r(4, 4), w2b=r(4, 5), alpha=2.0)
    assert both.rank == 4 and both.scale == 0.5  # w2_b wins over w1_b
    first_only = LoKr(w1a=r(3, 2), w1b=r(2, 2), w2=r(4, 5), alpha=2.0)
    assert first_only.rank == 2 and first_only.scale == 1.0
    full = LoKr(w1=r(3, 2), w2=r(4, 5), alpha=7.0)
    assert full.rank is None and full.scale == 1.0  # alpha ignored with both halves full
    torch.testing.assert_close(full.delta_weight((12, 10)), torch.kron(full.w1, full.w2))
    assert LoKr(w1=r(3, 2), w2a=r(4, 4), w2b=r(4, 5)).scale == 1.0  # no alpha


def test_full_scale_is_one_and_bias_only_patches_the_bias() -> None:
    r = _rand()
    full = Full(diff_b=r(12))
    assert full.scale == 1.0 and full.rank is None
    weight, bias, x = r(12, 10), r(12), r(3, 10)
    expected = bias + 0.5 * full.diff_b
    torch.testing.assert_close(merged_bias(bias, full, 0.5), expected)
    torch.testing.assert_close(merged_weight(bias, full, 0.5), expected)  # keyed "<module>.bias" by the parsers
    with pytest.raises(LoraShapeError, match=r"\[12, 10\]"):
        merged_weight(weight, full, 0.5)
    base = F.linear(x, weight, bias)
    torch.testing.assert_close(bypass_forward(full, x, base, 0.5, kind="linear"), F.linear(x, weight, expected))


def test_lokr_kron_shape() -> None:
    r = _rand()
    lokr = LoKr(w1=r(32, 24), w2=r(40, 32))
    assert lokr.out_features == 1280 and lokr.fan_in == 768
    delta = lokr.delta_weight((1280, 768))
    assert delta.shape == (1280, 768)
    assert torch.equal(delta[40:80, 32:64], lokr.w1[1, 1] * lokr.w2)


def test_lokr_conv_kron_keeps_kernel() -> None:
    r = _rand()
    lokr = LoKr(w1=r(2, 3), w2=r(4, 2, 3, 3))
    delta = lokr.delta_weight((8, 6, 3, 3))
    torch.testing.assert_close(delta[4:8, 2:4], lokr.w1[1, 1] * lokr.w2)
    # A factorised conv half stores its kernel flattened: same delta once reshaped to the weight.
    flat = LoKr(w1=lokr.w1, w2a=lokr.w2.reshape(4, 18), w2b=torch.eye(18))
    torch.testing.assert_close(flat.delta_weight((8, 6, 3, 3)), delta)


def test_tucker_lora_matches_explicit_sum() -> None:
    r = _rand()
    lora = LoRA(down=r(2, 3, 1, 1), up=r(4, 2, 1, 1), mid=r(2, 2, 3, 3))
    delta = lora.delta_weight((4, 3, 3, 3))
    up, down = lora.up[:, :, 0, 0], lora.down[:, :, 0, 0]
    expected = torch.zeros(4, 3, 3, 3)
    for o in range(4):
        for i in range(3):
            for m in range(2):
                for n in range(2):
                    expected[o, i] += up[o, m] * lora.mid[m, n] * down[n, i]
    torch.testing.assert_close(delta, expected)


# --- DoRA ---------------------------------------------------------------------------------------------------------


def _dora_reference(weight: Tensor, delta: Tensor, magnitude: Tensor, strength: float, axis: str) -> Tensor:
    """DoRA written out by hand, one row or one column at a time."""
    combined = weight + delta
    decomposed = torch.empty_like(combined)
    if axis == "out":
        for o in range(combined.shape[0]):
            norm = combined[o].pow(2).sum().sqrt()
            decomposed[o] = magnitude.flatten()[o] * combined[o] / norm
    else:
        for i in range(combined.shape[1]):
            norm = combined[:, i].pow(2).sum().sqrt()
            decomposed[:, i] = magnitude.flatten()[i] * combined[:, i] / norm
    return weight + strength * (decomposed - weight)


@pytest.mark.parametrize(
    ("weight_shape", "dora_shape", "axis"),
    [
        ((6, 5), (6, 1), "out"),
        ((6, 5), (6,), "out"),
        ((6, 5), (1, 5), "in"),
        ((5, 5), (1, 5), "in"),  # square: the [1, in] layout still means columns
        ((6, 4, 3, 3), (6, 1, 1, 1), "out"),
        ((6, 4, 3, 3), (1, 4), "in"),
    ],
)
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_dora_matches_hand_written_formula(weight_shape, dora_shape, axis, strength) -> None:
    r = _rand(1)
    rank = 3
    down = r(rank, *weight_shape[1:])
    up = r(weight_shape[0], rank, *([1] * (len(weight_shape) - 2)))
    lora = LoRA(down=down, up=up, alpha=1.5, dora_scale=r(*dora_shape).abs() + 0.5)
    weight = r(*weight_shape)
    delta = lora.delta_weight(weight_shape)
    expected = _dora_reference(weight, delta, lora.dora_scale, strength, axis)
    torch.testing.assert_close(merged_weight(weight, lora, strength), expected, atol=1e-5, rtol=1e-5)


def test_dora_scale_shape_mismatch_names_both_shapes() -> None:
    r = _rand()
    lora = LoRA(down=r(4, 10), up=r(12, 4), dora_scale=r(7, 1))
    with pytest.raises(LoraShapeError, match=r"dora_scale has shape \[7, 1\].*\[12, 10\].*\[12, 1\].*\[1, 10\]"):
        merged_weight(r(12, 10), lora, 1.0)


def test_dora_bypass_without_weight_is_refused_clearly() -> None:
    r = _rand()
    lora = LoRA(down=r(4, 10), up=r(12, 4), dora_scale=r(12, 1))
    x = r(3, 10)
    with pytest.raises(NotImplementedError, match="pass weight="):
        bypass_forward(lora, x, torch.zeros(3, 12), 1.0, kind="linear")


# --- bypass details -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "circular"])
def test_bypass_follows_conv_module_settings(padding_mode: str) -> None:
    r = _rand()
    conv = torch.nn.Conv2d(6, 8, 3, stride=2, padding=1, dilation=1, groups=2, padding_mode=padding_mode)
    lora = LoRA(down=r(4, 3, 3, 3), up=r(8, 4, 1, 1), alpha=2.0)
    x = r(2, 6, 9, 9)
    conv_args = {k: getattr(conv, k) for k in ("stride", "padding", "dilation", "groups", "padding_mode")}
    with torch.no_grad():
        base = conv(x)
        got = bypass_forward(lora, x, base, 0.9, kind="conv2d", conv_args=conv_args)
        conv.weight.copy_(merged_weight(conv.weight, lora, 0.9))
        expected = conv(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (expected - base).abs().max() > 0.1


@pytest.mark.parametrize("kind", ["conv1d", "conv3d"])
def test_bypass_other_conv_ranks(kind: str) -> None:
    r = _rand()
    nd = 1 if kind == "conv1d" else 3
    k = (3,) * nd
    weight = r(8, 6, *k)
    fn = F.conv1d if nd == 1 else F.conv3d
    x = r(2, 6, *([7] * nd))
    for adapter in (
        LoRA(down=r(4, 6, *k), up=r(8, 4, *([1] * nd)), alpha=2.0),
        LoRA(down=r(4, 6, *([1] * nd)), up=r(8, 4, *([1] * nd)), mid=r(4, 4, *k)),
        LoKr(w1=r(2, 2), w2=r(4, 3, *k)),
    ):
        base = fn(x, weight, padding=1)
        got = bypass_forward(adapter, x, base, 0.7, kind=kind, conv_args={"padding": 1})
        torch.testing.assert_close(got, fn(x, merged_weight(weight, adapter, 0.7), padding=1), atol=1e-4, rtol=1e-4)


def test_bypass_flattened_conv_needs_kernel() -> None:
    r = _rand()
    loha = LoHa(r(8, 3), r(3, 54), r(8, 2), r(2, 54))
    x = r(1, 6, 5, 5)
    with pytest.raises(LoraShapeError, match="kernel_size"):
        bypass_forward(loha, x, torch.zeros(1, 8, 5, 5), 1.0, kind="conv2d", conv_args={"padding": 1})
    weight = r(8, 6, 3, 3)
    got = bypass_forward(loha, x, torch.zeros(1, 8, 5, 5), 1.0, kind="conv2d", conv_args={"padding": 1}, weight=weight)
    expected = F.conv2d(x, loha.delta_weight(weight.shape), padding=1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_bypass_rejects_bad_arguments() -> None:
    r = _rand()
    lora = LoRA(down=r(4, 10), up=r(12, 4))
    x = r(3, 10)
    with pytest.raises(ValueError, match="kind must be one of"):
        bypass_forward(lora, x, torch.zeros(3, 12), 1.0, kind="conv4d")
    with pytest.raises(LoraShapeError, match="outputs 9 features"):
        bypass_forward(lora, x, torch.zeros(3, 9), 1.0, kind="linear")
    with pytest.raises(LoraShapeError, match=r"expected inputs with 10 features, found x of shape \[3, 11\]"):
        bypass_forward(lora, r(3, 11), torch.zeros(3, 12), 1.0, kind="linear")
    with pytest.raises(ValueError, match="unknown keys"):
        bypass_forward(lora, r(1, 10, 4, 4), torch.zeros(1, 12, 4, 4), 1.0, kind="conv2d", conv_args={"strid": 2})


# --- shape validation ---------------------------------------------------------------------------------------------


def test_delta_weight_reshapes_conv1x1_and_names_shapes_on_mismatch() -> None:
    r = _rand()
    lora = LoRA(down=r(4, 10), up=r(12, 4))
    assert lora.delta_weight((12, 10, 1, 1)).shape == (12, 10, 1, 1)
    with pytest.raises(LoraShapeError, match=r"weight it patches has shape \[12, 11\].*delta has shape \[12, 10\]"):
        lora.delta_weight((12, 11))
    with pytest.raises(LoraShapeError, match=r"\[10, 12\]"):  # same element count, transposed: refused
        lora.delta_weight((10, 12))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda r: LoRA(down=r(4, 10), up=r(12, 3)), r"up \[12, 3\] does not match down \[4, 10\]"),
        (lambda r: LoRA(down=r(4, 10), up=r(12, 4, 3, 3)), r"1x1 projection.*\[12, 4, 3, 3\]"),
        (lambda r: LoRA(down=r(4, 6, 1, 1), up=r(8, 4, 1, 1), mid=r(3, 3, 3, 3)), r"mid.*\[3, 3, 3, 3\]"),
        (lambda r: LoRA(down=r(4), up=r(12, 4)), r"LoRA.down: expected a 2-D.*found shape \[4\]"),
        (lambda r: LoRA(down=torch.ones(4, 10, dtype=torch.int64), up=r(12, 4)), "floating-point"),
        (lambda r: LoHa(r(12, 3), r(2, 10), r(12, 3), r(3, 10)), r"hada_w1_a \[12, 3\] and hada_w1_b \[2, 10\]"),
        (lambda r: LoHa(r(12, 3), r(3, 10), r(11, 3), r(3, 10)), r"\[12, 10\] and \[11, 10\]"),
        (lambda r: LoHa(r(3, 8), r(3, 6), r(3, 8), r(3, 6), t1=r(3, 3, 3, 3)), "Tucker cores come in pairs"),
        (lambda r: LoKr(w1=r(2, 2), w1a=r(2, 1), w1b=r(1, 2), w2=r(3, 3)), "both lokr_w1 and lokr_w1_a"),
        (lambda r: LoKr(w1=r(2, 2), w2a=r(3, 1)), "needs lokr_w2, or both"),
        (lambda r: LoKr(w1=r(2, 2), w2a=r(3, 2), w2b=r(1, 3)), r"lokr_w2_a \[3, 2\] and lokr_w2_b \[1, 3\]"),
        (lambda r: Full(), "found neither"),
        (lambda r: Full(diff=r(4, 3), diff_b=r(5)), r"diff \[4, 3\] and diff_b \[5\]"),
    ],
)
def test_construction_errors_name_the_culprit(build, message: str) -> None:
    with pytest.raises(LoraShapeError, match=message):
        build(_rand())


def test_alpha_must_be_a_finite_scalar() -> None:
    r = _rand()
    with pytest.raises(LoraFormatError, match="finite"):
        LoRA(down=r(4, 10), up=r(12, 4), alpha=float("nan"))
    with pytest.raises(LoraFormatError, match=r"scalar.*\[2\]"):
        LoRA(down=r(4, 10), up=r(12, 4), alpha=torch.ones(2))


def test_repr_shows_shapes_not_values() -> None:
    r = _rand()
    text = repr(LoRA(down=r(4, 10), up=r(12, 4).half(), alpha=4.0))
    assert text == "LoRA(down=[4, 10] float32, up=[12, 4] float16, alpha=4.0)"


# --- real files ---------------------------------------------------------------------------------------------------


@needs_fixtures
def test_real_lokr_file_builds_clip_fc1_delta() -> None:
    sd, _ = load_state_dict(REAL_LORAS / "smart_falcon_4_lokr.safetensors")
    prefix = "lora_te_text_model_encoder_layers_0_mlp_fc1"
    lokr = LoKr(
        w1a=sd[f"{prefix}.lokr_w1_a"],
        w1b=sd[f"{prefix}.lokr_w1_b"],
        w2a=sd[f"{prefix}.lokr_w2_a"],
        w2b=sd[f"{prefix}.lokr_w2_b"],
        alpha=sd[f"{prefix}.alpha"],
    )
    assert lokr.rank == sd[f"{prefix}.lokr_w2_b"].shape[0]
    assert lokr.scale == pytest.approx(float(sd[f"{prefix}.alpha"]) / lokr.rank)
    delta = lokr.delta_weight((3072, 768))  # CLIP-L mlp.fc1
    assert delta.dtype == torch.float32 and bool(torch.isfinite(delta).all()) and delta.abs().max() > 0


@needs_fixtures
def test_real_diffusers_lora_builds_to_k_delta() -> None:
    sd, _ = load_state_dict(REAL_LORAS / "diffusers_pr8283_sd15_pokemon.safetensors")
    prefix = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.lora"
    lora = LoRA(down=sd[f"{prefix}.down.weight"], up=sd[f"{prefix}.up.weight"])
    weight = torch.randn(320, 320, generator=torch.Generator().manual_seed(0)).half()
    x = torch.randn(2, 320, generator=torch.Generator().manual_seed(1)).half()
    base = F.linear(x, weight)
    got = bypass_forward(lora, x, base, 1.0, kind="linear")
    expected = F.linear(x, merged_weight(weight, lora, 1.0))
    torch.testing.assert_close(got.float(), expected.float(), **TOLERANCE[torch.float16])
