"""Saving a trained LoRA, or a LoRA utility's result (merge, resize, extract, convert), so every other tool loads it:
kohya names, ``ss_*`` / ``modelspec.*`` metadata, atomic write, and for a trained LoRA a resume file with the fp32
masters and the optimizer state.

Names (what kohya's sd-scripts writes, checked against real files in the tests):

- SD1.x / SD2 UNets: ``lora_unet_`` + the *diffusers* module path with ``.`` -> ``_``
  (``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``). The diffusers path is derived from the
  ComfyUI (LDM) path by :func:`lora_math.unet_names.ldm_to_diffusers`, which reads the block layout from the model's
  *full* key list (resnets and downsamplers decide the numbering), so callers pass every weight key of the model.
- SDXL, FLUX, SD3: ``lora_unet_`` + the ComfyUI/SGM/BFL module path with ``.`` -> ``_``
  (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``, ``lora_unet_double_blocks_0_img_attn_qkv``,
  ``lora_unet_single_blocks_0_linear1``, ``lora_unet_joint_blocks_0_x_block_attn_qkv``): sd-scripts trains those
  families on the original (SGM/BFL/MMDiT) module tree.
- FLUX.2 (dev, klein) and Z-Image: the same, on ComfyUI's module tree (``lora_unet_double_blocks_0_img_attn_qkv``,
  ``lora_unet_single_blocks_0_linear1``, ``lora_unet_layers_0_attention_qkv``, ``lora_unet_layers_0_feed_forward_w1``),
  the one style written. ComfyUI core maps ``lora_unet_<path>`` onto every model's weights (0.3.75 and upstream), and
  diffusers (0.42) converts it in ``Flux2Pipeline`` / ``ZImagePipeline.lora_state_dict`` (its kohya FLUX.2 converter;
  its Z-Image converter splits the fused ``qkv`` into ``to_q/to_k/to_v``). For FLUX.2 it is also what musubi-tuner
  (kohya's trainer for these families) writes: BFL names. musubi-tuner's Z-Image files name the unfused
  ``attention.to_q/to_k/to_v/to_out.0``, which ComfyUI core does not map under ``lora_unet_``; ComfyUI's fused
  ``qkv`` is what both main loaders read. A diffusers/PEFT-named file (``transformer.…lora_A``) would have to split
  the fused layers into three modules each, for no loader that lacks the kohya style.
- CLIP text encoders (ComfyUI CLIP patcher keys ``clip_l.transformer.text_model.encoder.layers.N.…``):
  ``lora_te_`` + the path for SD1.x (clip_l) / SD2 (clip_h), ``lora_te1_`` / ``lora_te2_`` for SDXL's and SD3's
  clip_l / clip_g and FLUX's clip_l; only the encoder layers' attention and MLP projections. T5 has no kohya name.

Every module gets ``NAME.lora_down.weight`` (``[r, in]``, conv ``[r, in, kh, kw]``), ``NAME.lora_up.weight``
(``[out, r]``, conv ``[out, r, 1, 1]``) in the save dtype and ``NAME.alpha`` (a 0-dim fp32 tensor: kohya writes it in
the save dtype, but an alpha such as 7.3 would then change in bf16, and every reader takes ``alpha.item()`` whatever
the dtype); ranks and alphas may differ per module (``LoomLoRA.alpha_of``).

The resume file ``<stem>.loom-state`` (next to ``<stem>.safetensors``; trained LoRAs only) is a safetensors file, never a pickle. Its
extension is deliberately not ``.safetensors`` so no LoRA list (ComfyUI, A1111, Forge …) offers it as a LoRA. It holds:

- ``module.{i}.down`` / ``module.{i}.up``: the exact fp32 factors of module ``i`` (``param_keys[i]`` in the JSON);
- ``state.{p}.{name}``: every tensor of the optimizer state of parameter ``p`` (AdamW: ``step``, ``exp_avg``,
  ``exp_avg_sq``; ``max_exp_avg_sq`` with amsgrad), where parameter ``p = 2 i`` is module ``i``'s ``down`` and
  ``p = 2 i + 1`` its ``up`` (the order of ``LoraFactors.parameters()``, which the optimizer was built on);
- header metadata ``loom_resume`` (JSON): ``format`` 1, ``param_keys``, ``param_order`` ("down,up per module"),
  ``param_groups`` (the optimizer hyper-parameters: lr, betas, eps, weight_decay …, with ``params`` as indices),
  ``state_extra`` (non-tensor state values), ``step``, ``rank``, ``alpha``, ``arch``, ``settings``, ``dataset``,
  ``base`` (without ``model_keys``), ``interrupted``; plus ``loss_history`` as an fp32 tensor.

:func:`load_resume_state` rebuilds ``(modules, optimizer_state_dict, step, settings)``; loading that state dict into a
fresh optimizer over the same parameter order continues bit-exactly like the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save
from torch import Tensor

from ..names.unet import ldm_to_diffusers
from .result import LoomLoRA

__all__ = [
    "STATE_SUFFIX",
    "TEXT_ENCODER_PREFIXES",
    "ResumeState",
    "describe",
    "kohya_names",
    "load_resume_state",
    "load_trained",
    "metadata",
    "save",
    "state_path",
    "to_state_dict",
]

STATE_SUFFIX = ".loom-state"
RESUME_FORMAT = 1
UNET_PREFIX = "diffusion_model."
_DIFFUSERS_NAMED = ("sd15", "sd2")  # kohya uses diffusers paths for these; SGM/BFL/MMDiT paths for the rest
_SPEC_VERSION = "1.0.0"
_IMPL_STABILITY = "https://github.com/Stability-AI/generative-models"
_IMPL_FLUX = "https://github.com/black-forest-labs/flux"
_IMPL_FLUX2 = "https://github.com/black-forest-labs/flux2"


class _Arch(NamedTuple):
    ss_version: str  # ss_base_model_version as sd-scripts writes it
    spec: str  # modelspec.architecture without "/lora"
    implementation: str  # modelspec.implementation as sd-scripts writes it for a LoRA
    resolution: int  # default training resolution


ARCHES: dict[str, _Arch] = {
    "sd15": _Arch("sd_v1", "stable-diffusion-v1", "diffusers", 512),
    "sd2": _Arch("sd_v2", "stable-diffusion-v2-512", "diffusers", 512),
    "sdxl": _Arch("sdxl_base_v1-0", "stable-diffusion-xl-v1-base", _IMPL_STABILITY, 1024),
    "flux": _Arch("flux1", "flux-1-dev", _IMPL_FLUX, 1024),
    "chroma": _Arch("chroma", "chroma", "https://huggingface.co/lodestones/Chroma", 1024),
    # FLUX.2 and Z-Image: the architecture ids musubi-tuner writes (no SAI spec names them)
    "flux2": _Arch("flux2", "Flux.2-dev", _IMPL_FLUX2, 1024),
    "flux2_klein_4b": _Arch("flux2_klein_4b", "Flux.2-klein-4b", _IMPL_FLUX2, 1024),
    "flux2_klein_9b": _Arch("flux2_klein_9b", "Flux.2-klein-9b", _IMPL_FLUX2, 1024),
    "z_image": _Arch("z_image", "Z-Image", "https://github.com/Tongyi-MAI/Z-Image", 1024),
    "qwen_image": _Arch("qwen_image", "qwen-image", "https://github.com/QwenLM/Qwen-Image", 1328),
    "sd3": _Arch("sd3", "stable-diffusion-3", _IMPL_STABILITY, 1024),
    "sd35_large": _Arch("sd3.5_large", "stable-diffusion-v3.5-large", _IMPL_STABILITY, 1024),
    "sd35_medium": _Arch("sd3.5_medium", "stable-diffusion-v3.5-medium", _IMPL_STABILITY, 1024),
}

_OPTIMIZERS = {"adamw": "torch.optim.adamw.AdamW", "adam": "torch.optim.adam.Adam", "sgd": "torch.optim.sgd.SGD"}


def _arch(arch: str) -> _Arch:
    if arch not in ARCHES:
        raise ValueError(f"arch: {arch!r} is not a base model LoRA Loom can save for; one of {', '.join(ARCHES)}")
    return ARCHES[arch]


def _module_path(key: str) -> str:
    """``diffusion_model.X.weight`` -> ``X``; ValueError for anything else."""
    if not key.startswith(UNET_PREFIX) or not key.endswith(".weight"):
        raise ValueError(
            f"{key}: not a denoiser weight key (diffusion_model.….weight); only UNet/DiT weights can be saved"
        )
    return key[len(UNET_PREFIX) : -len(".weight")]


# --- names ----------------------------------------------------------------------------------------------------------


# kohya prefix of each CLIP text encoder, by arch, as sd-scripts names them (``lora_te_`` for the single text encoder
# of SD1.x/SD2, ``lora_te1_``/``lora_te2_`` for SDXL's CLIP-L/CLIP-G, lora_flux/lora_sd3's ``lora_te1_``/``lora_te2_``)
# and as ComfyUI's ``model_lora_keys_clip`` maps them back. T5 and other encoders have no kohya names here.
TEXT_ENCODER_PREFIXES: dict[str, dict[str, str]] = {
    "sd15": {"clip_l": "lora_te_"},
    "sd2": {"clip_h": "lora_te_"},
    "sdxl": {"clip_l": "lora_te1_", "clip_g": "lora_te2_"},
    "flux": {"clip_l": "lora_te1_"},
    "sd3": {"clip_l": "lora_te1_", "clip_g": "lora_te2_"},
    "sd35_large": {"clip_l": "lora_te1_", "clip_g": "lora_te2_"},
    "sd35_medium": {"clip_l": "lora_te1_", "clip_g": "lora_te2_"},
}
# The CLIP weights kohya names (sd-scripts targets CLIPAttention and CLIPMLP; ComfyUI's LORA_CLIP_MAP): ComfyUI loads
# ``lora_te…`` names for these and nothing else.
CLIP_LAYER = re.compile(r"text_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])")


def _text_encoder_name(key: str, arch: str) -> str:
    """``clip_l.transformer.text_model.encoder.layers.N.self_attn.q_proj.weight`` -> the kohya name for ``arch``."""
    encoder, _, rest = key.partition(".transformer.")
    prefixes = TEXT_ENCODER_PREFIXES[arch]
    if not rest or "." in encoder or encoder not in prefixes:
        known = ", ".join(f"{e}.transformer.…" for e in prefixes)
        what = f"{encoder!r}" if rest and "." not in encoder else "that encoder"
        raise ValueError(
            f"{key}: not a denoiser weight key (diffusion_model.….weight) nor a text encoder key this {arch} LoRA can "
            f"name ({known}); text-encoder LoRA for {what} cannot be saved in kohya format"
        )
    path = rest.removesuffix(".weight")
    if not rest.endswith(".weight") or not CLIP_LAYER.fullmatch(path):
        raise ValueError(
            f"{key}: kohya text-encoder names cover only the CLIP encoder layers' self_attn q/k/v/out_proj and mlp "
            "fc1/fc2 weights; text-encoder LoRA on other weights cannot be saved in kohya format"
        )
    return prefixes[encoder] + path.replace(".", "_")


def kohya_names(model_keys: Iterable[str], arch: str, all_model_keys: Iterable[str] | None = None) -> dict[str, str]:
    """``{ComfyUI model key: kohya module name}`` for the keys of ``model_keys``.

    Denoiser keys (``diffusion_model.….weight``) get ``lora_unet_…`` names. CLIP keys as ComfyUI's CLIP patcher names
    them (``clip_l.transformer.text_model.encoder.layers.N.self_attn.q_proj.weight``, ``….mlp.fc1.weight`` …) get
    ``lora_te_…`` (sd15: clip_l, sd2: clip_h), ``lora_te1_…`` (sdxl, sd3, flux: clip_l) or ``lora_te2_…`` (sdxl,
    sd3: clip_g); any other key (t5xxl, unknown prefixes) is a ValueError naming it.

    ``all_model_keys``: every weight key of the model (``model.model.state_dict()`` keys; biases and norms welcome).
    SD1.x/SD2 names need it: the diffusers numbering depends on the resnets and downsamplers around the targeted
    layers, which a list of attention keys alone does not show. Defaults to ``model_keys`` itself, which is only
    right when that already holds the whole model; for SD UNets a list without any downsampler is refused.
    """
    _arch(arch)
    keys = list(dict.fromkeys(model_keys))
    out = {k: _text_encoder_name(k, arch) for k in keys if not k.startswith(UNET_PREFIX)}
    paths = {k: _module_path(k) for k in keys if k.startswith(UNET_PREFIX)}
    if arch not in _DIFFUSERS_NAMED:
        out |= {k: "lora_unet_" + p.replace(".", "_") for k, p in paths.items()}
    elif paths:
        out |= _diffusers_names(paths, arch, keys if all_model_keys is None else list(all_model_keys))
    out = {k: out[k] for k in keys}  # in the order given
    if len(set(out.values())) != len(out):
        raise ValueError(f"two {arch} modules got the same kohya name; the model key list is inconsistent")
    return out


def _diffusers_names(paths: Mapping[str, str], arch: str, layout_keys: list[str]) -> dict[str, str]:
    """``lora_unet_`` + the diffusers path of each SD1.x/SD2 UNet module (``paths``: key -> LDM module path)."""
    layout = {re.sub(r"\.(weight|bias)$", "", k[len(UNET_PREFIX) :]) for k in layout_keys if k.startswith(UNET_PREFIX)}
    if any(p.startswith("input_blocks.") for p in layout) and not any(re.search(r"\.0\.op$", p) for p in layout):
        raise ValueError(
            f"{arch} LoRA names need the model's full list of weight keys (the block layout decides the diffusers "
            "numbering) and the list given has no downsampler; pass every key of model.model.state_dict() "
            "(LoomLoRA.base['model_keys'])"
        )
    diffusers = ldm_to_diffusers(layout | set(paths.values()))
    out: dict[str, str] = {}
    for key, path in paths.items():
        target = diffusers.get(path)
        if target is None:
            raise ValueError(f"{key}: no diffusers name for this {arch} UNet module; is the arch right?")
        out[key] = "lora_unet_" + target.replace(".", "_")
    return out


# --- tensors --------------------------------------------------------------------------------------------------------


def _cast(name: str, t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` on the CPU in ``dtype``; ValueError when it holds NaN/Inf or overflows ``dtype`` (fp16 tops at 65504)."""
    t = t.detach().to("cpu", torch.float32)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: the factors hold NaN/Inf (did training diverge?); nothing was saved")
    cast = t.to(dtype).contiguous()
    if not torch.isfinite(cast).all():
        raise ValueError(
            f"{name}: values up to {t.abs().max().item():.3g} do not fit {dtype}; use save_dtype bf16 or fp32"
        )
    return cast


