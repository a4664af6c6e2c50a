"""The key tables shipped in ``lora_math/names/keytables`` equal what ComfyUI's own model classes give (drift guard).

The unit tier maps LoRAs against these tables without ComfyUI; this test rebuilds each table the way
``scripts/make_keytables.py`` does (the published SD1.5 / SDXL / FLUX.1 configs, or ComfyUI's detection on a skeleton
of the real checkpoint, then its model and text-encoder classes, on the ``meta`` device) with the running ComfyUI,
and requires the shipped file to hold exactly those keys and shapes. An arch the running ComfyUI cannot build is
skipped with the reason (FLUX.2 klein on 0.3.75); upstream builds every one. A ComfyUI that renames, adds or reshapes a LoRA-targetable weight fails here, naming the keys;
regenerate with ``.venv/bin/python scripts/make_keytables.py`` once the change is understood.
"""

import gzip
import importlib
import json
from pathlib import Path

import make_keytables
import pytest


@pytest.fixture(scope="module")
def keytables(pack):
    return importlib.import_module(f"{pack.__name__}.lora_math.names.keytables")


def _running_version() -> str:
    try:
        from comfyui_version import __version__
    except ImportError:
        return "unknown"
    return __version__


@pytest.mark.parametrize("arch", make_keytables.ARCHES)
def test_shipped_keytable_equals_comfyui_classes(arch, keytables):
    import comfy
    import comfy.model_detection  # noqa: F401  (build_table uses it)
    import torch

    assert arch in keytables.ARCHES
    try:
        built = {k: tuple(v) for k, v in make_keytables.build_table(arch, comfy, torch).items()}
    except make_keytables.CannotBuild as e:
        if arch.startswith("flux2_klein") and _running_version() == "0.3.75":
            pytest.skip(f"ComfyUI 0.3.75 cannot build FLUX.2 klein (its detection fixes 48 heads): {e}")
        raise
    shipped = keytables.load_keytable(arch)
    missing = sorted(built.keys() - shipped.keys())
    extra = sorted(shipped.keys() - built.keys())
    reshaped = sorted(k for k in built.keys() & shipped.keys() if built[k] != shipped[k])
    assert not (missing or extra or reshaped), (
        f"{arch}: lora_math/names/keytables/{arch}.json.gz drifted from ComfyUI {_running_version()}: "
        f"{len(missing)} keys missing (first {missing[:3]}), {len(extra)} extra (first {extra[:3]}), "
        f"{len(reshaped)} reshaped (first {[(k, shipped[k], built[k]) for k in reshaped[:3]]}); "
        "regenerate with scripts/make_keytables.py"
    )
    # Every component the pack maps must be there, with real sizes (a table of the wrong model would not fit).
    prefixes = {k.split(".", 1)[0] for k in shipped}
    expected = {
        "sd15": ({"diffusion_model", "clip_l"}, "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", (320, 768)),
        "sdxl": ({"diffusion_model", "clip_l", "clip_g"}, "diffusion_model.middle_block.1.transformer_blocks.9.attn2.to_k.weight", (1280, 2048)),
        "flux": ({"diffusion_model", "clip_l", "t5xxl"}, "diffusion_model.single_blocks.37.linear1.weight", (21504, 3072)),
        "flux2": ({"diffusion_model"}, "diffusion_model.single_blocks.47.linear1.weight", (55296, 6144)),
        "flux2_klein_4b": ({"diffusion_model"}, "diffusion_model.single_blocks.19.linear1.weight", (27648, 3072)),
        "flux2_klein_9b": ({"diffusion_model"}, "diffusion_model.double_blocks.7.img_mlp.0.weight", (24576, 4096)),
        "chroma": ({"diffusion_model"}, "diffusion_model.distilled_guidance_layer.layers.4.out_layer.weight", (5120, 5120)),
        "z_image": ({"diffusion_model"}, "diffusion_model.layers.29.attention.qkv.weight", (11520, 3840)),
        "qwen_image": ({"diffusion_model"}, "diffusion_model.transformer_blocks.59.img_mod.1.weight", (18432, 3072)),
        "sd35_large": ({"diffusion_model", "clip_l", "clip_g", "t5xxl"}, "diffusion_model.joint_blocks.37.x_block.attn.qkv.weight", (7296, 2432)),
        "sd35_medium": ({"diffusion_model", "clip_l", "clip_g", "t5xxl"}, "diffusion_model.joint_blocks.12.x_block.attn2.qkv.weight", (4608, 1536)),
    }[arch]  # fmt: skip
    assert prefixes == expected[0]
    assert shipped[expected[1]] == expected[2]


@pytest.mark.parametrize("arch", make_keytables.ARCHES)
def test_shipped_file_records_its_arch_and_source(arch, keytables):
    path = Path(keytables.__file__).parent / f"{arch}.json.gz"
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        doc = json.load(fh)
    assert doc["arch"] == arch
    assert doc["source"].startswith("ComfyUI ") and "meta device" in doc["source"], doc["source"]
