"""What a parsed LoRA is, for people: format, base model, rank/alpha, coverage, trigger words, header metadata.

Shared by ``python -m lora_math inspect`` (:func:`file_report`, printed as JSON), the Loom LoRA Info node and the web
info panel's route (the same pieces as text / JSON). The header metadata is one view for all three,
:func:`header_view` (``lora_math.header``: every key shown, writer, trigger words from every source the writers use).
Pure: a :class:`ParsedLoRA` and key tables in, plain dicts and strings out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import LoraFormatError
from .formats import ParsedLoRA
from .formats.header import MAX_VALUE_CHARS, HeaderView, decode_value, header_view, trigger_words, writer
from .names.families import from_file
from .names.keymap import match
from .names.keytables import ARCHES, load_keytable
from .names.near_misses import diagnose
from .names.spellings import split_role

__all__ = [
    "MAX_VALUE_CHARS",
    "HeaderView",
    "coverage",
    "decode_metadata",
    "distinct",
    "file_report",
    "header_view",
    "rank_alpha",
    "trigger_words",
    "writer",
]


def distinct(values: Iterable[float | int | None]) -> float | int | list | None:
    """One value when all agree, a sorted list when they differ, None when there are none."""
    found = sorted({v for v in values if v is not None})
    if not found:
        return None
    return found[0] if len(found) == 1 else found


def decode_metadata(metadata: Mapping[str, str]) -> dict[str, Any]:
    return {k: decode_value(v) for k, v in metadata.items()}


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
        parsed = dataclasses.replace(parsed, modules=kept)  # keeps what else the file says (a widened img_in)
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
    base = from_file(parsed)
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
    view = header_view(parsed.metadata)
    report["ignored_keys"] = list(parsed.ignored)
    report["trigger_words"] = list(view.trigger_words)
    report["header"] = view.to_json()
    report["metadata"] = decode_metadata(parsed.metadata)  # the header itself, nothing cut (the view cuts)
    return report