def _check_factors(key: str, down: Tensor, up: Tensor) -> None:
    """ValueError naming ``key`` unless ``down``/``up`` are kohya LoRA factors: linear or conv (LoCon)."""
    expected = "down [r, in] and up [out, r] (linear) or down [r, in, kh, kw] and up [out, r, 1, 1] (conv)"
    if (
        down.ndim != up.ndim
        or down.ndim not in (2, 4)
        or down.shape[0] != up.shape[1]
        or down.shape[0] == 0
        or any(d != 1 for d in up.shape[2:])
    ):
        raise ValueError(f"{key}: factors must be {expected}; got {list(down.shape)} and {list(up.shape)}")


def layer_key(key: str) -> str:
    """The layer weight key a model key names: ``X.bias`` -> ``X.weight`` (a bias diff is saved under its layer's
    name), weight keys unchanged."""
    return key[: -len(".bias")] + ".weight" if key.endswith(".bias") else key


def named_keys(lora: LoomLoRA) -> list[str]:
    """The model keys :func:`kohya_names` must name for :func:`to_state_dict`: the modules, and the layers of the
    full diffs."""
    return list(dict.fromkeys([*lora.modules, *(layer_key(k) for k in lora.diffs)]))


def to_state_dict(lora: LoomLoRA, names: Mapping[str, str], dtype: torch.dtype = torch.float16) -> dict[str, Tensor]:
    """kohya tensors: ``NAME.lora_down.weight``, ``NAME.lora_up.weight`` (``dtype``), ``NAME.alpha`` (0-dim fp32);
    full diffs as ``NAME.diff`` (a 1-D weight's) and ``NAME.diff_b`` (a bias's), in ``dtype``.

    Factors are written as given: linear ``down [r, in]``, ``up [out, r]``, or conv (LoCon) ``down [r, in, kh, kw]``,
    ``up [out, r, 1, 1]``; ``NAME.alpha`` is ``lora.alpha_of(key)`` (each module's own alpha when ``module_alpha``
    gives one), so ``ΔW = alpha / r · up @ down`` for every module whatever its rank. ``names``: from
    ``kohya_names(named_keys(lora), …)``.
    """
    if not lora.modules and not lora.diffs:
        raise ValueError("lora: the LoRA holds no modules; nothing to save")
    out: dict[str, Tensor] = {}
    for key, (down, up) in lora.modules.items():
        name = names.get(key)
        if name is None:
            raise ValueError(f"{key}: no kohya name for this module (names were made for another model?)")
        _check_factors(key, down, up)
        for part, t in (("lora_down", down), ("lora_up", up)):
            out[f"{name}.{part}.weight"] = _cast(f"{key} {part}", t, dtype)
        out[f"{name}.alpha"] = torch.tensor(lora.alpha_of(key), dtype=torch.float32)
    for key, diff in lora.diffs.items():
        name = names.get(layer_key(key))
        if name is None:
            raise ValueError(f"{key}: no kohya name for this weight's layer (names were made for another model?)")
        out[f"{name}.diff_b" if key.endswith(".bias") else f"{name}.diff"] = _cast(f"{key} diff", diff, dtype)
    return out


