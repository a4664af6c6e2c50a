"""The header of a saved LoRA: ``ss_*`` (kohya sd-scripts), ``modelspec.*`` (SAI model spec) and ``loom_*`` keys,
as every LoRA browser and trainer reads them."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from ..names.kohya import ARCHES, arch_ids
from .result import LoomLoRA

_SPEC_VERSION = "1.0.0"
_OPTIMIZERS = {"adamw": "torch.optim.adamw.AdamW", "adam": "torch.optim.adam.Adam", "sgd": "torch.optim.sgd.SGD"}


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


def json_safe(value: Any) -> Any:
    """``value`` with tensors as numbers or lists and tuples as lists, for ``json.dumps``."""
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


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
    spec = arch_ids(lora.arch)
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
    spec = arch_ids(lora.arch)
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
        "loom_sources": _json(json_safe(list(lora.sources))),
        "loom_operation_details": _json(json_safe(dict(lora.notes))),
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
        "modelspec.implementation": arch_ids(lora.arch).implementation,
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
