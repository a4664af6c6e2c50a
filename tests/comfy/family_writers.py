"""Seeded LoRA files for the newer families (FLUX.2, Chroma, Z-Image, Qwen-Image, SD3.5), named as their trainers name
them, each with the hand reference of ``lora_writers`` (which weight, which row slice, what ΔW).

Two name sets per family, both built here and never from ``lora_math``:
- native: ComfyUI's own module paths (``double_blocks.0.img_attn.qkv``, ``layers.0.attention.qkv``,
  ``joint_blocks.0.x_block.attn.qkv``): what core's Save LoRA, kohya sd-scripts and musubi-tuner (BFL-named models)
  write, with their prefixes;
- diffusers: the diffusers model's paths, and where each lands (a whole weight, a row slice of a fused one, or the
  final norm with its (shift, scale) halves swapped), from ComfyUI's own converters (``comfy.utils.flux_to_diffusers``,
  ``mmdit_to_diffusers``, ``z_image_to_diffusers``) where 0.3.75 has them right, else from a table written here from
  diffusers' ``Flux2Transformer2DModel`` / ``ChromaTransformer2DModel`` (read off diffusers 0.42's modules).
  Qwen-Image needs no table: ComfyUI names it as diffusers does.

A :class:`Style` is one trainer's spelling: which name set, prefix, separator, algorithm, part suffixes and where
alpha lives. ``write(family, style, model, folder, seed)`` writes one file over every 2-D weight the style can name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import lora_writers as lw
import torch

UNET = lw.UNET
KOHYA_PARTS = ("lora_down.weight", "lora_up.weight")
PEFT_PARTS = ("lora_A.weight", "lora_B.weight")
DIFFSYNTH_PARTS = ("lora_A.default.weight", "lora_B.default.weight")
RANK = 4
DIFFUSERS_ALPHA = 8.0  # metadata lora_alpha with r = 4: scale 2, so a file read at scale 1 fails


@dataclass(frozen=True)
class Target:
    """One module a file can name: ``name`` in its name set, the ModelPatcher ``key`` it patches, ``rows`` of that
    key's output axis (a fused weight's slice), ``swap`` (diffusers (shift, scale) onto BFL (scale, shift))."""

    name: str
    key: str
    rows: tuple[int, int] | None = None
    swap: bool = False


class DitKeys:
    """The denoiser weights of a loaded stand-in (what ``lora_writers._Writer`` needs of a model); ``of_table``: the
    same over a full-size key table (meta tensors: shapes only)."""

    def __init__(self, model=None):
        if model is not None:
            self.model_sd = {k: v for k, v in model.model.state_dict().items() if k.startswith(UNET)}
            self.unet_config = model.model.model_config.unet_config
        self.clip_sd: dict = {}

    @classmethod
    def of_table(cls, table: dict, unet_config: dict) -> DitKeys:
        keys = cls()
        keys.model_sd = {k: torch.empty(s, device="meta") for k, s in table.items() if k.startswith(UNET)}
        keys.unet_config = unet_config
        return keys

    def weight(self, key: str) -> torch.Tensor:
        return self.model_sd[key]

    def linears(self) -> list[str]:
        return sorted(k for k, v in self.model_sd.items() if k.endswith(".weight") and v.ndim == 2)


# --- the two name sets ----------------------------------------------------------------------------------------------


def native(keys: DitKeys) -> list[Target]:
    return [Target(k[len(UNET) : -len(".weight")], k) for k in keys.linears()]


def _from_converter(table: dict, keys: DitKeys) -> list[Target]:
    """``comfy.utils.*_to_diffusers`` output -> Targets on this model's 2-D weights (each weight named once: the
    converters also list other writers' aliases, e.g. LyCORIS ``ff.linear_in``, after the diffusers name)."""
    out, seen = [], set()
    linears = set(keys.linears())
    for dif, to in table.items():
        if not dif.endswith(".weight"):
            continue
        key, rows, swap = to, None, False
        if isinstance(to, tuple):
            key, offset = to[0], to[1]
            rows = None if offset is None else (offset[1], offset[1] + offset[2])
            swap = len(to) > 2
        if key not in linears or (key, rows) in seen:
            continue
        seen.add((key, rows))
        out.append(Target(dif[: -len(".weight")], key, rows, swap))
    return out


