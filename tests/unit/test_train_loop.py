"""The training loop (``lora_math.train.loop``) on a toy denoiser: a frozen linear "model" with one LoRA side path.

The toy's noise schedule is ``x = x0 + σ·noise`` (a VE schedule, as ComfyUI's ε models use); its denoiser returns
``x - σ·f(x)`` where ``f`` is a frozen Linear plus the trainable low-rank side path, so the LoRA must learn to predict
the noise of a fixed dataset. Everything the ComfyUI side supplies (denoise, sampling, callbacks) is supplied here.
"""

from __future__ import annotations

import math

import pytest
import torch

from lora_math.train import LoraFactors, loop

DIM = 8
KEY = "toy.weight"


class ToySampling:
    sigma_min = 0.05
    sigma_max = 2.0

    def percent_to_sigma(self, percent: float) -> float:
        return self.sigma_max + (self.sigma_min - self.sigma_max) * percent

    def noise_scaling(self, sigma, noise, latent_image):
        return latent_image + sigma * noise


def toy(seed: int = 0, rank: int = 2, alpha: float = 2.0):
    torch.manual_seed(1234)  # the frozen base is the same for every seed
    base = torch.nn.Linear(DIM, DIM, bias=False).requires_grad_(False)
    factors = LoraFactors({KEY: (DIM, DIM)}, rank, alpha, seed=seed)

    def denoise(x, sigma, conds):
        flat = x.flatten(1)
        predicted = factors.apply(KEY, flat, base(flat))
        return (flat - sigma.view(-1, 1) * predicted).view_as(x)

    return factors, denoise


def items(n: int = 6, offset: float = 0.0) -> list[loop.Item]:
    gen = torch.Generator().manual_seed(7)
    return [
        loop.Item(torch.randn(1, DIM, 1, 1, generator=gen) + offset, conds=None, caption=f"c{i}", bucket=(8, 8))
        for i in range(n)
    ]


def settings(**kw) -> loop.Settings:
    base = dict(rank=2, alpha=2.0, steps=60, learning_rate=3e-2, batch_size=2, seed=3, min_snr_gamma=0.0)
    return loop.Settings(**(base | kw))


def run(s: loop.Settings, **kw):
    factors, denoise = toy(s.seed, s.rank, s.alpha)
    data = kw.pop("data", None) or items()
    return factors, loop.train(factors, s, data, denoise, ToySampling(), "eps", "toy", **kw)


def test_loss_decreases_and_every_step_is_recorded():
    _, lora = run(settings())
    assert lora.step == 60 and len(lora.loss_history) == 60 and not lora.interrupted
    first, last = sum(lora.loss_history[:10]) / 10, sum(lora.loss_history[-10:]) / 10
    assert last < 0.8 * first, (first, last)
    assert set(lora.modules) == {KEY} and lora.modules[KEY][0].shape == (2, DIM)
    assert lora.optimizer_state and lora.settings["steps"] == 60


def test_same_seed_same_factors_other_seed_other_factors():
    a, b, c = (run(settings(seed=seed))[1] for seed in (3, 3, 4))
    assert all(torch.equal(x, y) for x, y in zip(a.modules[KEY], b.modules[KEY], strict=True))
    assert a.loss_history == b.loss_history
    assert not torch.equal(a.modules[KEY][1], c.modules[KEY][1])


def test_should_stop_keeps_the_lora_so_far():
    seen = []
    calls = loop.Callbacks(should_stop=lambda step: step == 5, on_step=lambda step, loss, f: seen.append(step))
    _, lora = run(settings(), callbacks=calls)
    assert lora.interrupted and lora.step == 5 and len(lora.loss_history) == 5
    assert seen == [1, 2, 3, 4, 5]


def test_divergence_names_the_learning_rate():
    with pytest.raises(FloatingPointError, match=r"^learning_rate: the loss became"):
        run(settings(learning_rate=1e20, steps=20))


def test_after_backward_sees_the_factor_gradients_before_the_step():
    grads = []
    calls = loop.Callbacks(after_backward=lambda g: grads.append([t.clone() for t in g]))
    run(settings(steps=3), callbacks=calls)
    assert len(grads) == 3 and all(len(g) == 2 for g in grads)  # down and up of the one layer
    assert grads[0][0].shape == (2, DIM) and grads[0][1].shape == (DIM, 2)
    assert float(grads[0][1].abs().sum()) > 0  # up starts at zero, so its gradient is what moves it first


def test_after_backward_can_rewrite_the_gradients():
    # The data-parallel seam: zeroing the gradients there must leave the factors where they started.
    factors, lora = run(settings(steps=4), callbacks=loop.Callbacks(after_backward=lambda g: [t.zero_() for t in g]))
    assert float(lora.modules[KEY][1].abs().max()) == 0.0  # up stays zero (AdamW with zero grads: decay only)


def test_prior_loss_is_added_with_its_weight():
    # One step from the same start: the recorded loss is L_concept + w · L_class, linear in w.
    class_data = items(4, offset=3.0)
    losses = [run(settings(steps=1, prior_weight=w), class_items=class_data)[1].loss_history[0] for w in (0, 1, 2)]
    assert losses[1] > losses[0]
    assert math.isclose(losses[2] - losses[1], losses[1] - losses[0], rel_tol=1e-5)


def test_resume_continues_the_step_count_and_history():
    _, first = run(settings(steps=20))
    _, resumed = run(settings(steps=30), resume=first)
    assert resumed.step == 30 and len(resumed.loss_history) == 30
    assert resumed.loss_history[:20] == first.loss_history
    assert sum(resumed.loss_history[-5:]) < sum(first.loss_history[:5])


