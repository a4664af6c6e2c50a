"""Training a LoRA on the MODEL already in the graph: the ComfyUI side (model, conditioning, loop, progress).

The frozen base runs in its own dtype; only the targeted layers get a differentiable low-rank side path
(``lora_math.train.factors``, hooked on by ``comfy_bridge.train_hooks``), so nothing rebuilds ``W + ΔW`` and no
second copy of the model exists. Latents and text embeddings are computed once per image/caption (cached by content hash across
runs). fp16 models train with a gradient scaler; the LoRA factors are fp32 masters.

ComfyUI runs nodes under ``torch.inference_mode``; tensors made there cannot be saved for backward, so the loop
runs with inference mode off (and ``train_hooks`` re-makes parameters that were created as inference tensors).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import logging
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import comfy.model_base
import comfy.model_management
import comfy.utils
import torch
import torch.nn.functional as F

from ...lora_math.names import families
from ...lora_math.train import LoomLoRA, LoraFactors
from ...lora_math.train import buckets as buckets_mod
from ...lora_math.train import lr as lr_mod
from ...lora_math.train.factors import lora_delta
from ...lora_math.train.objective import denoising_loss, sample_progress
from .. import comfy_bridge

log = logging.getLogger("lora_loom")

# --- what to train -------------------------------------------------------------------------------------------------

TARGETS = ("attention", "attention_mlp")
# Which layers each target preset trains, by the layer names of ComfyUI's model classes (one pattern per family
# group: FLUX.1, FLUX.2 and Chroma share BFL names, SD3 and SD3.5 the MMDiT ones). FLUX single blocks fuse q, k, v
# and the MLP input into ``linear1``, so "attention" trains all of it (as sd-scripts and musubi-tuner do). FLUX.2's
# modulation is shared outside the blocks and Z-Image's refiners run before the main layers: neither is trained,
# as musubi-tuner's and OneTrainer's default Z-Image and FLUX.2 targets leave them out.
_PATTERNS = {
    "unet": {
        "attention": r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$",
        "attention_mlp": r"\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2))$",
    },
    "flux": {
        "attention": r"(double_blocks\.\d+\.(img|txt)_attn\.(qkv|proj)|single_blocks\.\d+\.(linear1|linear2))$",
        "attention_mlp": r"(double_blocks\.\d+\.(img_attn\.(qkv|proj)|txt_attn\.(qkv|proj)|img_mlp\.[02]|txt_mlp\.[02])"
        r"|single_blocks\.\d+\.(linear1|linear2))$",
    },
    "sd3": {
        "attention": r"joint_blocks\.\d+\.(x_block|context_block)\.attn2?\.(qkv|proj)$",
        "attention_mlp": r"joint_blocks\.\d+\.(x_block|context_block)\.(attn2?\.(qkv|proj)|mlp\.fc[12])$",
    },
    "z_image": {
        "attention": r"^layers\.\d+\.attention\.(qkv|out)$",
        "attention_mlp": r"^layers\.\d+\.(attention\.(qkv|out)|feed_forward\.w[123])$",
    },
    "qwen_image": {
        "attention": r"^transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_[qkv]_proj|to_add_out)$",
        "attention_mlp": r"^transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_[qkv]_proj|to_add_out)"
        r"|(img|txt)_mlp\.net\.(0\.proj|2))$",
    },
}
_PATTERN_GROUP = {
    "sd15": "unet", "sd2": "unet", "sdxl": "unet", "flux": "flux", "chroma": "flux", "flux2": "flux",
    "flux2_klein_4b": "flux", "flux2_klein_9b": "flux", "sd3": "sd3", "sd35_large": "sd3", "sd35_medium": "sd3",
    "z_image": "z_image", "qwen_image": "qwen_image",
}  # fmt: skip
_PREDICTION = {
    comfy.model_base.ModelType.EPS: "eps",
    comfy.model_base.ModelType.V_PREDICTION: "v",
    comfy.model_base.ModelType.FLOW: "flow",  # SD3, Z-Image
    comfy.model_base.ModelType.FLUX: "flow",  # FLUX.1/.2, Chroma, Qwen-Image: flow matching with their shift
}


# The input layer that reads the text encoder's embeddings, per family group: its width must match the CLIP's.
_TEXT_INPUT = {"flux": "txt_in", "sd3": "context_embedder", "z_image": "cap_embedder.1", "qwen_image": "txt_in"}
# Distilled-guidance models (FLUX.1/FLUX.2 dev) are trained at guidance 1, as ai-toolkit trains FLUX.1 dev, and
# sampled without CFG; every other model gets the guidance its ``extra_conds`` gives a plain prompt (Chroma: 0).
TRAIN_GUIDANCE = 1.0


def distilled_guidance(base_model) -> bool:
    """True for a model with a guidance embedding (FLUX.1 dev, FLUX.2 dev; not schnell, klein or Chroma)."""
    return bool(getattr(getattr(base_model.diffusion_model, "params", None), "guidance_embed", False))


def family(base_model) -> tuple[str, str]:
    """(model family, prediction) of a ComfyUI BaseModel; ValueError names ``model``."""
    arch = arch_of(base_model)
    prediction = _PREDICTION.get(base_model.model_type)
    if prediction is None:
        raise ValueError(f"model: prediction type {base_model.model_type.name} is not supported for training")
    return arch, prediction


def arch_of(base_model) -> str:
    """The family (``lora_math.families``) of a ComfyUI BaseModel, from its weight names and shapes; ValueError
    names ``model`` for a family LoRA Loom does not train or save LoRAs for."""
    keys = {f"diffusion_model.{k}": tuple(v.shape) for k, v in base_model.diffusion_model.state_dict().items()}
    arch = families.from_model_keys(keys)
    if arch not in _PATTERN_GROUP:
        raise ValueError(
            f"model: {type(base_model).__name__} ({arch}) is not a model family LoRA Loom trains or saves LoRAs for "
            "(SD1.x/SD2, SDXL, FLUX.1, FLUX.2, Chroma, SD3/SD3.5, Z-Image, Qwen-Image); load one of those"
        )
    return arch


def target_modules(base_model, arch: str, target: str) -> dict[str, torch.nn.Module]:
    """ComfyUI weight key (``diffusion_model.….weight``) -> Linear module, for the chosen target preset."""
    if target not in TARGETS:
        raise ValueError(f"target: {target!r} is not one of {', '.join(TARGETS)}")
    pattern = re.compile(_PATTERNS[_PATTERN_GROUP[arch]][target])
    found = {
        f"diffusion_model.{name}.weight": m
        for name, m in base_model.diffusion_model.named_modules()
        if isinstance(m, torch.nn.Linear) and pattern.search(name)
    }
    if not found:
        raise ValueError(f"target: no {target} layers found in this {arch} model")
    return found


# --- the dataset ---------------------------------------------------------------------------------------------------


@dataclass
class Item:
    """One training example: its latent (CPU, fp32) and its model conditioning (per caption variant)."""

    latent: torch.Tensor
    conds: dict  # caption -> {cond name: ComfyUI CONDRegular…}
    caption: str
    bucket: tuple[int, int]


_latent_cache: collections.OrderedDict = collections.OrderedDict()
_text_cache: collections.OrderedDict = collections.OrderedDict()
_CACHE_SIZE = 512


def _remember(cache: collections.OrderedDict, key, make: Callable):
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = cache[key] = make()
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
    return value


def _fit(image: torch.Tensor, bucket: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
    """Resize to cover the bucket (never up) and centre-crop; returns (image [1,h,w,3], crop_top, crop_left)."""
    h, w = int(image.shape[0]), int(image.shape[1])
    top, left, scaled_h, scaled_w = buckets_mod.crop_box(h, w, *bucket)
    x = image.movedim(-1, 0)[None].float()
    if (scaled_h, scaled_w) != (h, w):
        x = F.interpolate(x, size=(scaled_h, scaled_w), mode="bicubic", antialias=True, align_corners=False)
    x = x[:, :, top : top + bucket[0], left : left + bucket[1]].clamp(0, 1)
    return x.movedim(1, -1), top, left


def encode_text(clip, caption: str):
    """(cross-attention tensor, extra dict) as CLIPTextEncode makes them, cached per CLIP and caption."""

    def make():
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(caption))
        return cond[0][0].detach().clone(), {k: v for k, v in cond[0][1].items()}

    return _remember(_text_cache, (id(clip.cond_stage_model), caption), make)


@torch.no_grad()
def prepare(
    images: Sequence[torch.Tensor], captions: Sequence[str], model, clip, vae, resolution: int, arch: str
) -> list[Item]:
    """Bucket, crop, VAE-encode and text-encode every image once (latents cached by content hash)."""
    if not images:
        return []
    base = model.model
    latent_channels = base.latent_format.latent_channels
    text_width = _text_width(base, arch)
    sizes = [(int(i.shape[0]), int(i.shape[1])) for i in images]
    buckets = {idx: b for b, ids in buckets_mod.assign_buckets(sizes, resolution).items() for idx in ids}
    items = []
    for index, (image, caption) in enumerate(zip(images, captions, strict=True)):
        bucket = buckets[index]
        digest = hashlib.sha256(image.float().cpu().numpy().tobytes()).hexdigest()

        def encode(image=image, bucket=bucket):
            pixels, top, left = _fit(image, bucket)
            latent = vae.encode(pixels[..., :3]).detach().float().cpu()
            return latent, top, left

        latent, top, left = _remember(_latent_cache, (id(vae.first_stage_model), digest, bucket), encode)
        if latent.shape[1] != latent_channels:
            raise ValueError(
                f"vae: it encodes to {latent.shape[1]}-channel latents, but this {arch} model works on "
                f"{latent_channels} channels; connect the VAE that belongs to the model"
            )
        latent = base.process_latent_in(latent)
        _check_text_width(text_width, clip, caption, arch)
        extra = {
            "width": sizes[index][1],
            "height": sizes[index][0],
            "crop_w": left,
            "crop_h": top,
            "target_width": bucket[1],
            "target_height": bucket[0],
        }
        items.append(Item(latent, _conds_for(base, clip, caption, latent, extra), caption, bucket))
    return items


def _text_width(base, arch: str) -> int | None:
    """The embedding width the model's text input layer reads (None where no single layer does)."""
    group = _PATTERN_GROUP.get(arch)
    if group == "unet":
        widths = {m.in_features for n, m in base.diffusion_model.named_modules() if n.endswith("attn2.to_k")}
        return widths.pop() if len(widths) == 1 else None
    name = _TEXT_INPUT.get(group)
    try:
        layer = base.diffusion_model.get_submodule(name) if name else None
    except AttributeError:
        return None
    return getattr(layer, "in_features", None)


