"""The training loop, pure torch: optimizer, LR schedule, gradient scaler, prior-preservation mix, stop, resume.

Like minGPT's trainer, it knows nothing of the model it trains. The caller supplies a ``denoise(x, sigma, conds)``
callable (the model's x̂0 estimate for a noised batch, with the LoRA side paths already attached to it: they run
``factors.apply``, on the working copies the loop keeps in step with the fp32 masters), the model's
noise schedule (``sampling``: ComfyUI's ``model_sampling`` has exactly this shape) and callbacks for stopping and
progress. The ComfyUI side (``nodes/train/engine.py``) supplies those; the unit tier drives the same loop on a toy
denoiser.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from ..save.result import LoomLoRA
from . import lr as lr_mod
from .factors import LoraFactors
from .objective import denoising_loss, sample_progress

log = logging.getLogger("lora_loom")


@dataclass
class Settings:
    """What one training run is asked for (the node's inputs; saved as ``ss_*`` metadata)."""

    rank: int = 16
    alpha: float = 16.0
    target: str = "attention"
    steps: int = 500
    learning_rate: float = 1e-4
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    optimizer: str = "adamw"
    batch_size: int = 1
    resolution: int = 512
    seed: int = 0
    caption_dropout: float = 0.0
    noise_offset: float = 0.0
    min_snr_gamma: float = 5.0
    gradient_checkpointing: bool = False
    prior_weight: float = 1.0
    preview_every: int = 0
    compile: str = "off"  # torch.compile of the model for the run: off / default / max-autotune
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "extra"} | self.extra


@dataclass
class Item:
    """One training example: its latent (CPU, fp32) and the conditioning ``denoise`` reads for it (opaque here)."""

    latent: Tensor
    conds: Any
    caption: str
    bucket: tuple[int, int]
    conds_empty: Any = None  # the empty caption's conditioning, for caption dropout


class Sampling(Protocol):
    """A model's noise schedule, as ComfyUI's ``model_sampling`` objects provide it."""

    sigma_min: Tensor | float
    sigma_max: Tensor | float

    def percent_to_sigma(self, percent: float) -> float | Tensor: ...
    def noise_scaling(self, sigma: Tensor, noise: Tensor, latent_image: Tensor) -> Tensor: ...


Denoise = Callable[[Tensor, Tensor, list], Tensor]  # (x [B, …], sigma [B], conds per sample) -> x̂0 [B, …]


@dataclass
class Callbacks:
    """How the caller steers and watches the loop.

    should_stop(step): checked before each step (ComfyUI's interrupt); True ends the run and keeps the LoRA so far.
    on_step(step, loss, factors): after each optimizer step (progress bar, previews).
    after_backward(grads): after the backward pass, before the optimizer reads the gradients — the seam where data
    parallel training all-reduces them.
    """

    should_stop: Callable[[int], bool] = lambda step: False
    on_step: Callable[[int, float, LoraFactors], None] | None = None
    after_backward: Callable[[list[Tensor]], None] | None = None


def pick(items: Sequence[Item], batch_size: int, rng: random.Random) -> list[Item]:
    """One batch from one bucket (buckets weighted by size); with replacement when a bucket is smaller."""
    by_bucket: dict = {}
    for item in items:
        by_bucket.setdefault(item.bucket, []).append(item)
    groups = sorted(by_bucket.values(), key=lambda g: g[0].bucket)
    group = rng.choices(groups, weights=[len(g) for g in groups])[0]
    if len(group) >= batch_size:
        return rng.sample(group, batch_size)
    return [rng.choice(group) for _ in range(batch_size)]


