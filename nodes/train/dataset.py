"""The training data, made once per image and caption: bucketed crops, VAE latents, text embeddings, and the
model conditioning built from them by the model's own ``extra_conds`` (as the sampler builds it).

Latents and embeddings are cached per VAE / text encoder (weakly: a model that is unloaded takes its cache with it)
and by content (image bytes, bucket; caption), so a second run on the same data encodes nothing.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ...lora_math.lru import LRU
from ...lora_math.train import buckets as buckets_mod
from ...lora_math.train.loop import Item
from . import targets

# The input layer that reads the text encoder's embeddings, per family group: its width must match the CLIP's.
TEXT_INPUT = {"flux": "txt_in", "sd3": "context_embedder", "z_image": "cap_embedder.1", "qwen_image": "txt_in"}
_CACHE_SIZE = 512  # entries per VAE / text encoder
_latents: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # VAE module -> LRU((sha256, bucket) -> latent)
_texts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # text encoder module -> LRU(caption -> embedding)


def _cache(table: weakref.WeakKeyDictionary, owner) -> LRU:
    """The cache of ``owner`` (a VAE's or text encoder's module); a fresh one for an owner no weak reference can
    hold (nothing is cached for it rather than kept alive)."""
    try:
        cache = table.get(owner)
        if cache is None:
            cache = table[owner] = LRU(_CACHE_SIZE)
    except TypeError:
        return LRU(_CACHE_SIZE)
    return cache


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

    return _cache(_texts, clip.cond_stage_model).get_or_make(caption, make)


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

        latent, top, left = _cache(_latents, vae.first_stage_model).get_or_make((digest, bucket), encode)
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
    group = targets.group(arch)
    if group == "unet":
        widths = {m.in_features for n, m in base.diffusion_model.named_modules() if n.endswith("attn2.to_k")}
        return widths.pop() if len(widths) == 1 else None
    name = TEXT_INPUT.get(group)
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
    if targets.distilled_guidance(base):
        params["guidance"] = targets.TRAIN_GUIDANCE
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
