"""``python -m lora_math inspect FILE [--arch sd15|sdxl|flux|auto] [--json]``: what a LoRA file holds and targets.

Prints one JSON object: format, base_model, rank, alpha, targets (adapter modules in the file), matched (count),
unmatched (module names), coverage (matched / targets) against the full-size key table of ``--arch`` (``auto``: the
base model guessed from the file), ignored_keys, and the header metadata. Modules that name a weight of another shape
(a LoRA for another base model) are listed in ``mismatched`` too; that is a report, not a refusal. Exit 0 when parsed; exit 2 with a one-line message on
stderr when the file is refused. Imports no ComfyUI.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import LoraFileError, LoraFormatError, LoraShapeError
from .formats import ParsedLoRA, parse
from .io import load_state_dict
from .keymap import guess_base_model, match
from .keytables import ARCHES, load_keytable

SIDECAR = "adapter_config.json"


def _distinct(values: Iterable[float | int | None]) -> float | int | list | None:
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


def _sidecar(path: Path) -> dict | None:
    side = path.with_name(SIDECAR)
    if not side.is_file():
        return None
    try:
        config = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LoraFormatError(f"{side}: cannot read it as JSON ({exc}); fix or remove it") from exc
    return config if isinstance(config, dict) else None


def inspect_file(path: Path, arch: str = "auto") -> dict[str, Any]:
    """The report ``inspect`` prints, as a dict. Raises the lora_math errors on refused files."""
    state_dict, metadata = load_state_dict(path)
    parsed: ParsedLoRA = parse(state_dict, metadata, _sidecar(path))
    base = guess_base_model(parsed)
    table_arch = base if arch == "auto" else arch
    report: dict[str, Any] = {
        "file": str(path),
        "format": parsed.format,
        "base_model": base,
        "rank": _distinct(a.rank for a in parsed.modules.values()),
        "alpha": _distinct(getattr(a, "alpha", None) for a in parsed.modules.values()),
        "targets": len(parsed.modules),
        "arch": table_arch,
    }
    if table_arch in ARCHES:
        km = match(parsed, load_keytable(table_arch), strict=False)
        report.update(matched=len(km.matched), unmatched=list(km.unmatched), coverage=round(km.coverage, 4))
        if km.mismatched:
            report["mismatched"] = list(km.mismatched)
            report["note"] = (
                f"{len(km.mismatched)} module(s) name {table_arch} weights of another shape: wrong base model"
            )
    else:
        report.update(matched=None, unmatched=None, coverage=None)
        report["note"] = f"no key table for base model {table_arch!r}; pass --arch {'|'.join(ARCHES)} to match"
    report["ignored_keys"] = list(parsed.ignored)
    report["metadata"] = {k: _metadata_value(v) for k, v in parsed.metadata.items()}
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_math", description="LoRA Loom file tools")
    sub = parser.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="print format, base model, rank, alpha and key coverage of a LoRA file")
    ins.add_argument("file", type=Path)
    ins.add_argument("--arch", choices=(*ARCHES, "auto"), default="auto", help="key table to match against")
    ins.add_argument("--json", action="store_true", help="compact one-line JSON (default: indented)")
    args = parser.parse_args(argv)

    try:
        report = inspect_file(args.file, args.arch)
    except (LoraFileError, LoraFormatError, LoraShapeError) as exc:
        message = " ".join(str(exc).split())
        print(f"lora_math inspect: {type(exc).__name__}: {message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"lora_math inspect: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=None if args.json else 2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
