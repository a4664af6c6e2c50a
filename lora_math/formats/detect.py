"""Which family wrote a file (from its module names and suffixes), and the formats refused outright."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from ..adapters import Adapter, Full, LoHa, LoKr
from ..errors import LoraFormatError

__all__ = ["family_of", "format_name", "refuse_legacy", "refuse_unknown"]

_CLONEOFSIMO = re.compile(r"^(unet|text_encoder(_\d+)?):\d+:(up|down)$")
_XLABS = re.compile(r"\.processor\.(qkv|proj)_lora\d?$")
_PROCESSOR = re.compile(r"\.processor\.to_(q|k|v|out)_lora$")
_BFL = re.compile(r"(^|\.)(double_blocks|single_blocks)\.\d+\.")
_FLUX_DIFFUSERS = re.compile(r"(^|\.)(single_transformer_blocks\.\d+\.|x_embedder$|time_text_embed\.guidance_embedder)")
_FLUX_DOUBLE = re.compile(r"(^|\.)transformer_blocks\.\d+\.(attn\.add_[qkv]_proj|ff_context\.|norm1_context\.)")

# Prefix -> family for kohya-style (underscore) names; the longest matching prefix wins.
_UNDERSCORE_FAMILIES = (
    ("lora_unet__", "wan-fun"),
    ("lora_transformer_", "onetrainer"),
    ("lycoris_", "simpletuner-lycoris"),
    ("lora_unet_", "kohya"),
    ("lora_te", "kohya"),
)


def refuse_legacy(keys: Iterable[str]) -> None:
    """Refuse formats no tool can map, naming them (cloneofsimo/lora's index-ordered ``unet:N:up`` keys)."""
    for key in keys:
        if _CLONEOFSIMO.match(key):
            raise LoraFormatError(
                f"this is a cloneofsimo/lora legacy file (keys like {key!r}): its layers are numbered by traversal "
                "order, not named, so they cannot be mapped onto a model. Use a kohya / diffusers / PEFT export of "
                "the LoRA instead."
            )


# Near misses: files that are almost a LoRA, and what is off with them.
_JOINED_PART = re.compile(r"_(lora_down|lora_up|lora_mid|lora_A|lora_B)\.weight$")
_EMBEDDING = re.compile(r"^(emb_params|string_to_param\b|string_to_token\b|clip_[lg]$|<.+>$)")
_CHECKPOINT = re.compile(
    r"^(model\.diffusion_model|first_stage_model|cond_stage_model|conditioner)\.|^(double_blocks|input_blocks)\.\d+\..*\.weight$"
)


def _near_miss(keys: list[str]) -> str | None:
    """What a state dict with no adapter keys is instead, said so that the user knows which file to fix."""
    joined = [k for k in keys if _JOINED_PART.search(k)]
    if joined:
        k = joined[0]
        part = _JOINED_PART.search(k).group(1)
        fixed = k[: _JOINED_PART.search(k).start()] + f".{part}.weight"
        return (
            f"recognised {len(joined)} LoRA factor keys, but their part is joined to the module name with '_' "
            f"instead of '.' ({k!r}; a LoRA file names it {fixed!r}): the file was renamed or exported wrongly; "
            "re-export it with its tool, or rename the keys"
        )
    if any(_EMBEDDING.match(k) for k in keys):
        return "this is a textual-inversion embedding, not a LoRA: load it with an embedding (`embedding:name` in the prompt)"
    if sum(1 for k in keys if _CHECKPOINT.search(k)) > len(keys) // 2:
        return (
            "this is a model checkpoint (full weights), not a LoRA: load it with a checkpoint or diffusion-model loader"
        )
    return None


def refuse_unknown(keys: list[str]) -> None:
    """Refuse a state dict with no adapter parts at all, naming its first keys and, when that can be told, what the
    file is instead."""
    shown = ", ".join(repr(k) for k in keys[:5])
    more = f" (and {len(keys) - 5} more)" if len(keys) > 5 else ""
    hint = _near_miss(keys) or (
        "expected kohya (.lora_down/.lora_up), LyCORIS (.hada_*/.lokr_*/.diff), diffusers or PEFT (.lora_A/.lora_B) keys"
    )
    raise LoraFormatError(f"no LoRA adapter keys found among {len(keys)} keys: {shown}{more}; {hint}")


def family_of(modules: Iterable[str], suffixes: set[str]) -> str:
    """Name the tool family from module names (file side, suffix stripped) and the suffixes seen."""
    names = list(modules)
    for prefix, family in _UNDERSCORE_FAMILIES:
        if any(n.startswith(prefix) for n in names):
            return family
    if any(_XLABS.search(n) for n in names):
        return "flux-xlabs"
    if any(_PROCESSOR.search(n) for n in names) or any(s.startswith("lora_linear_layer.") for s in suffixes):
        return "diffusers-attn-processor"
    if any(s.startswith("lora.") for s in suffixes):
        return "diffusers-lora-layer"
    if any(_BFL.search(n) for n in names):
        return "flux-bfl"
    if any(_FLUX_DIFFUSERS.search(n) or _FLUX_DOUBLE.search(n) for n in names):
        return "flux-diffusers"
    if any(s.startswith("lora_A") or s.startswith("lora_B") for s in suffixes):
        return "diffusers-peft"
    return "generic"


def format_name(family: str, adapters: Mapping[str, Adapter]) -> str:
    """``family`` decorated with the algorithm(s) when not plain LoRA, and ``+dora`` when DoRA is present.

    kohya-named LyCORIS files are ``lycoris-loha`` / ``lycoris-lokr`` / ``lycoris-full``.
    """
    kinds: set[str] = set()
    dora = False
    for name, adapter in adapters.items():
        if isinstance(adapter, LoHa):
            kinds.add("loha")
        elif isinstance(adapter, LoKr):
            kinds.add("lokr")
        elif isinstance(adapter, Full) and not (adapter.diff is None and name.endswith(".bias")):
            kinds.add("full")
        dora = dora or getattr(adapter, "dora_scale", None) is not None
    name = family
    if kinds:
        algos = "+".join(sorted(kinds))
        name = f"lycoris-{algos}" if family == "kohya" else f"{family}-{algos}"
    return f"{name}+dora" if dora else name
