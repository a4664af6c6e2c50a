"""Why a file's modules match nothing, when a simple misspelling (a doubled or extra prefix) explains it."""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..formats import ParsedLoRA
from .keymap import alias_table

__all__ = ["diagnose"]

# A component prefix written twice (``lora_unet_unet_…``, ``transformer.transformer.…``): a bad rename or export.
_DOUBLED = re.compile(
    r"^(lora_unet_|lora_transformer_|lycoris_|unet\.|transformer\.|diffusion_model\.)"
    r"(unet[._]|transformer[._]|diffusion_model[._]|model[._]diffusion_model[._])"
)
_REWRITES = (
    ("the doubled prefix", lambda name: _DOUBLED.sub(r"\1", name, count=1)),
    ("the leading segment", lambda name: name.split(".", 1)[1] if "." in name else name),
)


def diagnose(parsed: ParsedLoRA, model_keys: Mapping[str, tuple[int, ...]]) -> str | None:
    """Why most of a file's modules match nothing, when a simple misspelling explains it; None otherwise.

    Tries each rewrite of :data:`_REWRITES` on every unmatched module name and reports the one that makes at least
    half of the file match, naming one module before and after.
    """
    table = alias_table(model_keys)
    names = [n for n in parsed.modules if table.resolve(n) is None]
    if not names or len(names) < len(parsed.modules) / 2:
        return None
    best: tuple[str, list[tuple[str, str]]] | None = None
    for why, rewrite in _REWRITES:
        hits = [(n, r) for n in names if (r := rewrite(n)) != n and table.resolve(r) is not None]
        if hits and (best is None or len(hits) > len(best[1])):
            best = (why, hits)
    if best is None or len(best[1]) < len(names) / 2:
        return None
    why, hits = best
    before, after = hits[0]
    return (
        f"recognised {len(parsed.modules)} {parsed.format} modules, but their names do not match this model: "
        f"{len(hits)} would with {why} removed ({before!r} should read {after!r}); the file was renamed or "
        "exported wrongly: re-export it, or rename its keys"
    )