# --- metadata -------------------------------------------------------------------------------------------------------


def _pack_version() -> str:
    try:
        text = (Path(__file__).resolve().parents[2] / "__init__.py").read_text(encoding="utf-8")
    except OSError:
        return "unknown"
    m = re.search(r"^__version__\s*=\s*[\"']([^\"']+)[\"']", text, re.M)
    return m.group(1) if m else "unknown"


def _first(mapping: Mapping[str, Any], *names: str) -> Any:
    for n in names:
        if mapping.get(n) is not None:
            return mapping[n]
    return None


def _resolution(value: Any, default: int) -> tuple[int, int]:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return int(value), int(value)
    if isinstance(value, list | tuple) and len(value) == 2:
        return int(value[0]), int(value[1])
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*([x,]\s*\d+\s*)?", value):
        nums = [int(n) for n in re.findall(r"\d+", value)]
        return (nums[0], nums[-1])
    return default, default


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def tag_frequency(captions: Iterable[str]) -> dict[str, int]:
    """How many captions carry each comma-separated tag, counted the way kohya does: once per caption."""
    counts: dict[str, int] = {}
    for caption in captions:
        for tag in {t.strip() for t in str(caption).split(",")} - {""}:
            counts[tag] = counts.get(tag, 0) + 1
    return counts