def _check_text_width(width: int | None, clip, caption: str, arch: str) -> None:
    got = int(encode_text(clip, caption)[0].shape[-1])
    if width is not None and got != width:
        raise ValueError(
            f"clip: its text embeddings are {got} wide, but this {arch} model reads {width}-wide ones; connect the "
            "text encoder that belongs to the model"
        )


def _conds_for(base, clip, caption: str, latent: torch.Tensor, extra: dict) -> dict:
    """The model conditioning of one caption, made by the model's own ``extra_conds`` from what CLIPTextEncode
    gives (cross_attn and its extras: pooled output, attention mask), as the sampler makes it."""
    cross, text_extra = encode_text(clip, caption)
    params = {**text_extra, **extra, "cross_attn": cross}
    if distilled_guidance(base):
        params["guidance"] = TRAIN_GUIDANCE
    params.update(device="cpu", noise=latent, prompt_type="positive")
    return base.extra_conds(**params)


@torch.no_grad()
def caption_variants(items: Sequence[Item], base, clip, empty: bool) -> None:
    """Add the empty-caption conditioning to each item (caption dropout)."""
    if not empty:
        return
    for item in items:
        item.conds_empty = _conds_for(base, clip, "", item.latent, {})


def concat_groups(conds: Sequence[dict]) -> list[list[int]]:
    """Indices of ``conds`` in groups that run as one batch: the sampler batches conds only where every entry
    can concatenate (Z-Image's unpadded captions of different token counts cannot)."""
    groups: list[list[int]] = []
    for i, cond in enumerate(conds):
        for group in groups:
            first = conds[group[0]]
            if first.keys() == cond.keys() and all(first[k].can_concat(cond[k]) for k in cond):
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def batch_conds(conds: Sequence[dict], device) -> dict:
    out = {}
    for key in conds[0]:
        objs = [c[key] for c in conds]
        value = objs[0].concat(objs[1:]) if len(objs) > 1 else objs[0].process_cond(batch_size=1, area=None).cond
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            value = value.clone() if value.is_inference() else value  # made under inference mode: not saveable
        out[key] = value
    return out


