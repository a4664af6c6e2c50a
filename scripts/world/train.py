"""Training the world model on the CPU: the VAE on renders, then the UNet and the text embeddings on their latents
and captions (ε-prediction on SD1.5's noise schedule, as ComfyUI samples it). Seeded; each phase is given a step
count, so a run is the same run on any machine (only its duration differs)."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

try:
    from . import draw, models
except ImportError:
    import draw
    import models


@dataclass
class Plan:
    side: int = 64
    images: int = 6000
    vae_steps: int = 400
    vae_batch: int = 24
    vae_lr: float = 1e-3
    vae_noise: float = 0.05  # latent noise, relative to the latents' std
    vae_edges: bool = False
    vae_crop: int = 32  # the VAE is convolutional: it trains on crops (4× the samples per second at 32 of 64 px)
    unet_steps: int = 2500
    unet_batch: int = 64
    unet_lr: float = 4e-4
    text_lr: float = 1e-3
    uncond: float = 0.1  # captions dropped (for classifier-free guidance)
    bf16: bool = True  # CPU autocast to bf16 (1.45× on a CPU with AMX; the masters and the optimizer stay fp32)
    seed: int = 0


def log(message: str) -> None:
    print(f"[world] {message}", flush=True)


def dataset(count: int, seed: int, side: int) -> tuple[torch.Tensor, list[str], list[draw.Scene]]:
    """``count`` base-world renders as ``[N, 3, side, side]`` in [-1, 1], their captions and scenes."""
    scenes = draw.sample_scenes(count, seed)
    pixels = np.stack([draw.render(s, side) for s in scenes])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    return images, [draw.caption(s) for s in scenes], scenes


def _cosine(step: int, total: int, warmup: int = 20) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_vae(vae, images: torch.Tensor, plan: Plan) -> list[float]:
    """Reconstruction (L1 + MSE) of the renders through the latent mean, on crops that hold the shape three times
    in four, with the shape's (saturated) pixels weighted up: they are a few percent of an image, and without that
    the VAE learns the backgrounds long before it learns any colour. A little latent noise keeps the decoder
    tolerant of the UNet's imperfect latents."""
    g = torch.Generator().manual_seed(plan.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=plan.vae_lr, weight_decay=0.0)
    losses, t0 = [], time.perf_counter()
    for step in range(plan.vae_steps):
        for group in opt.param_groups:
            group["lr"] = plan.vae_lr * _cosine(step, plan.vae_steps)
        batch = _crops(images[torch.randint(len(images), (plan.vae_batch,), generator=g)], plan.vae_crop, g)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=plan.bf16):
            mean = vae.quant_conv(vae.encoder(batch))[:, :4].float()
            mean = mean + plan.vae_noise * mean.detach().std() * torch.randn(mean.shape, generator=g)
            out = vae.decoder(vae.post_quant_conv(mean)).float()
        chroma = batch.max(dim=1, keepdim=True).values - batch.min(dim=1, keepdim=True).values
        weight = 1 + 9 * (chroma > 0.3).float()
        err = out - batch
        loss = (weight * (err.abs() + err * err)).mean() + 1e-6 * mean.pow(2).mean()
        if plan.vae_edges:  # edges: the image's differences along x and y, where a shape's corners live
            for dim in (2, 3):
                loss = loss + (out.diff(dim=dim) - batch.diff(dim=dim)).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == plan.vae_steps - 1:
            log(f"vae step {step}: loss {np.mean(losses[-50:]):.4f} ({time.perf_counter() - t0:.0f} s)")
    return losses


def _crops(batch: torch.Tensor, side: int, g: torch.Generator) -> torch.Tensor:
    """One crop of ``side`` per image at a multiple of 8 px (the latent grid and the textures' period): three in
    four around the shape's centre (where the saturated pixels are), the rest anywhere."""
    full = batch.shape[-1]
    if side >= full:
        return batch
    cells = (full - side) // 8 + 1
    out = []
    for image in batch:
        y, x = (int(v) * 8 for v in torch.randint(cells, (2,), generator=g))
        chroma = image.max(dim=0).values - image.min(dim=0).values
        ys, xs = torch.nonzero(chroma > 0.3, as_tuple=True)
        if len(ys) and float(torch.rand((), generator=g)) < 0.75:
            cy, cx = float(ys.float().mean()), float(xs.float().mean())
            y = min(max(int(round((cy - side / 2) / 8)) * 8, 0), full - side)
            x = min(max(int(round((cx - side / 2) / 8)) * 8, 0), full - side)
        out.append(image[:, y : y + side, x : x + side])
    return torch.stack(out)


