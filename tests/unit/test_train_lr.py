"""lora_math.train.lr: LR factors against their closed forms, the warmup convention, LambdaLR with a real AdamW, errors."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from lora_math.train.lr import LR_SCHEDULES, LRLambda, lr_factor, lr_lambda

pytestmark = pytest.mark.unit


def closed_form(schedule: str, s: int, total: int, warmup: int, floor: float) -> float:
    """The documented formulas, written out independently."""
    if s < warmup:
        return (s + 1) / (warmup + 1)
    if schedule == "constant" or total - 1 == warmup:
        return 1.0
    t = (s - warmup) / (total - 1 - warmup)
    if schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    return floor + (1 - floor) * (1 - t)


@pytest.mark.parametrize("schedule", LR_SCHEDULES)
@pytest.mark.parametrize(
    ("total", "warmup", "floor"), [(1, 0, 0.0), (2, 1, 0.0), (10, 0, 0.0), (10, 3, 0.1), (37, 5, 0.25)]
)
def test_factors_match_the_closed_forms(schedule, total, warmup, floor):
    got = [lr_factor(schedule, s, total, warmup, floor) for s in range(total)]
    want = [closed_form(schedule, s, total, warmup, floor) for s in range(total)]
    assert got == pytest.approx(want, abs=1e-12)


def test_schedules_by_hand():
    assert LR_SCHEDULES == ("constant", "cosine", "linear")
    assert [lr_factor("constant", s, 5) for s in range(5)] == [1.0] * 5
    assert [lr_factor("linear", s, 5) for s in range(5)] == pytest.approx([1, 0.75, 0.5, 0.25, 0])
    assert [lr_factor("cosine", s, 5) for s in range(5)] == pytest.approx(
        [1, (1 + 0.5**0.5) / 2, 0.5, (1 - 0.5**0.5) / 2, 0]
    )
    # min_factor: where cosine and linear land on the last step; halfway is the midpoint
    assert lr_factor("cosine", 4, 5, min_factor=0.2) == pytest.approx(0.2)
    assert lr_factor("cosine", 2, 5, min_factor=0.2) == pytest.approx(0.6)
    assert lr_factor("linear", 2, 5, min_factor=0.2) == pytest.approx(0.6)
    assert lr_factor("constant", 4, 5, min_factor=0.2) == 1.0


@pytest.mark.parametrize("schedule", LR_SCHEDULES)
def test_warmup_convention(schedule):
    """Step s < w runs at (s + 1) / (w + 1): never 0, step w is the first at 1, and the ramp is evenly spaced."""
    warmup, total = 4, 20
    ramp = [lr_factor(schedule, s, total, warmup) for s in range(warmup + 1)]
    assert ramp == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert lr_factor(schedule, 0, total, warmup) > 0
    # warmup leaving one step: that step is at the peak, nothing decays
    assert [lr_factor(schedule, s, 3, 2) for s in range(3)] == pytest.approx([1 / 3, 2 / 3, 1.0])


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decay_is_monotone_and_bounded(schedule):
    values = np.array([lr_factor(schedule, s, 200, 20, 0.05) for s in range(200)])
    assert np.all(np.diff(values[:21]) > 0) and np.all(np.diff(values[20:]) < 0)
    assert values.max() == 1.0 and values[-1] == pytest.approx(0.05) and values[20:].min() >= 0.05 - 1e-12


def test_lambda_is_lr_factor_and_holds_past_the_end():
    fn = lr_lambda("cosine", 10, 2, 0.1)
    assert isinstance(fn, LRLambda)
    assert [fn(s) for s in range(10)] == [lr_factor("cosine", s, 10, 2, 0.1) for s in range(10)]
    assert fn(10) == fn(25) == lr_factor("cosine", 9, 10, 2, 0.1)


@pytest.mark.parametrize(("schedule", "warmup"), [("constant", 3), ("cosine", 0), ("cosine", 4), ("linear", 2)])
def test_lambdalr_drives_adamw(schedule, warmup):
    """The LR AdamW actually uses at each step is base_lr × lr_factor, and the parameters move accordingly."""
    torch.manual_seed(0)
    base, total = 1e-2, 12
    weight = torch.nn.Parameter(torch.randn(4, 3))
    optimizer = torch.optim.AdamW([weight], lr=base, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(schedule, total, warmup, 0.1))
    used = []
    for step in range(total):
        used.append(optimizer.param_groups[0]["lr"])
        before = weight.detach().clone()
        optimizer.zero_grad()
        (weight**2).sum().backward()
        optimizer.step()
        scheduler.step()
        # Adam's first step moves each weight by exactly lr (m/sqrt(v) = ±1 with bias correction, eps aside)
        if step == 0:
            assert (before - weight.detach()).abs() == pytest.approx(torch.full((4, 3), used[0]), rel=1e-4)
    want = [base * lr_factor(schedule, s, total, warmup, 0.1) for s in range(total)]
    assert used == pytest.approx(want, rel=1e-12)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(want[-1])  # the extra scheduler.step() holds the last


def test_lambdalr_state_round_trips():
    """A resumed LambdaLR gets the schedule's settings back from its state dict (the lambda is a callable object)."""
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([weight], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda("linear", 50, 5, 0.2))
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    fresh_optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    fresh = torch.optim.lr_scheduler.LambdaLR(fresh_optimizer, lr_lambda("constant", 3))
    fresh.load_state_dict(state)
    assert fresh.lr_lambdas[0](7) == lr_factor("linear", 7, 50, 5, 0.2)
    assert fresh.lr_lambdas[0] == LRLambda("linear", 50, 5, 0.2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("cosinus", 0, 10), "lr_schedule: 'cosinus' is not a schedule; use one of constant, cosine, linear"),
        (("Cosine", 0, 10), "lr_schedule: 'Cosine'"),
        (("cosine", 0, 0), "steps: must be a whole number of at least 1, got 0"),
        (("cosine", 0, 10.0), "steps: must be a whole number"),
        (("cosine", 0, True), "steps: must be a whole number"),
        (("cosine", 0, 10, -1), "warmup_steps: must be a whole number of at least 0, got -1"),
        (("cosine", 0, 10, 10), "warmup_steps: 10 warmup steps leave no step at the full learning rate"),
        (
            ("cosine", 0, 10, 12),
            "warmup_steps: 12 warmup steps leave no step at the full learning rate in a 10-step run; use at most 9",
        ),
        (("cosine", 0, 10, 0, 1.5), "min_factor: must be a number in 0..1, got 1.5"),
        (("cosine", 0, 10, 0, -0.1), "min_factor"),
        (("cosine", 0, 10, 0, math.nan), "min_factor"),
        (("cosine", -1, 10), "step: must be a whole number of at least 0, got -1"),
        (("cosine", 10, 10), "step: 10 is past the last step (9) of a 10-step run"),
    ],
)
def test_errors_name_the_input(args, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        lr_factor(*args)


def test_lambda_validates_when_made():
    with pytest.raises(ValueError, match="^warmup_steps: 5 warmup steps"):
        lr_lambda("linear", 5, 5)
    with pytest.raises(ValueError, match="^lr_schedule"):
        lr_lambda("step", 5)
    assert lr_lambda("linear", np.int64(5), np.int32(1)).total_steps == 5  # numpy integers are whole numbers