def test_resume_with_other_rank_names_resume():
    _, first = run(settings(steps=2))
    with pytest.raises(ValueError, match=r"^resume: .*rank 4"):
        run(settings(rank=4, alpha=4.0, steps=4), resume=first)


def test_pick_draws_one_bucket_per_batch():
    import random

    data = items(3) + [loop.Item(torch.zeros(1, DIM, 2, 2), None, "big", (16, 16)) for _ in range(3)]
    rng = random.Random(0)
    for _ in range(20):
        batch = loop.pick(data, 2, rng)
        assert len({i.bucket for i in batch}) == 1


def test_working_copies_in_the_model_dtype_train_the_fp32_masters():
    """A bf16 model: the layers run on bf16 working copies (scale folded into up), the optimizer steps fp32 masters."""
    s = settings(steps=60)
    torch.manual_seed(1234)
    base = torch.nn.Linear(DIM, DIM, bias=False).requires_grad_(False).to(torch.bfloat16)
    factors = LoraFactors({KEY: (DIM, DIM)}, s.rank, s.alpha, seed=s.seed, compute_dtype=torch.bfloat16)

    def denoise(x, sigma, conds):
        flat = x.flatten(1).to(torch.bfloat16)
        predicted = factors.apply(KEY, flat, base(flat)).float()
        return (x.flatten(1) - sigma.view(-1, 1) * predicted).view_as(x)

    lora = loop.train(factors, s, items(), denoise, ToySampling(), "eps", "toy", dtype=torch.bfloat16)
    first, last = sum(lora.loss_history[:10]) / 10, sum(lora.loss_history[-10:]) / 10
    assert last < 0.8 * first, (first, last)
    assert factors.up[KEY].dtype == torch.float32 and factors.work_up[KEY].dtype == torch.bfloat16
    # the working copies follow the masters: down as it is, up times the scale
    assert torch.equal(factors.work_down[KEY], factors.down[KEY].detach().to(torch.bfloat16))
    assert torch.equal(factors.work_up[KEY], (factors.up[KEY].detach() * factors.scale).to(torch.bfloat16))


def test_the_fold_keeps_the_gradient_of_up():
    """d loss / d up through ``scale · up`` in the working copy: the masters get exactly the unfolded gradient."""
    factors = LoraFactors({KEY: (DIM, DIM)}, 2, 6.0, seed=1)  # scale 3
    with torch.no_grad():
        factors.up[KEY].normal_()
    factors.refresh()
    x = torch.randn(4, DIM, generator=torch.Generator().manual_seed(2))
    factors.apply(KEY, x, torch.zeros(4, DIM)).square().sum().backward()
    down_grad, up_grad = (g.clone() for g in factors.gather_grads())
    down, up = factors.down[KEY].detach().requires_grad_(True), factors.up[KEY].detach().requires_grad_(True)
    (3.0 * (x @ down.t()) @ up.t()).square().sum().backward()
    assert torch.allclose(down_grad, down.grad, rtol=1e-5) and torch.allclose(up_grad, up.grad, rtol=1e-5)
    assert factors.work_up[KEY].grad is None  # cleared for the next step


def _grouped_pair(groups):
    shapes = {"q": (DIM, DIM), "k": (DIM, DIM), "v": (DIM, DIM)}
    alone, shared = (LoraFactors(shapes, 2, 4.0, seed=5, groups=g) for g in ((), groups))
    with torch.no_grad():
        for f in (alone, shared):
            for key in shapes:
                f.up[key].copy_(torch.randn(DIM, 2, generator=torch.Generator().manual_seed(ord(key))))
            f.refresh()
    return alone, shared


@pytest.mark.parametrize("same_input", [True, False])
def test_layers_sharing_an_input_share_one_down_projection_with_the_same_result(same_input):
    """q/k/v grouped: one down-projection for the three, the same outputs and master gradients as three (and a
    wrong grouping, different inputs, is still right)."""
    alone, shared = _grouped_pair([["q", "k", "v"]])
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, DIM, generator=gen)
    inputs = {"q": x, "k": x, "v": x} if same_input else {k: torch.randn(4, DIM, generator=gen) for k in "qkv"}
    results = []
    for f in (alone, shared):
        outs = [f.apply(k, inputs[k], torch.ones(4, DIM)) for k in "qkv"]
        sum(o.square().sum() for o in outs).backward()
        results.append((outs, [g.clone() for g in f.gather_grads()]))
    (outs_a, grads_a), (outs_s, grads_s) = results
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(outs_a, outs_s, strict=True))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads_a, grads_s, strict=True))
    assert len(shared.leaves()) == 4 and len(alone.leaves()) == 6  # one shared down + three ups
    assert all(leaf.grad is None for leaf in shared.leaves())


def test_shared_down_projection_follows_the_masters():
    _, shared = _grouped_pair([["q", "k", "v"]])
    with torch.no_grad():
        shared.down["k"].add_(1.0)
    shared.refresh()
    assert torch.equal(shared.work_down["k"], shared.down["k"].detach())
    x = torch.randn(2, DIM, generator=torch.Generator().manual_seed(4))
    expected = x @ shared.down["k"].detach().t() @ (shared.up["k"].detach() * shared.scale).t()
    assert torch.allclose(shared.apply("k", x, torch.zeros(2, DIM)), expected, atol=1e-6)


def test_a_layer_named_in_two_groups_joins_the_first():
    alone, shared = _grouped_pair([["q", "k"], ["k", "v"]])
    assert len(shared.leaves()) == 5  # q+k share one down; v keeps its own; three ups
    x = torch.randn(3, DIM, generator=torch.Generator().manual_seed(6))
    for key in "qkv":
        assert torch.allclose(alone.apply(key, x, torch.zeros(3, DIM)), shared.apply(key, x, torch.zeros(3, DIM)))
