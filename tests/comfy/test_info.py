"""Loom LoRA Info on the demo LoRA (alone, against the tiny SD1.5 model and its CLIP) and on other writers' files."""

import lora_writers as lw
import pytest
import writer_headers as wh
from conftest import SD15_LORA
from safetensors.torch import load_file, save_file


def info(pack, lora_name=SD15_LORA, **kwargs) -> dict[str, str]:
    node = pack.nodes.load.info.LoomLoraInfo
    names = [o.id for o in node.define_schema().outputs]
    result = node.execute(lora_name=lora_name, **kwargs).result
    assert len(result) == len(names) and all(isinstance(r, str) for r in result)
    return dict(zip(names, result, strict=True))


def test_outputs_from_the_file_alone(pack):
    out = info(pack)
    assert out["format"] == "kohya" and out["base_model"] == "sd15"
    assert out["rank_alpha"] == "rank 8, alpha 4"
    assert out["trigger_words"] == "loomstyle"  # modelspec.trigger_phrase; ss_tag_frequency says the same
    training = out["training"].splitlines()
    assert training[:2] == ["about:", "  title: LoRA Loom tiny demo LoRA (random weights)"]
    assert "  network: networks.lora" in training and "  dim / alpha: 8 / 4.0" in training
    assert "  loom.seed: 0" in training  # the stand-in writer's own keys, under their names
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
    assert summary[6:] == training  # then the header, as the training output has it


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


@pytest.mark.parametrize(
    ("write", "writer", "fmt"),
    [
        (lw.peft, "diffusers-model", "diffusers-peft"),  # lora_adapter_metadata, one config for the whole file
        (lw.peft, "own", "diffusers-peft"),  # lora_writers' own header: a config per component
        (lw.lokr, "simpletuner-lycoris", "lycoris-lokr"),
        (lw.kohya, "onetrainer", "kohya"),
        (lw.kohya, "ai-toolkit", "kohya"),
    ],
)
def test_other_writers_headers_are_shown_whole(pack, sd15, loras, write, writer, fmt):
    """The training output is the header view (``report.header_view``, as inspect and the info panel give it), every
    key of the header in it; the summary ends with it; trigger words as the view finds them."""
    from lora_loom.lora_math.formats.io import load_state_dict
    from lora_loom.lora_math.report import header_view

    path = write(sd15[0], sd15[1], loras, 5).path
    if writer != "own":
        copy = path.with_name(f"{writer}-{path.name}")
        save_file(load_file(str(path)), str(copy), metadata=wh.WRITERS[writer])
        path = copy
    header = load_state_dict(path)[1]
    view = header_view(header)
    out = info(pack, lora_name=path.name)
    assert out["format"] == fmt
    assert out["training"] == "\n".join(view.lines()) and out["summary"].endswith("\n" + out["training"])
    assert out["trigger_words"] == ", ".join(view.trigger_words)
    lines = out["training"].splitlines()
    for key in header:  # every key: under its own name, or a readable label over its value
        row = next(r for s in view.sections for r in s.rows if key in r.keys)
        assert f"  {row.label}: {row.value}" in lines
    if writer == "own":
        assert lines[lines.index("adapter config (unet):") + 2] == "  lora_alpha: 8.0"  # lora_writers.PEFT_UNET_ALPHA
        assert lines[lines.index("adapter config (text_encoder):") + 2] == "  lora_alpha: 2.0"
    if writer == "onetrainer":
        assert out["trigger_words"] == "<mychar>" and lines[0] == "written by: OneTrainer (master @ 4822e8e549)"


def test_a_file_without_metadata_says_so(pack, sd15, loras):
    written = lw.kohya(sd15[0], None, loras, 6)
    path = written.path.with_name(f"bare-{written.path.name}")
    save_file(load_file(str(written.path)), str(path))
    out = info(pack, lora_name=path.name)
    assert out["training"] == "" and out["trigger_words"] == ""
    assert out["summary"].splitlines()[-2:] == ["trigger words: (none found)", "header metadata: (none)"]


def test_unknown_lora_name_is_a_clear_error(pack):
    with pytest.raises(ValueError, match="lora_name: LoRA 'nope.safetensors' is not in any `loras` folder"):
        pack.nodes.load.info.LoomLoraInfo.execute(lora_name="nope.safetensors")


def test_schema_is_valid_and_registered(pack):
    node = pack.nodes.load.info.LoomLoraInfo
    node.GET_SCHEMA()  # raises on ids ComfyUI would refuse
    assert node in pack.nodes.NODES
    names = ("summary", "trigger_words", "base_model", "format", "rank_alpha", "coverage", "training")
    assert list(node.RETURN_NAMES) == list(names) and list(node.RETURN_TYPES) == ["STRING"] * 7
