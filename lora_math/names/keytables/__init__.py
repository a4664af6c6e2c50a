"""Key -> shape tables of full-size models, in ComfyUI ModelPatcher key naming.

``sd15``, ``sdxl``, ``flux`` (FLUX.1-dev), ``sd35_large`` and ``sd35_medium`` hold the denoiser
(``diffusion_model.…``) and text encoder (``clip_l.transformer.…``, ``clip_g.transformer.…``, ``t5xxl.transformer.…``)
weights and biases of every ``Linear`` / ``Conv`` module: what a LoRA can target; ``flux`` also its attention q/k
RMSNorm scales (``….query_norm.scale``), which BFL's control LoRAs replace. ``flux2`` (FLUX.2 dev),
``flux2_klein_4b``, ``flux2_klein_9b``, ``chroma``, ``z_image`` and ``qwen_image`` hold the denoiser only (their text
encoders are LLMs or T5, which LoRAs leave alone). They are data written by ``scripts/make_keytables.py`` from ComfyUI's own model classes built on
the ``meta`` device; use them to match a LoRA against a model without loading one.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

__all__ = ["ARCHES", "load_keytable"]

ARCHES: tuple[str, ...] = (
    "sd15",
    "sdxl",
    "flux",
    "flux2",
    "flux2_klein_4b",
    "flux2_klein_9b",
    "chroma",
    "z_image",
    "qwen_image",
    "sd35_large",
    "sd35_medium",
)
_HERE = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=len(ARCHES))
def _load(arch: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    with gzip.open(_HERE / f"{arch}.json.gz", "rt", encoding="utf-8") as fh:
        doc = json.load(fh)
    return tuple((key, tuple(shape)) for key, shape in doc["keys"].items())


def load_keytable(arch: str) -> dict[str, tuple[int, ...]]:
    """Return a fresh ``{model key: shape}`` dict for ``arch`` (one of :data:`ARCHES`)."""
    if arch not in ARCHES:
        raise ValueError(f"no key table for base model {arch!r}; choose one of {', '.join(ARCHES)}")
    return dict(_load(arch))