@torch.no_grad()
def encode(vae, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    return torch.cat([vae.quant_conv(vae.encoder(images[i : i + batch]))[:, :4] for i in range(0, len(images), batch)])


@torch.no_grad()
def normalise_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Rescale the VAE so that its latents × SD1.5's scale factor have unit std (what the UNet's noise schedule
    expects): the factor goes into the 1×1 convs on both sides of the latent, so encode∘decode is unchanged."""
    s = 1.0 / (models.SCALE_FACTOR * float(latents.std()))
    vae.quant_conv.weight[:4] *= s
    vae.quant_conv.bias[:4] *= s
    vae.post_quant_conv.weight /= s
    return latents * s


def alphas_cumprod() -> torch.Tensor:
    """SD1.5's schedule: scaled-linear betas 0.00085 → 0.012 over 1000 steps (ComfyUI's model_sampling for SD15)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


def train_unet(unet, text, latents: torch.Tensor, ids: torch.Tensor, empty: torch.Tensor, plan: Plan) -> list[float]:
    """ε-prediction on ``latents × 0.18215`` with the captions' embeddings as context; ``plan.uncond`` of them
    replaced by the empty caption's."""
    g = torch.Generator().manual_seed(plan.seed + 1)
    x0_all = latents * models.SCALE_FACTOR
    abar = alphas_cumprod()
    params = [{"params": unet.parameters(), "lr": plan.unet_lr}, {"params": text.parameters(), "lr": plan.text_lr}]
    opt = torch.optim.AdamW(params, weight_decay=0.0)
    base_lr = [group["lr"] for group in opt.param_groups]
    losses, t0 = [], time.perf_counter()
    for step in range(plan.unet_steps):
        for group, lr in zip(opt.param_groups, base_lr, strict=True):
            group["lr"] = lr * _cosine(step, plan.unet_steps, warmup=50)
        pick = torch.randint(len(x0_all), (plan.unet_batch,), generator=g)
        x0, tokens = x0_all[pick], ids[pick].clone()
        drop = torch.rand(plan.unet_batch, generator=g) < plan.uncond
        tokens[drop] = empty
        t = torch.randint(0, 1000, (plan.unet_batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=plan.bf16):
            pred = unet(xt, t.float(), context=text(tokens)).float()
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if step % 100 == 0 or step == plan.unet_steps - 1:
            log(f"unet step {step}: loss {np.mean(losses[-100:]):.4f} ({time.perf_counter() - t0:.0f} s)")
    return losses


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def sample(unet, text, vae, ids: torch.Tensor, empty: torch.Tensor, steps: int = 20, cfg: float = 5.0, seed: int = 0):
    """DDIM (η = 0) with classifier-free guidance on the thin parts, for judging a run quickly; the tests sample
    the exported checkpoint with ComfyUI's own samplers. Returns ``uint8 [B, side, side, 3]``."""
    g = torch.Generator().manual_seed(seed)
    abar = alphas_cumprod()
    ts = torch.linspace(999, 0, steps).round().long()
    b = len(ids)
    side = 64 // 8
    x = torch.randn(b, 4, side, side, generator=g)
    cond, uncond = text(ids), text(empty.expand(b, -1))
    for i, t in enumerate(ts):
        eps = unet(torch.cat([x, x]), t.float().expand(2 * b), context=torch.cat([cond, uncond]))
        eps = eps[b:] + cfg * (eps[:b] - eps[b:])
        a = abar[t]
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        a_next = abar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    pixels = vae.decoder(vae.post_quant_conv(x / models.SCALE_FACTOR))
    return ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
