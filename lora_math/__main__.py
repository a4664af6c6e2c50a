"""``python -m lora_math inspect FILE [--arch sd15|sdxl|flux|auto] [--json]``: what a LoRA file holds and targets.

Prints one JSON object: format, base_model, rank, alpha, targets (adapter modules in the file), matched (count),
unmatched (module names), coverage (matched / targets) against the full-size key table of ``--arch`` (``auto``: the
base model guessed from the file), ignored_keys, trigger_words, header (the header metadata as Loom LoRA Info and the
web info panel show it: ``lora_math.report.header_view``) and metadata (the raw header, JSON values decoded). Modules that name a weight of another shape
(a LoRA for another base model) are listed in ``mismatched`` too; that is a report, not a refusal. Exit 0 when parsed; exit 2 with a one-line message on
stderr when the file is refused. Imports no ComfyUI.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import LoraFileError, LoraFormatError, LoraShapeError
from .formats import parse
from .formats.io import load_state_dict
from .names.keytables import ARCHES
from .report import file_report

SIDECAR = "adapter_config.json"


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
    return {"file": str(path), **file_report(parse(state_dict, metadata, _sidecar(path)), arch)}


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