def _flux2_table(keys: DitKeys) -> list[Target]:
    """diffusers ``Flux2Transformer2DModel`` names. Double blocks: split q/k/v (image ``to_*``, text ``add_*_proj``)
    onto the fused qkv rows, ``to_out.0`` / ``to_add_out``, gated MLPs ``ff.linear_in/out`` (``ff_context`` for
    text); single blocks keep the fused layers whole (``attn.to_qkv_mlp_proj`` = linear1, ``attn.to_out`` =
    linear2); modulations shared by all blocks (``*_modulation.linear``); ``time_guidance_embed``."""
    out = []
    sd = keys.model_sd
    for key in keys.linears():
        path = key[len(UNET) : -len(".weight")]
        m = re.fullmatch(r"double_blocks\.(\d+)\.(img|txt)_(attn\.qkv|attn\.proj|mlp\.0|mlp\.2)", path)
        if m:
            n, stream, layer = m.groups()
            block = f"transformer_blocks.{n}"
            if layer == "attn.qkv":
                h = sd[key].shape[0] // 3
                names = ("to_q", "to_k", "to_v") if stream == "img" else ("add_q_proj", "add_k_proj", "add_v_proj")
                out += [Target(f"{block}.attn.{p}", key, (j * h, (j + 1) * h)) for j, p in enumerate(names)]
            elif layer == "attn.proj":
                out.append(Target(f"{block}.attn.{'to_out.0' if stream == 'img' else 'to_add_out'}", key))
            else:
                ff = "ff" if stream == "img" else "ff_context"
                out.append(Target(f"{block}.{ff}.{'linear_in' if layer == 'mlp.0' else 'linear_out'}", key))
            continue
        m = re.fullmatch(r"single_blocks\.(\d+)\.(linear1|linear2)", path)
        if m:
            n, layer = m.groups()
            name = "attn.to_qkv_mlp_proj" if layer == "linear1" else "attn.to_out"
            out.append(Target(f"single_transformer_blocks.{n}.{name}", key))
            continue
        top = {
            "img_in": "x_embedder",
            "txt_in": "context_embedder",
            "time_in.in_layer": "time_guidance_embed.timestep_embedder.linear_1",
            "time_in.out_layer": "time_guidance_embed.timestep_embedder.linear_2",
            "guidance_in.in_layer": "time_guidance_embed.guidance_embedder.linear_1",
            "guidance_in.out_layer": "time_guidance_embed.guidance_embedder.linear_2",
            "double_stream_modulation_img.lin": "double_stream_modulation_img.linear",
            "double_stream_modulation_txt.lin": "double_stream_modulation_txt.linear",
            "single_stream_modulation.lin": "single_stream_modulation.linear",
            "final_layer.linear": "proj_out",
        }
        if path in top:
            out.append(Target(top[path], key))
        elif path == "final_layer.adaLN_modulation.1":
            out.append(Target("norm_out.linear", key, swap=True))
    return out


def _chroma_approximator(keys: DitKeys) -> list[Target]:
    """diffusers ``ChromaApproximator``: ``in_proj``, ``layers.N.linear_1/2`` (PixArt text projections) and
    ``out_proj`` — the part ComfyUI's ``flux_to_diffusers`` does not list."""
    out = []
    for key in keys.linears():
        path = key[len(UNET) : -len(".weight")]
        m = re.fullmatch(r"distilled_guidance_layer\.(in_proj|out_proj|layers\.\d+\.(in_layer|out_layer))", path)
        if m:
            name = path.replace(".in_layer", ".linear_1").replace(".out_layer", ".linear_2")
            out.append(Target(name, key))
    return out


