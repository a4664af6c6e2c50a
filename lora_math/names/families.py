"""Which model family a model or a LoRA file is for: one detector, from ComfyUI model keys or from a file alone.

Families (the names are also the key tables' names, ``lora_math.keytables``):

==================  ===============================================================================================
``sd15``, ``sd2``   SD1.x / SD2.x UNets (cross-attention width 768 / 1024)
``sdxl``            SDXL UNets (2048, SGM block names, CLIP-G)
``flux``            FLUX.1 dev/schnell: 19 double + 38 single blocks, hidden 3072, per-block modulation
``chroma``          Chroma: FLUX.1's blocks without per-block modulation, a ``distilled_guidance_layer``
``flux2``           FLUX.2 [dev]: 8 + 48 blocks, hidden 6144, gated MLPs, shared modulation
``flux2_klein_4b``  FLUX.2 [klein] 4B: 5 + 20 blocks, hidden 3072
``flux2_klein_9b``  FLUX.2 [klein] 9B: 8 + 24 blocks, hidden 4096
``z_image``         Z-Image (Lumina 2 NextDiT, dim 3840; ``lumina2`` for the original 2304)
``qwen_image``      Qwen-Image: 60 MMDiT blocks, hidden 3072, ``img_mod``/``img_mlp`` names
``sd35_large``      SD3.5 Large (MMDiT, hidden 2432); ``sd35_medium`` SD3.5 Medium (1536, MMDiT-X); ``sd3`` other
==================  ===============================================================================================

From a file, shapes decide where names cannot: FLUX.2's single-block ``linear1`` has 9 × hidden rows (q, k, v and a
gated MLP of 3 × hidden twice), FLUX.1's 7 ×; block indices beyond a variant's depth rule it out. An attention-only
LoRA of hidden 3072 with no FLUX-only or Qwen-only layer reads as FLUX.1 (and Chroma LoRAs that touch no
approximator or modulation layer are shape-identical to FLUX.1 ones: the header metadata decides, else ``flux``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..adapters import Adapter, Full, Replace
from .spellings import path_spellings, split_role

__all__ = ["FAMILIES", "GROUPS", "from_file", "from_model_keys", "group_of"]

FAMILIES = (
    "sd15",
    "sd2",
    "sdxl",
    "flux",
    "chroma",
    "flux2",
    "flux2_klein_4b",
    "flux2_klein_9b",
    "z_image",
    "lumina2",
    "qwen_image",
    "sd3",
    "sd35_large",
    "sd35_medium",
    "unknown",
)
# Families whose LoRAs fit each other's weights (same names and shapes): they may share a stack.
GROUPS = {"chroma": "flux", "sd35_medium": "sd3", "sd35_large": "sd3"}


def group_of(family: str) -> str:
    return GROUPS.get(family, family)


_FLUX2_BY_HIDDEN = {6144: "flux2", 4096: "flux2_klein_9b", 3072: "flux2_klein_4b"}
_SD3_BY_HIDDEN = {2432: "sd35_large", 1536: "sd35_medium"}
_UNET_BY_CROSS = ((2048, "sdxl"), (1024, "sd2"), (768, "sd15"))
_UNET = "diffusion_model."


def _cols(shape) -> int:
    dims = tuple(int(d) for d in shape)
    return dims[1] if len(dims) > 1 else 0


def from_model_keys(model_keys: Mapping[str, Iterable[int]]) -> str:
    """The family of a ComfyUI model from its ModelPatcher keys and shapes (``diffusion_model.…``)."""
    keys = {k[len(_UNET) :]: tuple(int(d) for d in v) for k, v in model_keys.items() if k.startswith(_UNET)}
    if "double_stream_modulation_img.lin.weight" in keys:
        hidden = keys.get("img_in.weight", (0, 0))[0]
        return _FLUX2_BY_HIDDEN.get(hidden, "flux2")
    if any(k.startswith(("double_blocks.", "single_blocks.")) for k in keys):
        return "chroma" if any(k.startswith("distilled_guidance_layer.") for k in keys) else "flux"
    if any(k.startswith("joint_blocks.") for k in keys):
        if any(".x_block.attn2." in k for k in keys):
            return "sd35_medium"
        hidden = keys.get("x_embedder.proj.weight", (0,))[0]
        return _SD3_BY_HIDDEN.get(hidden, "sd3")
    if "cap_embedder.1.weight" in keys:
        # Z-Image's modulation is one Linear (``adaLN_modulation.0``); Lumina 2's is SiLU then Linear (``.1``)
        z_image = any(re.match(r"layers\.\d+\.adaLN_modulation\.0\.weight$", k) for k in keys)
        return "z_image" if z_image or keys["cap_embedder.1.weight"][0] == 3840 else "lumina2"
    if any(re.match(r"transformer_blocks\.\d+\.img_mod\.", k) for k in keys):
        return "qwen_image"
    if not any(k.startswith(("input_blocks.", "middle_block.")) for k in keys):
        return "unknown"
    cross = {_cols(s) for k, s in keys.items() if k.endswith("attn2.to_k.weight")}
    for dim, family in _UNET_BY_CROSS:
        if dim in cross:
            return family
    return "sdxl" if any(k.startswith("label_emb.") for k in keys) else "sd15"


# --- from a file ----------------------------------------------------------------------------------------------------

_SEP = r"[._]"
_DOUBLE = re.compile(rf"^double_blocks{_SEP}\d+{_SEP}")
_SINGLE = re.compile(rf"^(single_blocks|single_transformer_blocks){_SEP}\d+{_SEP}")
_XLABS = re.compile(r"\.processor\.(qkv|proj)_lora")
_FLUX2_NAMES = re.compile(r"(double_stream_modulation|single_stream_modulation|to_qkv_mlp_proj|time_guidance_embed)")
# FLUX.1's per-block modulation (FLUX.2 shares one per stream; Chroma has none): BFL and diffusers names
_FLUX1_MOD = re.compile(
    rf"^(double_blocks{_SEP}\d+{_SEP}(img|txt)_mod{_SEP}lin|single_blocks{_SEP}\d+{_SEP}modulation{_SEP}lin"
    rf"|transformer_blocks{_SEP}\d+{_SEP}norm1(_context)?{_SEP}linear|single_transformer_blocks{_SEP}\d+{_SEP}norm{_SEP}linear)$"
)
_CHROMA = re.compile(r"distilled_guidance_layer")
_LINEAR1 = re.compile(rf"single_blocks{_SEP}\d+{_SEP}linear1$")
_MLP_IN = re.compile(
    rf"^(double_blocks{_SEP}\d+{_SEP}(img|txt)_mlp{_SEP}0|transformer_blocks{_SEP}\d+{_SEP}ff(_context)?{_SEP}(linear_in|net{_SEP}0{_SEP}proj))$"
)
# FLUX-family layers whose input is the hidden state (their in-features are the model width)
_BFL_HIDDEN = re.compile(
    rf"((img|txt)_attn{_SEP}(qkv|proj)|{_SEP}linear1|(img|txt)_mlp{_SEP}0|{_SEP}lin|{_SEP}linear|to_qkv_mlp_proj"
    rf"|attn{_SEP}(to_q|to_k|to_v|add_q_proj|add_k_proj|add_v_proj)|linear_in)$"
)
_MMDIT_BLOCK = re.compile(rf"^transformer_blocks{_SEP}(\d+){_SEP}")
_MMDIT_ATTN = re.compile(
    rf"^transformer_blocks{_SEP}\d+{_SEP}attn2?{_SEP}(to_q|to_k|to_v|add_q_proj|add_k_proj|add_v_proj)$"
)
_QWEN = re.compile(rf"^transformer_blocks{_SEP}\d+{_SEP}(img_mod|txt_mod|img_mlp|txt_mlp)")
_JOINT = re.compile(rf"^joint_blocks{_SEP}\d+{_SEP}")
_SD3_ATTN2 = re.compile(
    rf"^(joint_blocks{_SEP}\d+{_SEP}x_block{_SEP}attn2|transformer_blocks{_SEP}\d+{_SEP}attn2){_SEP}"
)
_SD3_X = re.compile(rf"x_block{_SEP}attn{_SEP}(qkv|proj)$")
_NEXTDIT = re.compile(
    rf"^((layers|noise_refiner|context_refiner){_SEP}\d+{_SEP}(attention|feed_forward|adaLN_modulation)|cap_embedder)"
)
_NEXTDIT_ATTN = re.compile(rf"{_SEP}attention{_SEP}(qkv|to_q|to_k|to_v|out|to_out{_SEP}0)$")
_CROSS_ATTN = re.compile(r"attn2[._](to_k|to_v)$")
_SGM = re.compile(r"^(input_blocks|middle_block|output_blocks)[._]\d")
_CLIP_ATTN = re.compile(r"self_attn[._](q_proj|k_proj|v_proj|out_proj)$")
_BY_CLIP_DIM = {768: "sd15", 1024: "sd2", 1280: "sdxl"}


def _rows_cols(adapter: Adapter) -> tuple[int, int | None]:
    if isinstance(adapter, Replace):
        return int(adapter.value.shape[0]), adapter.fan_in
    if isinstance(adapter, Full):
        d = adapter.diff if adapter.diff is not None else adapter.diff_b
        return int(d.shape[0]), (int(d[0].numel()) if d.ndim > 1 else None)
    return int(adapter.out_features), int(adapter.fan_in)


@dataclass
class _Evidence:
    flux: bool = False
    flux2_names: bool = False
    flux1_mod: bool = False
    chroma: bool = False
    hidden: set[int] = field(default_factory=set)  # attention in-features of FLUX/MMDiT blocks
    linear1_ratio: set[float] = field(default_factory=set)  # linear1 rows / hidden
    mlp_ratio: set[float] = field(default_factory=set)  # double-block MLP-in rows / hidden: 4 FLUX.1, 6 FLUX.2
    mmdit: bool = False
    max_mmdit: int = -1
    qwen: bool = False
    joint: bool = False
    sd3_attn2: bool = False
    nextdit: bool = False
    nextdit_dim: set[int] = field(default_factory=set)
    lumina2_modulation: bool = False
    cross: set[int] = field(default_factory=set)
    sgm: bool = False
    clip: dict[str, set[int]] = field(default_factory=dict)


def _gather(parsed) -> _Evidence:
    e = _Evidence()
    for name, adapter in parsed.modules.items():
        role, path = split_role(name)
        spellings = list(path_spellings(path))
        rows, cols = _rows_cols(adapter)
        if role not in (None, "unet"):
            if any(_CLIP_ATTN.search(s) for s in spellings):
                e.clip.setdefault(role, set()).add(cols or 0)
            continue
        for s in spellings:
            if _DOUBLE.search(s) or _SINGLE.search(s) or _XLABS.search(s):
                e.flux = True
            if _MLP_IN.search(s) and cols:
                e.mlp_ratio.add(rows / cols)
            if _FLUX2_NAMES.search(s):
                e.flux = e.flux2_names = True
            if _CHROMA.search(s):
                e.flux = e.chroma = True
            if _FLUX1_MOD.search(s):
                e.flux1_mod = True
            if _LINEAR1.search(s) and cols:
                e.linear1_ratio.add(rows / cols)
            flux_block = _DOUBLE.search(s) or _SINGLE.search(s) or s.startswith(("double_stream", "single_stream"))
            if flux_block and _BFL_HIDDEN.search(s) and cols:
                e.hidden.add(cols)
            if m := _MMDIT_BLOCK.search(s):
                e.mmdit = True
                e.max_mmdit = max(e.max_mmdit, int(m.group(1)))
                if _MMDIT_ATTN.search(s) and cols:
                    e.hidden.add(cols)
            if _QWEN.search(s):
                e.qwen = True
            if _JOINT.search(s):
                e.joint = True
                if _SD3_X.search(s) and cols:
                    e.hidden.add(cols)
            if _SD3_ATTN2.search(s):
                e.sd3_attn2 = True
            if _NEXTDIT.search(s):
                e.nextdit = True
                if _NEXTDIT_ATTN.search(s) and cols:
                    e.nextdit_dim.add(cols)
                if re.match(rf"(layers|noise_refiner){_SEP}\d+{_SEP}adaLN_modulation{_SEP}1$", s):
                    e.lumina2_modulation = True
            if _CROSS_ATTN.search(s):
                e.cross.add(cols or 0)
            if _SGM.match(s):
                e.sgm = True
    return e


def _flux_variant(e: _Evidence, metadata: Mapping[str, str]) -> str:
    hidden = max(e.hidden) if e.hidden else 0
    ratio = {round(r, 2) for r in e.linear1_ratio}
    mlp = {round(r, 2) for r in e.mlp_ratio}
    flux2 = e.flux2_names or 9.0 in ratio or 6.0 in mlp or hidden in (6144, 4096)
    if flux2 and not (e.flux1_mod or e.chroma or 7.0 in ratio or 4.0 in mlp):
        return _FLUX2_BY_HIDDEN.get(hidden) or _from_metadata(metadata, "flux2")
    if e.chroma or (not e.flux1_mod and _from_metadata(metadata, "flux") == "chroma"):
        return "chroma"
    return "flux"


def from_file(parsed) -> str:
    """The family a parsed LoRA file is for (see the module docstring), or ``unknown``."""
    e = _gather(parsed)
    flux_width = bool(e.hidden & {3072, 4096, 6144})
    if e.flux or (e.mmdit and not e.qwen and flux_width and e.max_mmdit < 19):
        return _flux_variant(e, parsed.metadata)
    if e.qwen or (e.mmdit and 3072 in e.hidden and e.max_mmdit >= 19):
        return "qwen_image"
    if e.joint or (e.mmdit and e.hidden and 3072 not in e.hidden):
        if e.sd3_attn2:
            return "sd35_medium"
        hidden = max(e.hidden) if e.hidden else 0
        return _SD3_BY_HIDDEN.get(hidden) or _from_metadata(parsed.metadata, "sd3")
    if e.nextdit:
        dim = max(e.nextdit_dim) if e.nextdit_dim else 0
        return "lumina2" if dim == 2304 or e.lumina2_modulation else "z_image"
    for dim in sorted(e.cross, reverse=True):
        for width, family in _UNET_BY_CROSS:
            if dim == width:
                return family
    if e.sgm or 1280 in e.clip.get("te2", set()):
        return "sdxl"
    for role in ("te", "te1"):
        for dim in sorted(e.clip.get(role, set())):
            if dim in _BY_CLIP_DIM:
                return _BY_CLIP_DIM[dim]
    return _from_metadata(parsed.metadata, "unknown")


_METADATA_NAMES = (
    (("chroma",), "chroma"),
    (("flux.2-klein-9b", "flux2-klein-9b", "flux-2-klein-9b"), "flux2_klein_9b"),
    (("flux.2-klein", "flux2-klein", "flux-2-klein"), "flux2_klein_4b"),
    (("flux.2", "flux2", "flux-2"), "flux2"),
    (("flux",), "flux"),
    (("z-image", "z_image", "zimage"), "z_image"),
    (("qwen-image", "qwen_image", "qwenimage"), "qwen_image"),
    (("stable-diffusion-v3.5-large", "sd3.5-large", "sd35_large", "sd3.5_large"), "sd35_large"),
    (("stable-diffusion-v3.5-medium", "sd3.5-medium", "sd35_medium", "sd3.5_medium"), "sd35_medium"),
    (("sd3", "stable-diffusion-3", "stable-diffusion-v3"), "sd3"),
    (("sdxl", "stable-diffusion-xl"), "sdxl"),
    (("sd_v2", "stable-diffusion-v2"), "sd2"),
    (("sd_v1", "stable-diffusion-v1"), "sd15"),
)


def _from_metadata(metadata: Mapping[str, str], default: str) -> str:
    """Family named by kohya / modelspec metadata (``ss_base_model_version``, ``modelspec.architecture``)."""
    for text in (metadata.get("ss_base_model_version", ""), metadata.get("modelspec.architecture", "")):
        text = str(text).lower()
        for prefixes, family in _METADATA_NAMES:
            if text.startswith(prefixes):
                return family
    if str(metadata.get("ss_v2", "")).lower() == "true":
        return "sd2"
    return default