def batch_loss(
    batch: Sequence[Item],
    settings: Settings,
    prediction: str,
    sampling: Sampling,
    denoise: Denoise,
    device: torch.device,
    gen: torch.Generator,
    rng: random.Random,
) -> Tensor:
    """The denoising loss of one batch: noise it at sampled timesteps on the model's own schedule (and shift)."""
    x0 = torch.cat([i.latent for i in batch]).to(device)
    conds = []
    for item in batch:
        dropped = item.conds_empty is not None and rng.random() < settings.caption_dropout
        conds.append(item.conds_empty if dropped else item.conds)
    noise = torch.randn(x0.shape, generator=gen).to(device)
    if settings.noise_offset:
        noise = noise + settings.noise_offset * torch.randn(x0.shape[0], x0.shape[1], 1, 1, generator=gen).to(device)
    progress = sample_progress(len(batch), prediction, gen)
    sigma = torch.tensor([float(sampling.percent_to_sigma(1.0 - float(t))) for t in progress], device=device)
    sigma = sigma.clamp(min=float(sampling.sigma_min), max=float(sampling.sigma_max))
    x = sampling.noise_scaling(sigma.view(-1, *[1] * (x0.ndim - 1)), noise, x0)
    denoised = denoise(x, sigma, conds)
    return denoising_loss(denoised, x0, sigma, prediction, settings.min_snr_gamma or None)


def train(
    factors: LoraFactors,
    settings: Settings,
    items: Sequence[Item],
    denoise: Denoise,
    sampling: Sampling,
    prediction: str,
    arch: str,
    *,
    class_items: Sequence[Item] = (),
    resume: LoomLoRA | None = None,
    dtype: torch.dtype = torch.float32,
    callbacks: Callbacks | None = None,
) -> LoomLoRA:
    """Train ``factors`` (already attached to the model ``denoise`` runs) for ``settings.steps`` steps.

    Returns the LoRA so far when ``should_stop`` says so (``interrupted=True``); raises FloatingPointError naming
    ``learning_rate`` when the loss diverges. ``dtype`` is the model's compute dtype: fp16 on CUDA gets a gradient
    scaler. Seeds: factors by ``settings.seed``; noise and batches by ``seed + start step`` (a resumed run draws
    afresh from where it starts).
    """
    s = settings
    calls = callbacks or Callbacks()
    device = factors.device
    params = factors.parameters()
    optimizer = torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=1e-2, fused=device.type == "cuda")
    start = 0
    if resume is not None:
        factors.load(resume.modules)
        if resume.optimizer_state:  # cloned: tensors read under inference mode cannot be updated in place
            optimizer.load_state_dict(cpu_state(resume.optimizer_state))
        start = resume.step
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_mod.lr_lambda(s.lr_schedule, s.steps, s.warmup_steps), last_epoch=start - 1
    )
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 and device.type == "cuda" else None
    gen = torch.Generator().manual_seed(s.seed + start)
    rng = random.Random(s.seed * 7919 + start)
    history = list(resume.loss_history) if resume is not None else []
    done = 0
    interrupted = False
    for step in range(start, s.steps):
        if calls.should_stop(step):
            interrupted = True
            log.warning("[LoRA Loom] training interrupted at step %d of %d: keeping the LoRA so far", step, s.steps)
            break
        loss = batch_loss(pick(items, s.batch_size, rng), s, prediction, sampling, denoise, device, gen, rng)
        if class_items:  # prior preservation (DreamBooth): the class images' loss, weighted, in the same step
            prior = batch_loss(pick(class_items, s.batch_size, rng), s, prediction, sampling, denoise, device, gen, rng)
            loss = loss + s.prior_weight * prior
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"learning_rate: the loss became {value} at step {step + 1}; lower the learning rate "
                "(the LoRA so far was not saved: it diverged)"
            )
        (scaler.scale(loss) if scaler is not None else loss).backward()
        grads = factors.gather_grads()  # the working copies' gradients onto the fp32 masters
        if calls.after_backward is not None:
            calls.after_backward(grads)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        factors.refresh()
        scheduler.step()
        history.append(value)
        done += 1
        if calls.on_step is not None:
            calls.on_step(step + 1, value, factors)
    return LoomLoRA(
        modules=factors.snapshot(),
        alpha=s.alpha,
        rank=s.rank,
        arch=arch,
        settings=s.as_dict(),
        step=start + done,
        loss_history=history,
        optimizer_state=cpu_state(optimizer.state_dict()),
        interrupted=interrupted,
    )


def cpu_state(state: dict) -> dict:
    """A detached CPU copy of an optimizer state dict (nested dicts and lists of tensors)."""

    def cpu(v):
        if isinstance(v, torch.Tensor):
            return v.detach().cpu().clone()
        if isinstance(v, dict):
            return {k: cpu(x) for k, x in v.items()}
        if isinstance(v, list):
            return [cpu(x) for x in v]
        return v

    return cpu(state)