def diffusers(family: str, keys: DitKeys) -> list[Target]:
    import comfy.utils

    config = keys.unet_config
    if family.startswith("flux2"):
        return _flux2_table(keys)
    if family == "flux":
        return _from_converter(comfy.utils.flux_to_diffusers(config, output_prefix=UNET), keys)
    if family == "chroma":
        return _from_converter(comfy.utils.flux_to_diffusers(config, output_prefix=UNET), keys) + _chroma_approximator(
            keys
        )
    if family.startswith("sd35"):
        return _from_converter(comfy.utils.mmdit_to_diffusers(config, output_prefix=UNET), keys)
    if family == "z_image":
        return _from_converter(comfy.utils.z_image_to_diffusers(config, output_prefix=UNET), keys)
    if family == "qwen_image":
        return native(keys)
    raise KeyError(family)


# --- the trainers' spellings ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Style:
    """names: "native" or "diffusers" (per family: ``names_for``); algorithm: "lora", "lokr" or "fused-qkv"
    (musubi-tuner's ComfyUI converter); alpha: "tensor" (``.alpha``, varied per module), "metadata"
    (``lora_adapter_metadata``: r and lora_alpha) or "none" (scale 1)."""

    id: str
    families: tuple[str, ...]
    names: str | dict[str, str]
    prefix: str
    underscores: bool
    parts: tuple[str, str] = KOHYA_PARTS
    algorithm: str = "lora"
    alpha: str = "tensor"
    metadata: dict = field(default_factory=dict)
    note: str = ""

    def names_for(self, family: str) -> str:
        return self.names if isinstance(self.names, str) else self.names[family]


ALL = ("flux2", "flux2_klein", "chroma", "z_image", "qwen_image", "sd35_medium", "sd35_large")
STYLES = [
    Style("core", ALL, "native", UNET, False, note="ComfyUI core's Save LoRA / TrainLoraNode"),
    Style(
        "kohya",
        ("flux2", "flux2_klein", "chroma", "qwen_image", "sd35_medium", "sd35_large"),
        "native",
        "lora_unet_",
        True,
        metadata={"ss_network_module": "networks.lora"},
        note="kohya sd-scripts (SD3.5, Chroma) and musubi-tuner on BFL/diffusers-named models (FLUX.2, Qwen-Image)",
    ),
    Style(
        "musubi",
        ("z_image",),
        "diffusers",
        "lora_unet_",
        True,
        metadata={"ss_network_module": "networks.lora_zimage"},
        note="musubi-tuner's Z-Image model names its attention to_q/to_k/to_v/to_out.0",
    ),
    Style(
        "musubi-comfy",
        ("z_image",),
        "native",
        UNET,
        False,
        algorithm="fused-qkv",
        note="musubi-tuner's convert_z_image_lora_to_comfy: q/k/v downs stacked, ups block-diagonal, alpha x3",
    ),
    Style(
        "diffusers",
        ALL,
        "diffusers",
        "transformer.",
        False,
        PEFT_PARTS,
        alpha="metadata",
        note="diffusers training scripts (save_lora_weights), alpha only in lora_adapter_metadata",
    ),
    Style(
        "ai-toolkit",
        ("flux2", "chroma", "z_image", "qwen_image"),
        {"flux2": "native", "chroma": "native", "z_image": "diffusers", "qwen_image": "diffusers"},
        UNET,
        False,
        PEFT_PARTS,
        alpha="none",
        metadata={"software": json.dumps({"name": "ai-toolkit", "repo": "https://github.com/ostris/ai-toolkit"})},
        note="ai-toolkit: diffusion_model. + its model's names (BFL for FLUX.2/Chroma, diffusers for Z-Image/Qwen)",
    ),
    Style(
        "ai-toolkit-lokr",
        ("flux2", "z_image", "qwen_image"),
        {"flux2": "native", "z_image": "diffusers", "qwen_image": "diffusers"},
        UNET,
        False,
        algorithm="lokr",
        note="ai-toolkit LoKr (lokr_w1 full, lokr_w2 full or factorised, .alpha)",
    ),
    Style(
        "onetrainer",
        ("flux2", "chroma", "z_image", "qwen_image", "sd35_medium", "sd35_large"),
        "diffusers",
        "lora_transformer_",
        True,
        note="OneTrainer: lora_transformer_ + diffusers names with _",
    ),
    Style(
        "simpletuner-lycoris",
        ALL,
        "diffusers",
        "lycoris_",
        True,
        algorithm="lokr",
        note="SimpleTuner LyCORIS LoKr: lycoris_ + diffusers names with _",
    ),
    Style(
        "diffsynth",
        ("z_image", "qwen_image"),
        "diffusers",
        "",
        False,
        DIFFSYNTH_PARTS,
        alpha="none",
        note="DiffSynth-Studio: raw diffusers names, PEFT .lora_A.default.weight, no alpha",
    ),
]


