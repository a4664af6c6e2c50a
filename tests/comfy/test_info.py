"""Loom LoRA Info on the demo LoRA: what it reports alone, against the tiny SD1.5 model, and against its CLIP."""

import pytest
from conftest import SD15_LORA


def info(pack, **kwargs) -> dict[str, str]:
    node = pack.nodes.info.LoomLoraInfo
    names = [o.id for o in node.define_schema().outputs]
    result = node.execute(lora_name=SD15_LORA, **kwargs).result
    assert len(result) == len(names) and all(isinstance(r, str) for r in result)
    return dict(zip(names, result, strict=True))


def test_outputs_from_the_file_alone(pack):
    out = info(pack)
    assert out["format"] == "kohya" and out["base_model"] == "sd15"
    assert out["rank_alpha"] == "rank 8, alpha 4"
    assert out["trigger_words"] == "loomstyle"  # modelspec.trigger_phrase; ss_tag_frequency says the same
    training = out["training"].splitlines()
    assert "title: LoRA Loom tiny demo LoRA (random weights)" in training
    assert "network: networks.lora" in training and "dim / alpha: 8 / 4.0" in training
    # the stand-in is thinned, so the full-size SD1.5 table only partly fits it
    assert out["coverage"].startswith("64/104 modules match the full-size sd15 key table (62%)")
    summary = out["summary"].splitlines()
    assert summary[:6] == [
        SD15_LORA,
        "format: kohya, 104 modules",
        "base model: sd15",
        "rank 8, alpha 4",
        f"coverage: {out['coverage']}",
        "trigger words: loomstyle",
    ]
    assert "  title: LoRA Loom tiny demo LoRA (random weights)" in summary


def test_coverage_against_the_model_and_its_clip(pack, sd15):
    model, clip, _ = sd15
    assert info(pack, model=model)["coverage"] == (
        "56/56 modules match this model (100%); 48 modules not checked (no CLIP connected)"
    )
    assert info(pack, model=model, clip=clip)["coverage"] == "104/104 modules match this model and this CLIP (100%)"
    assert info(pack, clip=clip)["coverage"] == (
        "48/48 modules match this CLIP (100%); 56 modules not checked (no model connected)"
    )


def test_coverage_against_another_architecture(pack):
    import comfy.sd
    from comfy_env import MODELS

    sdxl = comfy.sd.load_diffusion_model(str(MODELS / "unet" / "loom-tiny-sdxl.safetensors"))
    coverage = info(pack, model=sdxl)["coverage"]
    # SD1 names land on SDXL weights of other widths (768 vs 2048 context) or on blocks SDXL lacks
    assert coverage.startswith("12/56 modules match this model (21%); 28 name weights of another shape")
    assert "; 16 unmatched: lora_unet_down_blocks_0_" in coverage
    assert coverage.endswith("; 48 modules not checked (no CLIP connected)")


def test_unknown_lora_name_is_a_clear_error(pack):
    with pytest.raises(ValueError, match="lora_name: LoRA 'nope.safetensors' is not in any `loras` folder"):
        pack.nodes.info.LoomLoraInfo.execute(lora_name="nope.safetensors")


def test_schema_is_valid_and_registered(pack):
    node = pack.nodes.info.LoomLoraInfo
    node.GET_SCHEMA()  # raises on ids ComfyUI would refuse
    assert node in pack.nodes.NODES
    names = ("summary", "trigger_words", "base_model", "format", "rank_alpha", "coverage", "training")
    assert list(node.RETURN_NAMES) == list(names) and list(node.RETURN_TYPES) == ["STRING"] * 7