def _tag_frequency(dataset: Mapping[str, Any]) -> dict[str, int]:
    """``dataset['tag_frequency']``, else counted from ``dataset['captions']``."""
    given = dataset.get("tag_frequency")
    if isinstance(given, Mapping):
        return {str(k): int(v) for k, v in given.items()}
    return tag_frequency(dataset.get("captions") or ())


def _timestamp(value: Any) -> float | None:
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _trigger(dataset: Mapping[str, Any]) -> str:
    value = _first(dataset, "trigger", "trigger_words")
    if isinstance(value, list | tuple):
        value = ", ".join(str(v).strip() for v in value if str(v).strip())
    return str(value or "").strip()


def metadata(
    lora: LoomLoRA,
    scope: str,
    name: str,
    *,
    started_at: float | None = None,
    finished_at: float | None = None,
) -> dict[str, str]:
    """The safetensors header metadata (all values strings) of a saved LoRA.

    kohya ``ss_*`` (what sd-scripts writes for a ``networks.lora`` run), ``modelspec.*`` (SAI model spec 1.0.0), the
    trigger words (``modelspec.trigger_phrase`` and ``loom_trigger_words``) and provenance (``loom_*``: base model
    weights' sha256, dataset hash, training settings, the free-text scope, interrupted, pack version).
    ``started_at``/``finished_at`` (Unix seconds) default to ``lora.settings['started_at' / 'finished_at']``.

    A utility's result (``lora.operation`` other than ``train``) gets :func:`_utility_metadata` instead: no training
    keys, its operation, sources and details.
    """
    if lora.operation != "train":
        return _utility_metadata(lora, scope, name, finished_at=finished_at)
    spec = _arch(lora.arch)
    settings, dataset, base = dict(lora.settings), dict(lora.dataset), dict(lora.base)
    started_at = _timestamp(started_at if started_at is not None else settings.get("started_at"))
    finished_at = _timestamp(finished_at if finished_at is not None else settings.get("finished_at"))
    width, height = _resolution(settings.get("resolution"), spec.resolution)
    trigger = _trigger(dataset)
    scope = (scope or "").strip()
    lr = _first(settings, "learning_rate", "lr", "unet_lr")
    optimizer = str(_first(settings, "optimizer") or "adamw")
    has_class = bool(_first(dataset, "class_prompt", "num_class_images"))
    when = datetime.datetime.fromtimestamp(finished_at) if finished_at is not None else datetime.datetime.now()

    md: dict[str, Any] = {
        "ss_base_model_version": spec.ss_version,
        "ss_network_module": "networks.lora",
        "ss_network_dim": int(lora.rank),
        "ss_network_alpha": float(lora.alpha),
        "ss_resolution": f"({width}, {height})",
        "ss_num_train_images": int(_first(dataset, "num_images") or 0),
        "ss_steps": int(lora.step),
        "ss_max_train_steps": _first(settings, "steps", "max_train_steps"),
        "ss_tag_frequency": _json({"dataset": _tag_frequency(dataset)}),
        "ss_training_comment": scope or (f"trigger word: {trigger}" if trigger else ""),
        "ss_learning_rate": lr,
        "ss_unet_lr": lr,
        "ss_optimizer": _OPTIMIZERS.get(optimizer.lower(), optimizer),
        "ss_lr_scheduler": _first(settings, "lr_schedule", "lr_scheduler"),
        "ss_lr_warmup_steps": _first(settings, "warmup_steps", "lr_warmup_steps"),
        "ss_seed": _first(settings, "seed"),
        "ss_batch_size_per_device": _first(settings, "batch_size"),
        "ss_total_batch_size": _first(settings, "batch_size"),
        "ss_noise_offset": _first(settings, "noise_offset"),
        "ss_min_snr_gamma": _first(settings, "min_snr_gamma"),
        "ss_caption_dropout_rate": _first(settings, "caption_dropout", "caption_dropout_rate"),
        "ss_gradient_checkpointing": _first(settings, "gradient_checkpointing"),
        "ss_mixed_precision": _first(settings, "mixed_precision"),
        "ss_num_reg_images": _first(dataset, "num_class_images", "num_reg_images"),
        "ss_prior_loss_weight": _first(settings, "prior_weight", "prior_loss_weight") if has_class else None,
        "ss_network_args": _json({"target": settings["target"]}) if settings.get("target") else None,
        "ss_output_name": name,
        "ss_sd_model_name": _first(base, "name"),
        "ss_training_started_at": started_at,
        "ss_training_finished_at": finished_at,
        **_spec_keys(lora, name, when, (width, height), scope, trigger, scope),
        "loom_base_model_sha256": _first(base, "sha256") or "",
        "loom_dataset_sha256": _first(dataset, "images_sha256", "sha256") or "",
        "loom_settings": _json(settings),
        "loom_interrupted": "true" if lora.interrupted else "false",
        "loom_class_prompt": _first(dataset, "class_prompt"),
    }
    if lora.arch in ("sd15", "sd2"):
        md["ss_v2"] = lora.arch == "sd2"
    return {k: str(v) for k, v in md.items() if v is not None}  # bools as kohya writes them: "True"/"False"