# --- the loop ------------------------------------------------------------------------------------------------------


@dataclass
class Settings:
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
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "extra"} | self.extra


@dataclass
class Run:
    """Everything the loop needs, prepared by the node."""

    model: object  # ModelPatcher
    items: list[Item]
    class_items: list[Item]
    settings: Settings
    arch: str
    prediction: str
    resume: LoomLoRA | None = None
    on_step: Callable[[int, float, object], None] | None = None  # (step, loss, factors) after each step
    preview: Callable[[int, object], object] | None = None


def _pick(items: list[Item], batch_size: int, rng: random.Random) -> list[Item]:
    by_bucket: dict = {}
    for item in items:
        by_bucket.setdefault(item.bucket, []).append(item)
    groups = sorted(by_bucket.values(), key=lambda g: g[0].bucket)
    group = rng.choices(groups, weights=[len(g) for g in groups])[0]
    if len(group) >= batch_size:
        return rng.sample(group, batch_size)
    return [rng.choice(group) for _ in range(batch_size)]


def _forward_loss(run: Run, batch: list[Item], device, dtype, gen: torch.Generator, rng: random.Random):
    s = run.settings
    base = run.model.model
    x0 = torch.cat([i.latent for i in batch]).to(device)
    conds = []
    for item in batch:
        empty = getattr(item, "conds_empty", None)
        conds.append(empty if empty is not None and rng.random() < s.caption_dropout else item.conds)
    noise = torch.randn(x0.shape, generator=gen).to(device)
    if s.noise_offset:
        noise = noise + s.noise_offset * torch.randn(x0.shape[0], x0.shape[1], 1, 1, generator=gen).to(device)
    progress = sample_progress(len(batch), run.prediction, gen)
    sampling = base.model_sampling  # the model's own schedule and shift (FLUX.2 2.02, Z-Image 3, SD3 3 …)
    sigma = torch.tensor([float(sampling.percent_to_sigma(1.0 - float(t))) for t in progress], device=device)
    sigma = sigma.clamp(min=float(sampling.sigma_min), max=float(sampling.sigma_max))
    x = sampling.noise_scaling(sigma.view(-1, *[1] * (x0.ndim - 1)), noise, x0)
    loss = 0.0
    for group in concat_groups(conds):
        extra = batch_conds([conds[i] for i in group], device)
        denoised = base.apply_model(x[group], sigma[group], **extra)
        part = denoising_loss(denoised, x0[group], sigma[group], run.prediction, s.min_snr_gamma or None)
        loss = loss + part * (len(group) / len(batch))  # the batch mean, whatever the grouping
    return loss


