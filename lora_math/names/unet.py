"""diffusers <-> LDM/SGM module names for SD1/SD2/SDXL UNets, derived from the model's own key names.

ComfyUI names UNet weights the LDM/SGM way (``input_blocks.1.1.transformer_blocks.0.attn1.to_q``); diffusers and
kohya's SD1/SD2 files use diffusers names (``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``). Rather
than assume one configuration, the block layout (resnets and attentions per level, where the down/upsamplers sit) is
read from the keys themselves, so thinned test models and SD1/SD2/SDXL-family variants map the same way.

Layout facts used (LDM ``UNetModel``):
- ``input_blocks.0.0`` is ``conv_in``; each later ``input_blocks.N`` is either ``[ResBlock, (SpatialTransformer)]``
  (resnet ``i`` and attention ``i`` of the current level) or ``[Downsample]`` (``….0.op``), which closes the level.
- ``middle_block.K`` alternates ResBlocks and SpatialTransformers.
- ``output_blocks.N`` is ``[ResBlock, (SpatialTransformer), (Upsample)]``; an Upsample (``….conv``) closes the level.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["ldm_to_diffusers"]

# ResBlock children: LDM name -> diffusers name.
RESNET_PARTS = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}

# Modules outside the blocks.
BASIC = {
    "input_blocks.0.0": "conv_in",
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "label_emb.0.0": "add_embedding.linear_1",
    "label_emb.0.2": "add_embedding.linear_2",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
}

_BLOCK = re.compile(r"^(input_blocks|middle_block|output_blocks)\.(\d+)(?:\.(\d+))?\.(.+)$")
_ATTENTION_CHILDREN = ("proj_in", "proj_out", "norm", "transformer_blocks")


def _layout(paths: Iterable[str]) -> dict[tuple[str, int], dict[int, set[str]]]:
    """Group module paths as ``{(block kind, N): {sub index: {first child name}}}`` (middle: sub = N)."""
    layout: dict[tuple[str, int], dict[int, set[str]]] = {}
    for path in paths:
        m = _BLOCK.match(path)
        if not m:
            continue
        kind, n, sub, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4)
        if kind == "middle_block":
            # middle_block.K.<child>: no sub index; K itself is the position.
            rest = f"{sub}.{rest}" if sub is not None else rest
            layout.setdefault((kind, 0), {}).setdefault(n, set()).add(rest.split(".", 1)[0])
        elif sub is not None:
            layout.setdefault((kind, n), {}).setdefault(int(sub), set()).add(rest.split(".", 1)[0])
    return layout


def _kind(children: set[str]) -> str:
    """Classify an LDM sub-module by its children: resnet, attention, downsample or upsample."""
    if "in_layers" in children or "emb_layers" in children or "out_layers" in children:
        return "resnet"
    if children & set(_ATTENTION_CHILDREN):
        return "attention"
    if "op" in children:
        return "downsample"
    if "conv" in children:
        return "upsample"
    return "unknown"


def _block_prefixes(layout: dict[tuple[str, int], dict[int, set[str]]]) -> dict[str, tuple[str, str]]:
    """``{LDM block prefix: (diffusers prefix, kind)}`` for every ResBlock/attention/resampler in the layout."""
    out: dict[str, tuple[str, str]] = {}

    level, i = 0, 0
    for n in sorted(n for kind, n in layout if kind == "input_blocks" and n > 0):
        subs = layout[("input_blocks", n)]
        kinds = {s: _kind(children) for s, children in subs.items()}
        if kinds.get(0) == "downsample":
            out[f"input_blocks.{n}.0.op"] = (f"down_blocks.{level}.downsamplers.0.conv", "conv")
            level, i = level + 1, 0
            continue
        for s, k in sorted(kinds.items()):
            if k == "resnet":
                out[f"input_blocks.{n}.{s}"] = (f"down_blocks.{level}.resnets.{i}", k)
            elif k == "attention":
                out[f"input_blocks.{n}.{s}"] = (f"down_blocks.{level}.attentions.{i}", k)
        i += 1

    resnets = attentions = 0
    for k_idx, children in sorted(layout.get(("middle_block", 0), {}).items()):
        k = _kind(children)
        if k == "resnet":
            out[f"middle_block.{k_idx}"] = (f"mid_block.resnets.{resnets}", k)
            resnets += 1
        elif k == "attention":
            out[f"middle_block.{k_idx}"] = (f"mid_block.attentions.{attentions}", k)
            attentions += 1

    level, i = 0, 0
    for n in sorted(n for kind, n in layout if kind == "output_blocks"):
        closes_level = False
        for s, children in sorted(layout[("output_blocks", n)].items()):
            k = _kind(children)
            if k == "resnet":
                out[f"output_blocks.{n}.{s}"] = (f"up_blocks.{level}.resnets.{i}", k)
            elif k == "attention":
                out[f"output_blocks.{n}.{s}"] = (f"up_blocks.{level}.attentions.{i}", k)
            elif k == "upsample":
                out[f"output_blocks.{n}.{s}.conv"] = (f"up_blocks.{level}.upsamplers.0.conv", "conv")
                closes_level = True
        level, i = (level + 1, 0) if closes_level else (level, i + 1)
    return out


def ldm_to_diffusers(module_paths: Iterable[str]) -> dict[str, str]:
    """Map LDM/SGM UNet module paths to diffusers module paths.

    ``module_paths`` are the model's module names without ``diffusion_model.`` and without ``.weight``/``.bias``
    (e.g. ``input_blocks.1.0.in_layers.2``). Returns ``{ldm path: diffusers path}`` for every path that has a
    diffusers counterpart (norm layers included); paths of other architectures are simply absent.
    """
    paths = sorted(set(module_paths))
    prefixes = _block_prefixes(_layout(paths))
    out: dict[str, str] = {}
    for path in paths:
        if path in BASIC:
            out[path] = BASIC[path]
            continue
        if path in prefixes:  # exact module (down/upsampler conv)
            out[path] = prefixes[path][0]
            continue
        parts = path.split(".")
        depth = 2 if parts[0] == "middle_block" else 3
        head, rest = ".".join(parts[:depth]), ".".join(parts[depth:])
        if head not in prefixes or not rest:
            continue
        target, kind = prefixes[head]
        if kind == "resnet":
            child = RESNET_PARTS.get(rest)
            if child is not None:
                out[path] = f"{target}.{child}"
        elif kind == "attention":
            out[path] = f"{target}.{rest}"
    return out