def _strengths(source: Mapping[str, Any]) -> str:
    model, clip = source.get("strength_model"), source.get("strength_clip")
    if not isinstance(model, int | float) or isinstance(model, bool):
        return ""
    if isinstance(clip, int | float) and not isinstance(clip, bool) and clip != model and clip != 0:
        return f" ({model:g}, clip {clip:g})"
    return f" ({model:g})"


def describe(lora: LoomLoRA) -> str:
    """One line saying what a utility made, from its sources: ``merge of style.safetensors (0.8), char.safetensors
    (0.5)``, ``resize of style.safetensors to rank 16 (energy 0.9)``, ``extract of tuned.safetensors against
    base.safetensors``, ``convert of a.safetensors (lycoris-loha) to LoRA``; "" for a trained LoRA."""
    op = lora.operation
    if op == "train":
        return ""
    sources = [dict(s) for s in lora.sources]
    names = [str(s.get("name") or "?") for s in sources]
    if op == "merge":
        return "merge of " + ", ".join(n + _strengths(s) for n, s in zip(names, sources, strict=True))
    if op == "extract":
        tuned = [n for n, s in zip(names, sources, strict=True) if s.get("role") != "base"]
        base = [n for n, s in zip(names, sources, strict=True) if s.get("role") == "base"]
        return f"extract of {', '.join(tuned) or '?'}" + (f" against {', '.join(base)}" if base else "")
    text = f"{op} of {', '.join(names)}" if names else op
    if op == "resize":
        ranks = sorted({lora.rank_of(k) for k in lora.modules})
        if ranks:
            text += f" to rank {ranks[0]}" if len(ranks) == 1 else f" to ranks {ranks[0]}-{ranks[-1]}"
        rule = lora.notes.get("rank_rule")
        text += f" ({rule})" if rule else ""
    elif op == "convert":
        formats = sorted({str(s["format"]) for s in sources if s.get("format")})
        text += (f" ({', '.join(formats)})" if formats else "") + " to LoRA"
    return text