def train(run: Run) -> LoomLoRA:
    """The training loop; returns the LoRA so far when interrupted (``interrupted=True``)."""
    with torch.inference_mode(False), torch.enable_grad():
        return _train(run)


def _train(run: Run) -> LoomLoRA:
    s = run.settings
    base = run.model.model
    device = comfy.model_management.get_torch_device()
    modules = target_modules(base, run.arch, s.target)
    shapes = {k: (int(m.weight.shape[0]), int(m.weight.shape[1])) for k, m in modules.items()}
    factors = LoraFactors(shapes, s.rank, s.alpha, device=device, seed=s.seed)
    start = 0
    optimizer = torch.optim.AdamW(
        factors.parameters(), lr=s.learning_rate, weight_decay=1e-2, fused=device.type == "cuda"
    )
    if run.resume is not None:
        factors.load(run.resume.modules)
        if run.resume.optimizer_state:  # cloned here: tensors read under inference mode cannot be updated in place
            optimizer.load_state_dict(_cpu_state(run.resume.optimizer_state))
        start = run.resume.step
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_mod.lr_lambda(s.lr_schedule, s.steps, s.warmup_steps), last_epoch=start - 1
    )
    dtype = base.get_dtype()
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 and device.type == "cuda" else None
    gen = torch.Generator().manual_seed(s.seed + start)
    rng = random.Random(s.seed * 7919 + start)
    history = list(run.resume.loss_history) if run.resume is not None else []
    done = 0
    interrupted = False
    scale = factors.scale
    side_paths = {
        module: functools.partial(lora_delta, down=factors.down[key], up=factors.up[key], scale=scale)
        for key, module in modules.items()
    }
    with comfy_bridge.train_hooks.trainable(base, side_paths, device, s.gradient_checkpointing):
        for step in range(start, s.steps):
            try:
                comfy.model_management.throw_exception_if_processing_interrupted()
            except comfy.model_management.InterruptProcessingException:
                interrupted = True
                log.warning("[LoRA Loom] training interrupted at step %d of %d: keeping the LoRA so far", step, s.steps)
                break
            loss = _forward_loss(run, _pick(run.items, s.batch_size, rng), device, dtype, gen, rng)
            if run.class_items:
                prior = _forward_loss(run, _pick(run.class_items, s.batch_size, rng), device, dtype, gen, rng)
                loss = loss + s.prior_weight * prior
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"learning_rate: the loss became {value} at step {step + 1}; lower the learning rate "
                    "(the LoRA so far was not saved: it diverged)"
                )
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            history.append(value)
            done += 1
            if run.on_step is not None:
                run.on_step(step + 1, value, factors)
    return LoomLoRA(
        modules=factors.snapshot(),
        alpha=s.alpha,
        rank=s.rank,
        arch=run.arch,
        settings=s.as_dict(),
        step=start + done,
        loss_history=history,
        optimizer_state=_cpu_state(optimizer.state_dict()),
        interrupted=interrupted,
    )


def _cpu_state(state: dict) -> dict:
    def cpu(v):
        if isinstance(v, torch.Tensor):
            return v.detach().cpu().clone()
        if isinstance(v, dict):
            return {k: cpu(x) for k, x in v.items()}
        if isinstance(v, list):
            return [cpu(x) for x in v]
        return v

    return cpu(state)
