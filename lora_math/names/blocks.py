"""Blocks: which block of the denoiser a model key is in, and the block layouts of each family (block-weight
vectors, their lengths and orders). Parsing a ``blocks`` text is ``block_weights``.

:func:`block_id` names the block of a ComfyUI ModelPatcher key:

- UNets (SD1/SD2/SDXL, LDM key names): ``diffusion_model.input_blocks.N…`` -> ``INnn``,
  ``diffusion_model.middle_block…`` -> ``MID``, ``diffusion_model.output_blocks.N…`` -> ``OUTnn``.
- FLUX.1 / FLUX.2 / Chroma: ``diffusion_model.double_blocks.N…`` -> ``Dnn``, ``….single_blocks.N…`` -> ``Snn``.
- SD3 / SD3.5: ``diffusion_model.joint_blocks.N…`` -> ``Jnn``; Z-Image: ``diffusion_model.layers.N…`` -> ``Lnn`` (its
  noise and context refiners are BASE); Qwen-Image: ``diffusion_model.transformer_blocks.N…`` -> ``Bnn``.
- Everything else is ``BASE``: the text encoders (``clip_l/clip_g/clip_h.…``, ``t5xxl.…``) and the denoiser's keys
  outside the numbered blocks (UNet ``time_embed``, ``label_emb``, ``out``; FLUX ``img_in``, ``txt_in``, ``time_in``,
  ``vector_in``, ``guidance_in``, ``final_layer``). That is what the Inspire Pack's LoRA Block Weight does with them
  (its "others" take the BASE value); the A1111 extension leaves such keys at 1 instead.

Within BASE, :func:`base_part` tells ``CLIP`` (CLIP-L/G/H), ``T5`` and, for FLUX, ``IN`` (the ``*_in`` layers) and
``OUT`` (``final_layer``) apart; the A1111 FLUX layout (61 values) and the explicit form can set them separately.

Block-weight vectors (``block_weights``) pick a layout (:data:`LAYOUTS`) by their length:

======  =========  =====================================================================
length  for        entries
======  =========  =====================================================================
17      SD1 / SD2  BASE, IN01, IN02, IN04, IN05, IN07, IN08, MID, OUT03 … OUT11
26      SD1 / SD2  BASE, IN00 … IN11, MID, OUT00 … OUT11 (LyCORIS / conv layers too)
12      SDXL       BASE, IN04, IN05, IN07, IN08, MID, OUT00 … OUT05
20      SDXL       BASE, IN00 … IN08, MID, OUT00 … OUT08
58      FLUX       BASE, D00 … D18, S00 … S37 (Inspire Pack, full FLUX LoRA)
61      FLUX       CLIP, T5, IN, D00 … D18, S00 … S37, OUT (A1111 / Forge extension)
======  =========  =====================================================================
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "ARCH_LAYOUTS",
    "LAYOUTS",
    "PRESETS",
    "Layout",
    "base_part",
    "block_group",
    "block_ids",
    "block_id",
    "present_blocks",
    "preset",
    "sort_key",
]

# --- block ids of model keys ----------------------------------------------------------------------------------------

_UNET_BLOCK = re.compile(r"^diffusion_model\.(input_blocks|output_blocks)\.(\d+)\.")
_DIT_BLOCK = re.compile(
    r"^diffusion_model\.(double_blocks|single_blocks|joint_blocks|layers|transformer_blocks)\.(\d+)\."
)
_FLUX_IN = re.compile(r"^diffusion_model\.(img_in|txt_in|time_in|vector_in|guidance_in)\.")
_TEXT_ENCODERS = {"clip_l.": "CLIP", "clip_g.": "CLIP", "clip_h.": "CLIP", "t5xxl.": "T5"}
_BLOCK_PREFIX = {
    "input_blocks": "IN",
    "output_blocks": "OUT",
    "double_blocks": "D",
    "single_blocks": "S",
    "joint_blocks": "J",
    "layers": "L",
    "transformer_blocks": "B",
}


def block_id(model_key: str) -> str:
    """``INnn``, ``MID``, ``OUTnn`` (UNet), ``Dnn``, ``Snn`` (FLUX family), ``Jnn`` (SD3), ``Lnn`` (Z-Image), ``Bnn``
    (Qwen-Image) or ``BASE`` for a ModelPatcher key."""
    m = _UNET_BLOCK.match(model_key) or _DIT_BLOCK.match(model_key)
    if m:
        return f"{_BLOCK_PREFIX[m.group(1)]}{int(m.group(2)):02d}"
    if model_key.startswith("diffusion_model.middle_block."):
        return "MID"
    return "BASE"


def base_part(model_key: str) -> str | None:
    """For a BASE key: ``CLIP``, ``T5``, FLUX ``IN`` (``*_in`` layers) or ``OUT`` (``final_layer``); else None."""
    for prefix, part in _TEXT_ENCODERS.items():
        if model_key.startswith(prefix):
            return part
    if _FLUX_IN.match(model_key):
        return "IN"
    if model_key.startswith("diffusion_model.final_layer."):
        return "OUT"
    return None


def present_blocks(model_keys: Iterable[str]) -> frozenset[str]:
    """Block ids (and BASE parts) of the given keys: what a LoRA patching them has."""
    out: set[str] = set()
    for key in model_keys:
        bid = block_id(key)
        out.add(bid)
        if bid == "BASE":
            part = base_part(key)
            if part is not None:
                out.add(part)
    return frozenset(out)


# --- layouts --------------------------------------------------------------------------------------------------------


def block_ids(prefix: str, numbers: Iterable[int]) -> tuple[str, ...]:
    return tuple(f"{prefix}{n:02d}" for n in numbers)


@dataclass(frozen=True)
class Layout:
    """A block-weight vector layout: its name, the architectures it is for, and the block id of each entry."""

    name: str
    arches: tuple[str, ...]
    ids: tuple[str, ...]

    def brief(self) -> str:
        """``BASE,IN01,…`` with runs of numbered blocks shortened to ``OUT03-OUT11``."""
        out: list[str] = []
        run: list[str] = []

        def flush() -> None:
            if len(run) > 2:
                out.append(f"{run[0]}-{run[-1]}")
            else:
                out.extend(run)
            run.clear()

        for bid in self.ids:
            if run and _same_run(run[-1], bid):
                run.append(bid)
                continue
            flush()
            run.append(bid)
        flush()
        return ",".join(out)


def _same_run(a: str, b: str) -> bool:
    ka, kb = sort_key(a), sort_key(b)
    return ka[0] == kb[0] and ka[0] in (1, 3, 4, 5) and kb[1] == ka[1] + 1


SD1_ARCHES = ("sd15", "sd2")
LAYOUTS: Mapping[int, Layout] = MappingProxyType(
    {
        17: Layout("SD1-17", SD1_ARCHES, ("BASE", *block_ids("IN", (1, 2, 4, 5, 7, 8)), "MID", *block_ids("OUT", range(3, 12)))),
        26: Layout("SD1-26", SD1_ARCHES, ("BASE", *block_ids("IN", range(12)), "MID", *block_ids("OUT", range(12)))),
        12: Layout("SDXL-12", ("sdxl",), ("BASE", *block_ids("IN", (4, 5, 7, 8)), "MID", *block_ids("OUT", range(6)))),
        20: Layout("SDXL-20", ("sdxl",), ("BASE", *block_ids("IN", range(9)), "MID", *block_ids("OUT", range(9)))),
        58: Layout("FLUX-58", ("flux", "chroma"), ("BASE", *block_ids("D", range(19)), *block_ids("S", range(38)))),
        61: Layout("FLUX-61", ("flux",), ("CLIP", "T5", "IN", *block_ids("D", range(19)), *block_ids("S", range(38)), "OUT")),
    }
)  # fmt: skip
ARCH_LAYOUTS: Mapping[str, tuple[int, ...]] = MappingProxyType(
    {"sd15": (17, 26), "sd2": (17, 26), "sdxl": (12, 20), "flux": (58, 61), "chroma": (58,)}
)


def _dit(double: int, single: int) -> tuple[str, ...]:
    return (*block_ids("D", range(double)), *block_ids("S", range(single)))


# Numbered blocks of each full-size architecture, for ranges and for checking block names.
UNIVERSE: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "sd15": (*block_ids("IN", range(12)), "MID", *block_ids("OUT", range(12))),
        "sd2": (*block_ids("IN", range(12)), "MID", *block_ids("OUT", range(12))),
        "sdxl": (*block_ids("IN", range(9)), "MID", *block_ids("OUT", range(9))),
        "flux": _dit(19, 38),
        "chroma": _dit(19, 38),
        "flux2": _dit(8, 48),
        "flux2_klein_4b": _dit(5, 20),
        "flux2_klein_9b": _dit(8, 24),
        "sd35_large": block_ids("J", range(38)),
        "sd35_medium": block_ids("J", range(24)),
        "z_image": block_ids("L", range(30)),
        "qwen_image": block_ids("B", range(60)),
    }
)
UNET_ARCHES = ("sd15", "sd2", "sdxl")
FLUX_FAMILY = ("flux", "chroma", "flux2", "flux2_klein_4b", "flux2_klein_9b")
ARCH_NAMES = {
    "sd15": "SD1.5", "sd2": "SD2", "sdxl": "SDXL", "flux": "FLUX", "chroma": "Chroma", "flux2": "FLUX.2 [dev]",
    "flux2_klein_4b": "FLUX.2 [klein] 4B", "flux2_klein_9b": "FLUX.2 [klein] 9B", "sd3": "SD3",
    "sd35_large": "SD3.5 Large", "sd35_medium": "SD3.5 Medium", "z_image": "Z-Image", "qwen_image": "Qwen-Image",
}  # fmt: skip
KNOWN_ARCHES = tuple(ARCH_NAMES)
_GROUP_RANK = {"BASE": 0, "IN": 1, "MID": 2, "OUT": 3, "D": 4, "S": 5, "J": 6, "L": 7, "B": 8}
_NUMBERED = re.compile(r"^(IN|OUT|D|S|J|L|B)(\d+)$")


def sort_key(bid: str) -> tuple[int, int]:
    m = _NUMBERED.match(bid)
    if m:
        return _GROUP_RANK[m.group(1)], int(m.group(2))
    return _GROUP_RANK.get(bid, 9), 0


def block_group(bid: str) -> str | None:
    m = _NUMBERED.match(bid)
    if m:
        return m.group(1)
    return "MID" if bid == "MID" else None


# --- presets --------------------------------------------------------------------------------------------------------

# name -> (explicit form, architectures it is defined for or None for all). Values from the A1111 extension's
# DEF_WEIGHT_PRESET and the Inspire Pack's lbw-preset.txt (SD-*/SDXL-*/FLUX-DBL-*), as block ranges.
PRESETS: Mapping[str, tuple[str, tuple[str, ...] | None]] = MappingProxyType(
    {
        "NONE": ("*:0", None),
        "ALL": ("*:1", None),
        "ALL0.5": ("*:0.5", None),
        "INALL": ("*:0, BASE:1, IN:1", UNET_ARCHES),
        "MIDALL": ("*:0, BASE:1, MID:1", UNET_ARCHES),
        "OUTALL": ("*:0, BASE:1, OUT:1", UNET_ARCHES),
        "INS": ("*:0, BASE:1, IN00-IN04:1", SD1_ARCHES),
        "IND": ("*:0, BASE:1, IN05-IN11:1", SD1_ARCHES),
        "MIDD": ("*:0, BASE:1, IN05-OUT06:1", SD1_ARCHES),
        "MIDD0.2": ("*:0, BASE:1, IN08:0.2, MID:0.4, OUT03:0.4, OUT04:0.2", SD1_ARCHES),
        "MIDD0.8": ("*:0, BASE:1, IN07:0.5, IN08:0.8, MID:0.8, OUT03:0.4", SD1_ARCHES),
        "MOUT": ("*:0, BASE:1, IN08:1, MID:1, OUT00-OUT08:1, OUT09:0.5", SD1_ARCHES),
        "OUTD": ("*:0, BASE:1, OUT00-OUT06:1", SD1_ARCHES),
        "OUTS": ("*:0, BASE:1, OUT07-OUT11:1", SD1_ARCHES),
        # Inspire's FLUX-DBL-* vectors (18 values) as its positional rule applies them to a full FLUX LoRA.
        "FLUX-DBL-FRONT": ("*:0, BASE:1, D00-D04:1", ("flux", "chroma")),
        "FLUX-DBL-MID": ("*:0, D05-D10:1", ("flux", "chroma")),
        "FLUX-DBL-TAIL": ("*:0, D11-D18:1, S:1", ("flux", "chroma")),
    }
)
_PRESET_ALIASES = {
    **{f"SD-{n}": n for n in ("NONE", "ALL", "ALL0.5", "INS", "IND", "INALL", "MIDD", "MIDD0.2", "MIDD0.8", "MOUT")},
    **{f"SD-{n}": n for n in ("OUTD", "OUTS", "OUTALL")},
    **{f"SD-LYC-{n}": n for n in ("NONE", "ALL", "INALL", "MIDALL", "OUTALL")},
    **{f"SDXL-{n}": n for n in ("NONE", "ALL", "INALL", "MIDALL", "OUTALL")},
    **{f"SDXL-LYC-{n}": n for n in ("NONE", "ALL", "INALL", "MIDALL", "OUTALL")},
}


def preset(text: str) -> tuple[str, str, tuple[str, ...] | None] | None:
    key = text.strip().upper()
    key = _PRESET_ALIASES.get(key, key)
    if key in PRESETS:
        form, arches = PRESETS[key]
        return key, form, arches
    return None