def _utility_metadata(lora: LoomLoRA, scope: str, name: str, *, finished_at: float | None) -> dict[str, str]:
    """The header of a utility's result: kohya ``ss_*`` network keys (``Dynamic`` dim/alpha when modules differ, as
    sd-scripts' resize_lora.py writes), ``modelspec.*`` (the arch's default resolution) and ``loom_operation``,
    ``loom_sources`` (JSON list), ``loom_operation_details`` (JSON of ``notes``); no training keys."""
    spec = _arch(lora.arch)
    base, dataset = dict(lora.base), dict(lora.dataset)
    finished_at = _timestamp(finished_at)
    when = datetime.datetime.fromtimestamp(finished_at) if finished_at is not None else datetime.datetime.now()
    trigger = _trigger(dataset)
    scope = (scope or "").strip()
    comment = scope or describe(lora)
    ranks = {lora.rank_of(k) for k in lora.modules}
    alphas = {lora.alpha_of(k) for k in lora.modules}
    dynamic = len(ranks) > 1 or len(alphas) > 1
    md: dict[str, Any] = {
        "ss_base_model_version": spec.ss_version,
        "ss_network_module": "networks.lora",
        "ss_network_dim": "Dynamic" if dynamic else next(iter(ranks), int(lora.rank)),
        "ss_network_alpha": "Dynamic" if dynamic else next(iter(alphas), float(lora.alpha)),
        "ss_training_comment": comment,
        "ss_output_name": name,
        "ss_sd_model_name": _first(base, "name"),
        **_spec_keys(lora, name, when, (spec.resolution, spec.resolution), comment, trigger, scope),
        "loom_base_model_sha256": _first(base, "sha256"),
        "loom_operation": lora.operation,
        "loom_sources": _json(_json_safe(list(lora.sources))),
        "loom_operation_details": _json(_json_safe(dict(lora.notes))),
    }
    if lora.arch in ("sd15", "sd2"):
        md["ss_v2"] = lora.arch == "sd2"
    return {k: str(v) for k, v in md.items() if v is not None}


def _spec_keys(
    lora: LoomLoRA,
    name: str,
    when: datetime.datetime,
    resolution: tuple[int, int],
    description: str,
    trigger: str,
    scope: str,
) -> dict[str, Any]:
    """The SAI ``modelspec.*`` keys and the pack's own, shared by trained and utility LoRAs."""
    return {
        "modelspec.sai_model_spec": _SPEC_VERSION,
        "modelspec.architecture": f"{_architecture(lora)}/lora",
        "modelspec.implementation": _arch(lora.arch).implementation,
        "modelspec.title": name,
        "modelspec.date": when.replace(microsecond=0).isoformat(),
        "modelspec.resolution": f"{resolution[0]}x{resolution[1]}",
        "modelspec.description": description or None,
        "modelspec.trigger_phrase": trigger or None,
        "modelspec.usage_hint": f"put '{trigger}' in the prompt" if trigger else None,
        "modelspec.prediction_type": _prediction(lora),
        "loom_version": _pack_version(),
        "loom_arch": lora.arch,
        "loom_trigger_words": trigger or None,
        "loom_scope": scope,
    }


def _prediction(lora: LoomLoRA) -> str | None:
    value = str(_first(lora.base, "prediction", "prediction_type") or "").lower()
    if not value:
        value = str(_first(lora.settings, "prediction", "prediction_type") or "").lower()
    return {"eps": "epsilon", "epsilon": "epsilon", "v": "v", "v_prediction": "v"}.get(value)


