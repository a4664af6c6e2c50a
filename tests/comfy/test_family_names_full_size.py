"""Full-size models (key tables on ``meta``): every diffusers-side module name of each family lands where ComfyUI's
own converters put it, under every trainer's prefix, and a full-size diffusers LoRA is told apart by family with
coverage 1.0 by ``inspect``.

The targets (weight, row slice, swapped halves) come from ``family_writers.diffusers``: ComfyUI's
``flux_to_diffusers`` / ``mmdit_to_diffusers`` / ``z_image_to_diffusers`` on the family's detected config (FLUX.1,
Chroma, SD3.5, Z-Image), the hand-written FLUX.2 table (0.3.75's converter has FLUX.1's single-block split), and
Qwen-Image's own names. Loom's alias table must resolve each name to exactly that target.
"""

from __future__ import annotations

import importlib
import json

import family_writers as fw
import make_keytables
import pytest
import torch
from safetensors.torch import save_file

ARCHES = ["flux", "chroma", "flux2", "flux2_klein_4b", "flux2_klein_9b", "z_image", "qwen_image", "sd35_large",
          "sd35_medium"]  # fmt: skip
# trainer prefix, and whether it writes the dotted path with underscores
SPELLINGS = [("transformer.", False), ("diffusion_model.", False), ("", False), ("lora_transformer_", True),
             ("lycoris_", True)]  # fmt: skip


@pytest.fixture(scope="module")
def lora_math(pack):
    return importlib.import_module(f"{pack.__name__}.lora_math")


def _full_size(arch: str, lora_math):
    import comfy
    import comfy.model_detection  # noqa: F401

    try:
        model_config, _ = make_keytables.model_config_for(arch, comfy, torch)
    except make_keytables.CannotBuild as e:
        pytest.skip(f"this ComfyUI cannot build {arch}: {e}")
    table = lora_math.names.keytables.load_keytable(arch)
    keys = fw.DitKeys.of_table(table, model_config.unet_config)
    family = "flux2" if arch.startswith("flux2") else arch
    return table, fw.diffusers(family, keys)


@pytest.mark.parametrize("arch", ARCHES)
def test_diffusers_names_land_where_comfyui_puts_them(arch, lora_math):
    table, targets = _full_size(arch, lora_math)
    assert len(targets) > 50, f"{arch}: only {len(targets)} diffusers targets: the name source is wrong"
    aliases = importlib.import_module(f"{lora_math.__name__}.names.keymap").alias_table(table)
    wrong = []
    for t in targets:
        for prefix, underscores in SPELLINGS:
            name = prefix + (t.name.replace(".", "_") if underscores else t.name)
            got = aliases.resolve(name)
            want = (t.key, t.rows, t.swap)
            if got is None or (got.key, got.rows, got.swap_halves) != want:
                wrong.append(f"{name}: {None if got is None else (got.key, got.rows, got.swap_halves)} != {want}")
    assert not wrong, f"{arch}: {len(wrong)} names land elsewhere than ComfyUI's converter says: {wrong[:4]}"


@pytest.mark.parametrize("arch", ARCHES)
def test_inspect_tells_the_family_of_a_full_size_diffusers_lora(arch, lora_math, tmp_path):
    """A rank-1 diffusers file over every diffusers-named weight (alpha 2 in ``lora_adapter_metadata``): inspect
    guesses the family, maps every module (coverage 1.0) and reports the metadata alpha."""
    table, targets = _full_size(arch, lora_math)
    tensors = {}
    for t in targets:
        shape = table[t.key]
        rows = shape[0] if t.rows is None else t.rows[1] - t.rows[0]
        tensors[f"transformer.{t.name}.lora_A.weight"] = torch.full((1, shape[1]), 0.01, dtype=torch.bfloat16)
        tensors[f"transformer.{t.name}.lora_B.weight"] = torch.full((rows, 1), 0.01, dtype=torch.bfloat16)
    path = tmp_path / f"{arch}-diffusers.safetensors"
    meta = {"transformer.r": 1, "transformer.lora_alpha": 2}
    save_file(tensors, str(path), metadata={"lora_adapter_metadata": json.dumps(meta)})
    report = importlib.import_module(f"{lora_math.__name__}.__main__").inspect_file(path)
    assert (report["base_model"], report["coverage"], report["alpha"]) == (arch, 1.0, 2.0), {
        k: report[k] for k in ("base_model", "coverage", "alpha", "unmatched")
    }
