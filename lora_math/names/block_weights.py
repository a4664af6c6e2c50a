"""Block weights: per-block strength multipliers, from a ``blocks`` text.

:func:`parse_block_weights` reads a ``blocks`` text in one of four forms:

1. A vector of numbers, as in hako-mikan's sd-webui-lora-block-weight (``scripts/lora_block_weight.py``,
   ``BLOCKID17/26/12/20`` and ``BLOCKIDFLUX``) and the Inspire Pack (``inspire/lora_block_weight.py``,
   ``resources/lbw-preset.txt``). The length picks the layout (:data:`blocks.LAYOUTS`, a table in ``blocks``).
   The 17/12/58 layouts are exactly the blocks a standard attention LoRA has (checked against the key tables in
   the unit tests). Blocks a layout has no entry for keep weight 1 (the A1111 extension sets them to 0; the Inspire
   Pack shifts every later value by position) and a warning names them. A length that fits no layout is applied
   by position to BASE and the LoRA's own blocks in order, as the Inspire Pack does (the last value repeats when the
   vector is short), with a warning. A known length for another architecture is an error. Inspire's random and
   variable letters (``R``, ``U``, ``A``, ``B``) are refused. A ``NAME:`` label in front of a vector is ignored.
2. A preset name (:data:`PRESETS`): ``NONE``, ``ALL``, ``ALL0.5``, ``INS``, ``IND``, ``INALL``, ``MIDD``,
   ``MIDD0.2``, ``MIDD0.8``, ``MOUT``, ``OUTD``, ``OUTS``, ``OUTALL``, ``MIDALL``, with the Inspire spellings
   (``SD-INS``, ``SDXL-OUTALL``, ``SD-LyC-INALL``, ``FLUX-DBL-FRONT`` …). Their values are those of the A1111
   extension's built-in presets and Inspire's ``lbw-preset.txt``, written as block ranges so that they also cover
   the blocks a 17-value vector has no entry for (``INS`` = BASE and IN00–IN04, ``OUTALL`` = BASE and every OUT
   block). ``INS, IND, MIDD…, MOUT, OUTD, OUTS`` are defined for SD1/SD2 only.
3. Explicit ``SELECTOR:VALUE`` pairs (``=`` works too), separated by commas, semicolons or new lines:
   ``IN04:0.5, MID:0, OUT:1, *:0.2``. Selectors: a block (``IN04``, ``IN4``, ``MID``/``M00``, ``OUT11``, ``D05``,
   ``S12``), a group (``IN``, ``OUT``, ``D``/``DOUBLE``, ``S``/``SINGLE``: every block of it), a range
   (``IN05-OUT06``, ``D00-D04``, in block order), ``BASE``, ``CLIP``, ``T5``, for FLUX ``IN``/``OUT`` (its input and
   final layers), and ``*``/``DEFAULT`` for everything not named. The most specific selector wins: block or range,
   then group, then ``*``; a part (CLIP, T5, FLUX IN/OUT) before BASE before ``*``. Among equals the later wins.
4. Empty text: no block weights.

Errors are ``ValueError`` naming the input, the entry number, its character position and the token. Things that
do not stop a run (a layout with no entry for some of the LoRA's blocks, entries naming blocks the LoRA does not
have, a vector of unknown length) are returned as ``BlockWeights.warnings`` for the caller to log once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from ..entries import entry_label, split_entries
from .blocks import (
    ARCH_LAYOUTS,
    ARCH_NAMES,
    FLUX_FAMILY,
    KNOWN_ARCHES,
    LAYOUTS,
    PRESETS,
    UNIVERSE,
    Layout,
    base_part,
    block_group,
    block_id,
    block_ids,
    preset,
    sort_key,
)

__all__ = ["PRESETS", "BlockWeights", "parse_block_weights"]  # PRESETS: from blocks, re-exported

# --- the result -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockWeights:
    """Per-block strength multipliers; call it (or :meth:`multiplier`) with a ModelPatcher key.

    blocks: block id (``IN04``, ``MID``, ``D05``, ``BASE``) or BASE part (``CLIP``, ``T5``, FLUX ``IN``/``OUT``)
    -> multiplier. groups: ``IN``/``OUT``/``MID``/``D``/``S`` -> multiplier for blocks not in ``blocks``.
    default: for everything else. form: ``none``, ``preset``, ``vector``, ``positional`` or ``explicit``.
    """

    text: str = ""
    form: str = "none"
    layout: str | None = None
    blocks: Mapping[str, float] = field(default_factory=dict)
    groups: Mapping[str, float] = field(default_factory=dict)
    default: float = 1.0
    warnings: tuple[str, ...] = ()

    def multiplier(self, model_key: str) -> float:
        bid = block_id(model_key)
        if bid == "BASE":
            part = base_part(model_key)
            if part is not None and part in self.blocks:
                return self.blocks[part]
            return self.blocks.get("BASE", self.default)
        if bid in self.blocks:
            return self.blocks[bid]
        group = block_group(bid)
        if group in self.groups:
            return self.groups[group]
        return self.default

    __call__ = multiplier

    @property
    def is_identity(self) -> bool:
        """True when every key gets 1.0 (no block weights to apply)."""
        return self.default == 1.0 and all(v == 1.0 for v in (*self.blocks.values(), *self.groups.values()))


# --- parsing --------------------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_LABEL = re.compile(r"^\s*([A-Za-z_][\w .+-]*?)\s*:\s*(.*)$", re.S)


def _number(value: str) -> float | None:
    value = value.strip()
    if not _NUMBER.match(value):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _fmt(value: float) -> str:
    return f"{value:g}"


def _list(items: Iterable[str], limit: int = 8) -> str:
    items = list(items)
    head = ", ".join(items[:limit])
    return head + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _layouts_help(arch: str) -> str:
    lengths = ARCH_LAYOUTS.get(arch, tuple(LAYOUTS))
    return " or ".join(f"{n} ({LAYOUTS[n].brief()})" for n in lengths)


def parse_block_weights(
    text: str,
    block_ids_present: Collection[str] | None,
    arch: str,
    *,
    input_name: str = "blocks",
) -> BlockWeights:
    """Parse a ``blocks`` text (vector, preset, explicit pairs or empty) for a model of ``arch``.

    block_ids_present: what the LoRA patches on this model (:func:`present_blocks` of its matched keys), used for
    warnings and for vectors of unknown length; None skips both (e.g. a syntax check before the model is known).
    arch: ``sd15``, ``sd2``, ``sdxl``, ``flux`` (:func:`arch_of`), anything else for "no block layout known";
    ``unknown`` accepts every layout length.
    Raises ``ValueError`` starting with ``input_name``.
    """
    text = text or ""
    if not text.strip():
        return BlockWeights(text=text)
    present = None if block_ids_present is None else frozenset(block_ids_present)
    stripped = text.strip()
    if stripped.startswith("%"):
        raise ValueError(
            f"{input_name}: the Inspire Pack's '%…' form numbers blocks by their position in the LoRA; "
            "write block ids instead, e.g. 'IN04:0.5, MID:0, OUT:1'"
        )
    named = preset(stripped)
    if named is not None:
        name, form, arches = named
        if arches is not None and arch in KNOWN_ARCHES and arch not in arches:
            fits = [n for n, (_, a) in PRESETS.items() if a is None or arch in a]
            raise ValueError(
                f"{input_name}: preset {name} is defined for {'/'.join(ARCH_NAMES[a] for a in arches)} models, "
                f"but this model is {ARCH_NAMES[arch]}; "
                f"presets for it: {', '.join(fits)}"
            )
        result = _parse_explicit(form, present, arch, input_name, warn_absent=False)
        return BlockWeights(stripped, "preset", name, result.blocks, result.groups, result.default, result.warnings)
    offset = text.index(stripped)
    tokens = split_entries(stripped, offset)
    label = _LABEL.match(stripped)
    if label and not _is_selector(label.group(1)) and len(tokens) > 1:
        if not any(":" in t or "=" in t for _, _, t in tokens[1:]):  # "NAME:1,0,0,…" as preset files write them
            tokens = split_entries(label.group(2), offset + label.start(2))
    if not any(":" in t or "=" in t for _, _, t in tokens):
        return _parse_vector(stripped, tokens, present, arch, input_name)
    return _parse_explicit(stripped, present, arch, input_name, warn_absent=True, tokens=tokens)


def _parse_vector(text, tokens, present, arch, input_name) -> BlockWeights:
    values: list[float] = []
    for n, pos, token in tokens:
        value = _number(token)
        if value is None and len(tokens) == 1:
            raise ValueError(
                f"{entry_label(input_name, n, pos, token)}: neither a preset ({', '.join(PRESETS)}) nor a number; "
                "to set one block write e.g. 'IN04:0.5'"
            )
        if value is None:
            hint = ""
            if token.upper() in ("R", "U", "A", "B") or token.upper().startswith("X"):
                hint = " (the Inspire Pack's random R/U and variable A/B/X values are not supported)"
            raise ValueError(f"{entry_label(input_name, n, pos, token)}: not a number{hint}")
        values.append(value)
    count = len(values)
    layout = LAYOUTS.get(count)
    if layout is not None and arch in ARCH_LAYOUTS and arch not in layout.arches:
        raise ValueError(
            f"{input_name}: {count} values is the {layout.name} block layout ({layout.brief()}), "
            f"but this model is {ARCH_NAMES.get(arch, arch)}: give {_layouts_help(arch)} values, a preset name, "
            "or block:value pairs such as 'IN04:0.5, OUT:1'"
        )
    if layout is not None and (arch in ARCH_LAYOUTS or arch == "unknown"):
        blocks = dict(zip(layout.ids, values, strict=True))
        return BlockWeights(
            text, "vector", layout.name, blocks, {}, 1.0, _vector_warnings(blocks, present, layout, input_name)
        )
    if arch not in ARCH_LAYOUTS and arch != "unknown":
        raise ValueError(
            f"{input_name}: block vectors are defined for SD1/SD2, SDXL and FLUX models, but this model is "
            f"{ARCH_NAMES.get(arch, arch)}; "
            "use block:value pairs (e.g. 'BASE:0.5, *:1') or a preset such as NONE, ALL or ALL0.5"
        )
    return _positional(text, values, present, input_name)


def _vector_warnings(blocks, present, layout: Layout, input_name: str) -> tuple[str, ...]:
    if present is None:
        return ()
    warnings = []
    numbered = sorted((b for b in present if block_group(b) is not None), key=sort_key)
    missing = [b for b in numbered if b not in blocks]
    if missing:
        full = max(ARCH_LAYOUTS[layout.arches[0]])
        warnings.append(
            f"{input_name}: the {layout.name} layout has no entry for {_list(missing)}, which this LoRA patches; "
            "they keep weight 1" + (f" (the {full}-value layout sets them)" if full != len(layout.ids) else "")
        )
    unused = [f"{b}={_fmt(v)}" for b, v in blocks.items() if block_group(b) is not None and b not in present and v != 1]
    if unused:
        warnings.append(f"{input_name}: {_list(unused)} set, but this LoRA has no weights in those blocks (ignored)")
    return tuple(warnings)


def _positional(text: str, values: list[float], present, input_name: str) -> BlockWeights:
    """Inspire's rule for a vector of any length: BASE, then the LoRA's own blocks in order; short: last repeats."""
    known = ", ".join(str(n) for n in sorted(LAYOUTS))
    count = f"{len(values)} value{'s' if len(values) != 1 else ''}"
    if present is None:
        warning = (
            f"{input_name}: {count} fit no block layout ({known} values); they will be applied in order "
            "to BASE and the LoRA's blocks, as the Inspire Pack does"
        )
        return BlockWeights(text, "positional", None, {"BASE": values[0]}, {}, 1.0, (warning,))
    order = ["BASE", *sorted((b for b in present if block_group(b) is not None), key=sort_key)]
    blocks = {bid: values[min(i, len(values) - 1)] for i, bid in enumerate(order)}
    note = ""
    if len(values) < len(order):
        note = f"; the last value repeats for the remaining {len(order) - len(values)}"
    elif len(values) > len(order):
        note = f"; {len(values) - len(order)} extra value(s) ignored"
    warning = (
        f"{input_name}: {count} fit no block layout ({known} values); applied in order to "
        f"{_list(order, 12)} as the Inspire Pack does{note}"
    )
    return BlockWeights(text, "positional", None, blocks, {}, 1.0, (warning,))


_GROUP_NAMES = {
    "IN": "IN", "OUT": "OUT", "D": "D", "DOUBLE": "D", "S": "S", "SINGLE": "S", "J": "J", "JOINT": "J",
    "L": "L", "LAYERS": "L", "B": "B", "BLOCKS": "B",
}  # fmt: skip
_BLOCK_TOKEN = re.compile(r"^(IN|OUT|D|S|J|L|B|M)(\d{1,2})$")


def _is_selector(text: str) -> bool:
    sel = text.strip().upper().replace(" ", "")
    if sel in ("*", "DEFAULT", "BASE", "CLIP", "T5", "MID", *_GROUP_NAMES):
        return True
    return bool(_BLOCK_TOKEN.match(sel)) or (
        "-" in sel and all(_BLOCK_TOKEN.match(s) or s == "MID" for s in sel.split("-"))
    )


def _block(sel: str, arch: str) -> str | None:
    """A single block selector as a block id (``IN4`` -> ``IN04``, ``M00`` -> ``MID``), or None."""
    if sel == "MID":
        return "MID"
    m = _BLOCK_TOKEN.match(sel)
    if not m:
        return None
    if m.group(1) == "M":
        return "MID" if int(m.group(2)) == 0 else None
    return f"{m.group(1)}{int(m.group(2)):02d}"


def _check_in_arch(bid: str, arch: str, where: str, label: str | None = None) -> None:
    universe = UNIVERSE.get(arch)
    if universe is None or bid in universe:
        return
    if arch in FLUX_FAMILY:
        doubles = [b for b in universe if b.startswith("D")]
        singles = [b for b in universe if b.startswith("S")]
        names = f"D00-{doubles[-1]}, S00-{singles[-1]} (IN and OUT alone mean its input and final layers)"
    elif "MID" not in universe:
        names = f"{universe[0]}-{universe[-1]}"
    else:
        names = f"IN00-{universe[universe.index('MID') - 1]}, MID, OUT00-{universe[-1]}"
    raise ValueError(f"{where}: {label or bid} is not a block of {ARCH_NAMES[arch]} models, which have {names}")


def _parse_explicit(text, present, arch, input_name, *, warn_absent, tokens=None) -> BlockWeights:
    blocks: dict[str, float] = {}
    groups: dict[str, float] = {}
    default = 1.0
    named: list[tuple[str, tuple[str, ...], str]] = []  # (label, block ids or groups it covers, kind)
    flux = arch in FLUX_FAMILY
    for n, pos, token in tokens if tokens is not None else split_entries(text):
        where = entry_label(input_name, n, pos, token)
        sep = min((i for i in (token.find(":"), token.find("=")) if i >= 0), default=-1)
        if sep < 0:
            raise ValueError(
                f"{where}: expected SELECTOR:VALUE (e.g. 'IN04:0.5', 'OUT:1', '*:0'); a whole vector of numbers or a "
                "preset name must be the only thing in the text"
            )
        sel, raw_value = token[:sep].strip().upper().replace(" ", ""), token[sep + 1 :]
        value = _number(raw_value)
        if value is None:
            raise ValueError(f"{where}: {raw_value.strip()!r} is not a number")
        if sel in ("*", "DEFAULT"):
            default = value
        elif sel in ("BASE", "CLIP", "T5") or (flux and sel in ("IN", "OUT")):
            blocks[sel] = value
            named.append((sel, (sel,), "part"))
        elif sel in _GROUP_NAMES or sel == "MID":
            group = _GROUP_NAMES.get(sel, "MID")
            if arch in UNIVERSE and not any(block_group(b) == group for b in UNIVERSE[arch]):
                _check_in_arch("MID" if group == "MID" else f"{group}00", arch, where, label=sel)
            if group == "MID":
                blocks["MID"] = value
            else:
                groups[group] = value
            named.append((sel, (group,), "group"))
        elif "-" in sel:
            ids = _range(sel, arch, present, where)
            for bid in ids:
                blocks[bid] = value
            named.append((sel, ids, "range"))
        else:
            bid = _block(sel, arch)
            if bid is None:
                raise ValueError(
                    f"{where}: unknown selector {sel!r}; use a block (IN04, MID, OUT11, D05, S12, J03, L10, B20), a "
                    "group (IN, OUT, D, S, J, L, B), a range (IN05-OUT06), BASE, CLIP, T5 or *"
                )
            _check_in_arch(bid, arch, where)
            blocks[bid] = value
            named.append((sel, (bid,), "block"))
    warnings: list[str] = []
    if warn_absent and present is not None:
        absent = [label for label, ids, kind in named if label != "BASE" and not _covers(ids, kind, present)]
        if absent:
            verb = "names" if len(absent) == 1 else "name"
            warnings.append(f"{input_name}: {_list(absent)} {verb} no block this LoRA patches (ignored)")
    return BlockWeights(text, "explicit", None, blocks, groups, default, tuple(warnings))


def _covers(ids: tuple[str, ...], kind: str, present: frozenset[str]) -> bool:
    if kind == "group":
        return any(block_group(b) == ids[0] for b in present)
    return any(b in present for b in ids)


def _range(sel: str, arch: str, present, where: str) -> tuple[str, ...]:
    ends = sel.split("-")
    if len(ends) != 2:
        raise ValueError(f"{where}: a range has two ends, like IN05-OUT06")
    a, b = (_block(e, arch) for e in ends)
    if a is None or b is None:
        raise ValueError(f"{where}: both ends of a range must be blocks (IN04, MID, OUT05, D00, S10 …)")
    kinds = ({"IN", "MID", "OUT"}, {"D", "S"}, {"J"}, {"L"}, {"B"})
    if not any({block_group(a), block_group(b)} <= kind for kind in kinds):
        raise ValueError(
            f"{where}: {a} and {b} belong to different kinds of model (UNet IN/MID/OUT, FLUX D/S, SD3 J, Z-Image L, "
            "Qwen-Image B)"
        )
    for bid in (a, b):
        _check_in_arch(bid, arch, where)
    lo, hi = sorted((a, b), key=sort_key)
    universe = set(UNIVERSE.get(arch, ()))
    if arch not in UNIVERSE:  # unknown architecture: every numbered block between the ends, up to two digits
        universe = {
            *UNIVERSE["sd15"],
            *block_ids("D", range(100)),
            *block_ids("S", range(100)),
            *block_ids("IN", range(100)),
        }
        universe |= {
            *block_ids("OUT", range(100)),
            *block_ids("J", range(100)),
            *block_ids("L", range(100)),
            *block_ids("B", range(100)),
        }
    universe |= {p for p in (present or ()) if block_group(p) is not None}
    return tuple(sorted((x for x in universe if sort_key(lo) <= sort_key(x) <= sort_key(hi)), key=sort_key))