def _architecture(lora: LoomLoRA) -> str:
    """modelspec architecture id: SD2 768-v and FLUX schnell when the base says so."""
    spec = ARCHES[lora.arch].spec
    if lora.arch == "sd2" and _prediction(lora) == "v":
        return "stable-diffusion-v2-768-v"
    if lora.arch == "flux" and "schnell" in str(_first(lora.base, "variant", "name") or "").lower():
        return "flux-1-schnell"
    return spec


# --- resume state ---------------------------------------------------------------------------------------------------


class ResumeState(NamedTuple):
    """What :func:`load_resume_state` returns: fp32 factors, a ``torch.optim`` state dict, steps done, settings."""

    modules: dict[str, tuple[Tensor, Tensor]]
    optimizer_state: dict[str, Any] | None
    step: int
    settings: dict[str, Any]


def state_path(path: str | os.PathLike) -> Path:
    """The resume file beside a saved LoRA: ``x/name.safetensors`` -> ``x/name.loom-state``."""
    path = Path(path)
    if path.suffix == STATE_SUFFIX:
        return path
    return path.with_name(path.stem + STATE_SUFFIX if path.suffix == ".safetensors" else path.name + STATE_SUFFIX)


def _json_safe(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _resume_payload(lora: LoomLoRA) -> tuple[dict[str, Tensor], dict[str, str]]:
    keys = list(lora.modules)
    tensors: dict[str, Tensor] = {}
    for i, key in enumerate(keys):
        down, up = lora.modules[key]
        tensors[f"module.{i}.down"] = down.detach().to("cpu", torch.float32).contiguous()
        tensors[f"module.{i}.up"] = up.detach().to("cpu", torch.float32).contiguous()
    groups: list | None = None
    extra: dict[str, dict[str, Any]] = {}
    if lora.optimizer_state:
        state = lora.optimizer_state.get("state", {})
        n_params = 2 * len(keys)
        for p, entries in state.items():
            p = int(p)
            if not 0 <= p < n_params:
                raise ValueError(
                    f"optimizer state: parameter {p} is out of range for {len(keys)} modules (down, up each); "
                    "the optimizer must be built on LoraFactors.parameters()"
                )
            shape = tuple(tensors[f"module.{p // 2}.{'up' if p % 2 else 'down'}"].shape)
            for name, value in entries.items():
                if isinstance(value, Tensor):
                    if value.ndim and tuple(value.shape) != shape:
                        raise ValueError(
                            f"optimizer state: {name} of parameter {p} has shape {tuple(value.shape)}, not {shape}: "
                            "parameters are not in LoraFactors.parameters() order (down, up per module)"
                        )
                    tensors[f"state.{p}.{name}"] = value.detach().cpu().contiguous()
                else:
                    extra.setdefault(str(p), {})[name] = _json_safe(value)
        groups = _json_safe(list(lora.optimizer_state.get("param_groups", [])))
    if lora.loss_history:
        tensors["loss_history"] = torch.tensor([float(x) for x in lora.loss_history], dtype=torch.float32)
    doc = {
        "format": RESUME_FORMAT,
        "param_keys": keys,
        "param_order": "down,up per module: parameter 2*i is module i's down, 2*i+1 its up",
        "param_groups": groups,
        "state_extra": extra,
        "step": int(lora.step),
        "rank": int(lora.rank),
        "alpha": float(lora.alpha),
        "arch": lora.arch,
        "settings": _json_safe(dict(lora.settings)),
        "dataset": _json_safe(dict(lora.dataset)),
        "base": _json_safe({k: v for k, v in lora.base.items() if k not in ("model_keys", "module_paths")}),
        "interrupted": bool(lora.interrupted),
    }
    if lora.module_alpha is not None:
        doc["module_alpha"] = {str(k): float(v) for k, v in lora.module_alpha.items()}
    return tensors, {"loom_resume": json.dumps(doc, default=str)}


def _read_resume(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    path = state_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no resume state beside this LoRA (saved without one, or moved)")
    with safe_open(str(path), framework="pt", device="cpu") as fh:
        meta = fh.metadata() or {}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    try:
        doc = json.loads(meta["loom_resume"])
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: not a LoRA Loom resume file (no loom_resume header)") from e
    if doc.get("format") != RESUME_FORMAT:
        raise ValueError(f"{path}: resume format {doc.get('format')!r} is not {RESUME_FORMAT}; update LoRA Loom")
    return tensors, doc


def load_resume_state(path: str | os.PathLike) -> ResumeState:
    """Read ``<stem>.loom-state`` (``path`` may be the LoRA file or the state file itself).

    Returns fp32 ``modules`` (``key -> (down, up)``, the exact masters), a ``torch.optim`` ``state_dict`` for an
    optimizer built on the same parameter order (``LoraFactors.parameters()``: down, up per module, modules in
    ``modules`` order) or None when none was saved, the steps done and the training settings.
    """
    tensors, doc = _read_resume(path)
    keys = doc["param_keys"]
    modules = {k: (tensors[f"module.{i}.down"], tensors[f"module.{i}.up"]) for i, k in enumerate(keys)}
    optimizer_state = None
    if doc.get("param_groups") is not None:
        state: dict[int, dict[str, Any]] = {}
        for name, t in tensors.items():
            m = re.fullmatch(r"state\.(\d+)\.(.+)", name)
            if m:
                state.setdefault(int(m.group(1)), {})[m.group(2)] = t
        for p, values in doc.get("state_extra", {}).items():
            state.setdefault(int(p), {}).update(values)
        groups = []
        for group in doc["param_groups"]:
            group = dict(group)
            if isinstance(group.get("betas"), list):
                group["betas"] = tuple(group["betas"])
            groups.append(group)
        optimizer_state = {"state": dict(sorted(state.items())), "param_groups": groups}
    return ResumeState(modules, optimizer_state, int(doc["step"]), dict(doc.get("settings") or {}))


def load_trained(path: str | os.PathLike) -> LoomLoRA:
    """A :class:`LoomLoRA` rebuilt from a resume file (fp32 masters, optimizer state, step, loss history …)."""
    tensors, doc = _read_resume(path)
    resumed = load_resume_state(path)
    history = tensors.get("loss_history")
    return LoomLoRA(
        modules=resumed.modules,
        alpha=float(doc["alpha"]),
        rank=int(doc["rank"]),
        arch=str(doc["arch"]),
        settings=resumed.settings,
        dataset=dict(doc.get("dataset") or {}),
        base=dict(doc.get("base") or {}),
        step=resumed.step,
        loss_history=history.tolist() if history is not None else [],
        optimizer_state=resumed.optimizer_state,
        interrupted=bool(doc.get("interrupted")),
        module_alpha=doc.get("module_alpha"),
    )


# --- writing --------------------------------------------------------------------------------------------------------


def _write_temp(folder: Path, final_name: str, payload: bytes) -> Path:
    """Write ``payload`` to a hidden temp file in ``folder`` (flushed and fsynced); removed again on any error."""
    # Not tempfile.mkstemp: its 0600 mode would stick to the saved file; os.open's 0666 lets the umask decide.
    tmp = folder / f".{final_name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _exists_error(path: Path) -> FileExistsError:
    return FileExistsError(
        f"filename_prefix: {path} already exists; choose another filename_prefix, or set overwrite to true to "
        "replace it"
    )


def _commit_new(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` only if ``path`` does not exist (a hard link is atomic and never clobbers)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _exists_error(path) from None
    except OSError:  # file systems without hard links: check, then rename (a tiny race window)
        if path.exists():
            raise _exists_error(path) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def save(
    path: str | os.PathLike,
    lora: LoomLoRA,
    names: Mapping[str, str],
    scope: str,
    name: str,
    overwrite: bool = False,
    dtype: torch.dtype = torch.float16,
    *,
    started_at: float | None = None,
    finished_at: float | None = None,
) -> Path:
    """Write ``path`` (kohya safetensors) and, for a trained LoRA, its resume file ``<stem>.loom-state`` atomically;
    returns ``path``.

    The files are serialised in memory first and written to hidden temp files in the target folder, fsynced, then
    renamed into place; on any error the temp files are removed and no half-written file is left. An existing
    ``path`` is refused (FileExistsError naming ``filename_prefix`` / ``overwrite``) unless ``overwrite``.
    A utility's result (``lora.operation`` other than ``train``) gets no resume file and no ``loom_resume_file``
    header; when it overwrites a trained LoRA, that LoRA's resume file (which no longer matches) is removed.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a LoRA file must end in .safetensors")
    folder = path.parent
    if not overwrite and path.exists():
        raise _exists_error(path)
    trained = lora.operation == "train"
    tensors = to_state_dict(lora, names, dtype)
    header = metadata(lora, scope, name, started_at=started_at, finished_at=finished_at)
    if trained:
        header["loom_resume_file"] = state_path(path).name
    main_bytes = st_save(tensors, metadata=header)
    state_bytes: bytes | None = None
    if trained:
        state_tensors, state_header = _resume_payload(lora)
        state_bytes = st_save(state_tensors, metadata=state_header)
        del state_tensors
    del tensors

    folder.mkdir(parents=True, exist_ok=True)
    sidecar = state_path(path)
    replaced = overwrite and path.exists()
    temps: list[Path] = []
    committed: Path | None = None
    try:
        temps.append(_write_temp(folder, path.name, main_bytes))
        if state_bytes is not None:
            temps.append(_write_temp(folder, sidecar.name, state_bytes))
        main_tmp = temps[0]
        if overwrite:
            os.replace(main_tmp, path)
        else:
            _commit_new(main_tmp, path)
        committed = path
        if state_bytes is not None:
            os.replace(temps[1], sidecar)
        committed = None
    except BaseException:
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if committed is not None:  # the LoRA is in place but its resume state is not: take it back out
            with contextlib.suppress(OSError):
                os.unlink(committed)
        raise
    if state_bytes is None and replaced:  # the replaced LoRA's resume state would resume something else
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sidecar)
    return path