def _module_name(style: Style, name: str) -> str:
    return style.prefix + (name.replace(".", "_") if style.underscores else name)


def targets(family: str, style: Style, keys: DitKeys) -> list[Target]:
    return native(keys) if style.names_for(family) == "native" else diffusers(family, keys)


def write(family: str, style: Style, model, folder: Path, seed: int) -> lw.WrittenLoRA:
    """One file in ``style`` over every 2-D weight of ``model`` (a ``families.tiny`` stand-in) that the style's
    name set reaches; bf16, as the trainers save."""
    keys = DitKeys(model)
    wr = lw._Writer(keys, folder, f"loom-fam-{family}-{style.id}-s{seed}.safetensors", seed, torch.bfloat16)
    down, up = style.parts
    for i, t in enumerate(targets(family, style, keys)):
        module = _module_name(style, t.name)
        transform = lw._swap_halves if t.swap else None
        if style.algorithm == "fused-qkv" and t.name.endswith("attention.qkv"):
            _fused_qkv(wr, module, t.key, alpha=lw._alpha_for(i, RANK))
        elif style.algorithm == "lokr":
            full2 = i % 2 == 0  # a full and a factorised second half, as LyCORIS picks by size
            wr.lokr(module, t.key, "model", full1=True, full2=full2, alpha=lw._alpha_for(i, RANK), rows=t.rows,
                    transform=transform)  # fmt: skip
        else:
            alpha = {"tensor": lw._alpha_for(i, RANK), "metadata": DIFFUSERS_ALPHA, "none": None}[style.alpha]
            wr.lora(module, t.key, "model", rank=RANK, alpha=alpha, down=down, up=up, rows=t.rows,
                    transform=transform)  # fmt: skip
    metadata = dict(style.metadata)
    if style.alpha == "metadata":  # PEFT keeps alpha out of the tensors
        for k in [k for k in wr.tensors if k.endswith(".alpha")]:
            del wr.tensors[k]
        metadata["lora_adapter_metadata"] = json.dumps(
            {"transformer.r": RANK, "transformer.lora_alpha": DIFFUSERS_ALPHA}
        )
    return wr.save(metadata)


def _fused_qkv(wr: lw._Writer, module: str, key: str, *, alpha: float) -> None:
    """musubi-tuner's Z-Image -> ComfyUI conversion of three rank-r LoRAs on to_q/to_k/to_v into one on the fused
    ``attention.qkv``: ``lora_down = cat(d_q, d_k, d_v)`` ``[3r, in]``, ``lora_up = block_diag(u_q, u_k, u_v)``
    ``[3 out, 3r]``, alpha x3 so that alpha / rank (now 3r) is unchanged. ΔW = ``alpha/r · up @ down``."""
    w = wr.keys.weight(key)
    h = w.shape[0] // 3
    g = wr.gen(module)
    downs, ups = [], []
    for j in range(3):
        d = torch.randn(RANK, w.shape[1], generator=g)
        u = torch.randn(h, RANK, generator=g)
        raw = lw._rms(lw.lora_delta(d, u)) * alpha / RANK
        downs.append(d)
        ups.append(u * (lw._target_rms(w[j * h : (j + 1) * h]) / raw))
    d_s = wr.put(f"{module}.lora_down.weight", torch.cat(downs))
    u_s = wr.put(f"{module}.lora_up.weight", torch.block_diag(*ups))
    scale = wr.alpha(module, 3 * alpha) / (3 * RANK)
    wr.expect(key, "model", lambda d=d_s, u=u_s, s=scale: lw.lora_delta(d, u) * s)
    wr.modules += 1
