"""What a parsed LoRA is, for people: format, base model, rank/alpha, coverage, trigger words, training metadata.

Shared by ``python -m lora_math inspect`` (:func:`file_report`, printed as JSON) and the Loom LoRA Info node
(the same pieces as text). Pure: a :class:`ParsedLoRA` and key tables in, plain dicts and strings out.

Trigger words, in order, without repeats: ``modelspec.trigger_phrase`` (comma separated), a phrase after
"trigger word(s)" in ``ss_training_comment``, the most frequent tags of ``ss_tag_frequency`` (counts summed over
dataset folders), and ``ss_output_name`` only when none of those exist.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import LoraFormatError
from .formats import ParsedLoRA
from .keymap import diagnose, guess_base_model, match, split_role
from .keytables import ARCHES, load_keytable

__all__ = [
    "coverage",
    "decode_metadata",
    "distinct",
    "file_report",
    "rank_alpha",
    "trigger_words",
    "training_summary",
]

TOP_TAGS = 5


def distinct(values: Iterable[float | int | None]) -> float | int | list | None:
    """One value when all agree, a sorted list when they differ, None when there are none."""
    found = sorted({v for v in values if v is not None})
    if not found:
        return None
    return found[0] if len(found) == 1 else found


def _metadata_value(value: str) -> Any:
    """Header values are strings; JSON ones (ss_tag_frequency, lora_adapter_metadata …) are decoded for reading."""
    text = value.strip()
    if text[:1] in "{[":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return value
    return value


def decode_metadata(metadata: Mapping[str, str]) -> dict[str, Any]:
    return {k: _metadata_value(v) for k, v in metadata.items()}


def rank_alpha(parsed: ParsedLoRA) -> tuple[Any, Any]:
    """(rank, alpha) over all modules, each one value, a sorted list of the values found, or None."""
    modules = parsed.modules.values()
    return distinct(a.rank for a in modules), distinct(getattr(a, "alpha", None) for a in modules)


_TEXT_ENCODER_ROLES = ("te", "te1", "te2", "te3")


def coverage(
    parsed: ParsedLoRA,
    model_keys: Mapping[str, tuple[int, ...]],
    *,
    denoiser: bool = True,
    text_encoders: bool = True,
) -> dict:
    """Match ``parsed`` against ``model_keys`` without refusing misfits.

    denoiser / text_encoders=False leave out the modules of that part (text encoder: ``lora_te*``,
    ``text_encoder*``; denoiser: everything else), for a model given without its CLIP or the reverse; how many were
    left out is ``skipped``. ``coverage`` is matched / targets (1.0 when nothing is left to match).
    """
    modules = parsed.modules
    if not (denoiser and text_encoders):
        kept = {
            n: a for n, a in modules.items() if (text_encoders if split_role(n)[0] in _TEXT_ENCODER_ROLES else denoiser)
        }
        parsed = ParsedLoRA(parsed.format, kept, parsed.metadata, parsed.ignored)
    km = match(parsed, model_keys, strict=False)
    return {
        "matched": len(km.matched),
        "targets": km.targets,
        "unmatched": list(km.unmatched),
        "mismatched": list(km.mismatched),
        "coverage": round(km.coverage, 4),
        "skipped": len(modules) - len(parsed.modules),
    }


def file_report(parsed: ParsedLoRA, arch: str = "auto") -> dict[str, Any]:
    """Everything ``inspect`` prints except the file name; coverage against the key table of ``arch``.

    arch ``auto``: the base model guessed from the file; with no key table for it, coverage fields are None and
    ``note`` says how to choose one.
    """
    base = guess_base_model(parsed)
    table_arch = base if arch == "auto" else arch
    rank, alpha = rank_alpha(parsed)
    report: dict[str, Any] = {
        "format": parsed.format,
        "base_model": base,
        "rank": rank,
        "alpha": alpha,
        "targets": len(parsed.modules),
        "arch": table_arch,
    }
    if table_arch in ARCHES:
        table = load_keytable(table_arch)
        cov = coverage(parsed, table)
        if not cov["matched"]:
            hint = diagnose(parsed, table)
            if hint:
                raise LoraFormatError(hint)
        report.update(matched=cov["matched"], unmatched=cov["unmatched"], coverage=cov["coverage"])
        if cov["mismatched"]:
            report["mismatched"] = cov["mismatched"]
            report["note"] = (
                f"{len(cov['mismatched'])} module(s) name {table_arch} weights of another shape: wrong base model"
            )
    else:
        report.update(matched=None, unmatched=None, coverage=None)
        report["note"] = f"no key table for base model {table_arch!r}; pass --arch {'|'.join(ARCHES)} to match"
    report["ignored_keys"] = list(parsed.ignored)
    report["trigger_words"] = trigger_words(parsed.metadata)
    report["training"] = dict(training_summary(parsed.metadata))
    report["metadata"] = decode_metadata(parsed.metadata)
    return report


# --- trigger words --------------------------------------------------------------------------------------------------

_COMMENT_TRIGGER = re.compile(r"trigger(?:\s*words?)?\s*(?:is|are|:|=)\s*(.+)", re.I)


def _present(value: Any) -> bool:
    return value not in (None, "", "None", "none", "null") and value == value  # not NaN


def _top_tags(tag_frequency: Any, top: int) -> list[str]:
    if not isinstance(tag_frequency, Mapping):
        return []
    totals: dict[str, float] = {}
    for tags in tag_frequency.values():
        if not isinstance(tags, Mapping):
            continue
        for tag, count in tags.items():
            if isinstance(count, int | float) and not isinstance(count, bool):
                tag = str(tag).strip()
                if tag:
                    totals[tag] = totals.get(tag, 0) + count
    return [tag for tag, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]


def trigger_words(metadata: Mapping[str, str], top: int = TOP_TAGS) -> list[str]:
    """Likely trigger words from the header metadata (see the module docstring for the order)."""
    found: list[str] = []
    phrase = metadata.get("modelspec.trigger_phrase")
    if _present(phrase):
        found += [p.strip() for p in str(phrase).split(",")]
    comment = metadata.get("ss_training_comment")
    if _present(comment):
        m = _COMMENT_TRIGGER.search(str(comment))
        if m:
            found += [p.strip() for p in m.group(1).strip().rstrip(".").split(",")]
    found += _top_tags(_metadata_value(str(metadata.get("ss_tag_frequency", ""))), top)
    if not [f for f in found if f] and _present(metadata.get("ss_output_name")):
        found.append(str(metadata["ss_output_name"]).strip())
    seen: set[str] = set()
    out = []
    for word in found:
        if word and word.lower() not in seen:
            seen.add(word.lower())
            out.append(word)
    return out


# --- training metadata ----------------------------------------------------------------------------------------------

# (label, metadata keys joined with " / " when several are present)
_TRAINING_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("title", ("modelspec.title",)),
    ("author", ("modelspec.author",)),
    ("description", ("modelspec.description",)),
    ("license", ("modelspec.license",)),
    ("usage", ("modelspec.usage_hint",)),
    ("architecture", ("modelspec.architecture",)),
    ("trained on", ("ss_sd_model_name", "ss_base_model_version")),
    ("network", ("ss_network_module",)),
    ("network args", ("ss_network_args",)),
    ("dim / alpha", ("ss_network_dim", "ss_network_alpha")),
    ("optimizer", ("ss_optimizer",)),
    ("learning rate", ("ss_learning_rate",)),
    ("unet / text encoder lr", ("ss_unet_lr", "ss_text_encoder_lr")),
    ("scheduler", ("ss_lr_scheduler",)),
    ("warmup steps", ("ss_lr_warmup_steps",)),
    ("epoch / epochs", ("ss_epoch", "ss_num_epochs")),
    ("steps", ("ss_steps", "ss_max_train_steps")),
    ("train images", ("ss_num_train_images",)),
    ("regularisation images", ("ss_num_reg_images",)),
    ("batch size", ("ss_total_batch_size",)),
    ("resolution", ("ss_resolution", "modelspec.resolution")),
    ("precision", ("ss_mixed_precision",)),
    ("noise offset", ("ss_noise_offset",)),
    ("min SNR gamma", ("ss_min_snr_gamma",)),
    ("clip skip", ("ss_clip_skip",)),
    ("seed", ("ss_seed",)),
    ("output name", ("ss_output_name",)),
    ("comment", ("ss_training_comment",)),
)


def _timestamp(value: Any) -> str | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    if not 0 < seconds < 1e11:
        return None
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))  # no datetime.UTC: Python 3.10 runs ComfyUI too


def _datasets(dirs: Any) -> str | None:
    if not isinstance(dirs, Mapping) or not dirs:
        return None
    parts = []
    for name, info in dirs.items():
        if isinstance(info, Mapping):
            parts.append(f"{name} ({info.get('img_count', '?')} images x {info.get('n_repeats', '?')})")
        else:
            parts.append(str(name))
    return "; ".join(parts)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."


def training_summary(metadata: Mapping[str, str]) -> list[tuple[str, str]]:
    """(label, value) pairs of the training metadata worth reading (kohya ``ss_*``, ``modelspec.*``), in order.

    Absent and "None" values are left out; timestamps become UTC dates; dataset folders are summarised.
    """
    out: list[tuple[str, str]] = []
    for label, keys in _TRAINING_FIELDS:
        values = [_short(_metadata_value(str(metadata[k]))) for k in keys if _present(metadata.get(k))]
        if values:
            out.append((label, " / ".join(values)))
    datasets = _datasets(_metadata_value(str(metadata.get("ss_dataset_dirs", ""))))
    if datasets:
        out.append(("datasets", _short(datasets)))
    started = _timestamp(metadata.get("ss_training_started_at"))
    finished = _timestamp(metadata.get("ss_training_finished_at"))
    if started or finished:
        out.append(("trained", " to ".join(t for t in (started, finished) if t)))
    date = metadata.get("modelspec.date")
    if _present(date) and not (started or finished):
        out.append(("date", _short(date)))
    return out
