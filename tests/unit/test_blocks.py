"""lora_math.names.blocks: block ids of ComfyUI keys, the LBW vector layouts, presets, the explicit form, errors, warnings.

The layouts are checked against ComfyUI's own full-size key tables (lora_math/names/keytables), the presets against the
vectors the Inspire Pack publishes in resources/lbw-preset.txt (SD-*, SDXL-*, FLUX-DBL-*).
"""

from __future__ import annotations

import pytest

from lora_math.names.block_weights import PRESETS, parse_block_weights
from lora_math.names.blocks import LAYOUTS, base_part, block_id, present_blocks
from lora_math.names.families import from_model_keys as arch_of
from lora_math.names.keytables import load_keytable

pytestmark = pytest.mark.unit


def key_of(bid: str) -> str:
    """A representative ModelPatcher key inside block ``bid``."""
    if bid == "MID":
        return "diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.weight"
    if bid == "BASE":
        return "diffusion_model.time_embed.0.weight"
    if bid == "CLIP":
        return "clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
    if bid == "T5":
        return "t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight"
    if bid in ("IN", "OUT"):  # FLUX input and final layers
        return "diffusion_model.img_in.weight" if bid == "IN" else "diffusion_model.final_layer.linear.weight"
    prefix, n = bid.rstrip("0123456789"), int(bid[len(bid.rstrip("0123456789")) :])
    path = {"IN": "input_blocks", "OUT": "output_blocks", "D": "double_blocks", "S": "single_blocks"}[prefix]
    return f"diffusion_model.{path}.{n}.1.proj.weight"


@pytest.mark.parametrize(
    ("key", "bid", "part"),
    [
        ("diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight", "IN04", None),
        ("diffusion_model.input_blocks.11.0.out_layers.3.weight", "IN11", None),
        ("diffusion_model.middle_block.0.in_layers.2.weight", "MID", None),
        ("diffusion_model.output_blocks.10.1.proj_out.bias", "OUT10", None),
        ("diffusion_model.time_embed.0.weight", "BASE", None),
        ("diffusion_model.label_emb.0.0.weight", "BASE", None),
        ("diffusion_model.out.2.weight", "BASE", None),
        ("clip_l.transformer.text_model.encoder.layers.3.mlp.fc1.weight", "BASE", "CLIP"),
        ("clip_g.transformer.text_model.encoder.layers.3.mlp.fc1.weight", "BASE", "CLIP"),
        ("t5xxl.transformer.encoder.block.2.layer.1.DenseReluDense.wo.weight", "BASE", "T5"),
        ("diffusion_model.double_blocks.5.img_attn.qkv.weight", "D05", None),
        ("diffusion_model.single_blocks.37.linear1.weight", "S37", None),
        ("diffusion_model.img_in.weight", "BASE", "IN"),
        ("diffusion_model.guidance_in.in_layer.weight", "BASE", "IN"),
        ("diffusion_model.final_layer.linear.weight", "BASE", "OUT"),
    ],
)
def test_block_id_and_base_part(key, bid, part):
    assert block_id(key) == bid
    assert base_part(key) == part


def _attention(arch: str) -> list[str]:
    """The keys a standard attention LoRA patches: UNet transformer blocks / every FLUX block, and the text encoders."""
    return [
        k
        for k in load_keytable(arch)
        if ".transformer_blocks." in k
        or k.startswith(("diffusion_model.double_blocks.", "diffusion_model.single_blocks."))
        or not k.startswith("diffusion_model.")
    ]


def _ordered(ids) -> list[str]:
    from lora_math.names.blocks import sort_key

    return sorted(ids, key=sort_key)


@pytest.mark.parametrize(
    ("arch", "attention_layout", "full_layout"),
    [("sd15", 17, 26), ("sdxl", 12, 20), ("flux", 58, 58)],
)
def test_layouts_are_the_blocks_of_comfyui_models(arch, attention_layout, full_layout):
    """17/12/58 = BASE + the blocks an attention LoRA has; 26/20 = BASE + every block (LyCORIS with conv)."""
    numbered = [b for b in present_blocks(_attention(arch)) if b not in ("BASE", "CLIP", "T5", "IN", "OUT")]
    assert ["BASE", *_ordered(numbered)] == list(LAYOUTS[attention_layout].ids)
    every = [b for b in present_blocks(load_keytable(arch)) if b not in ("BASE", "CLIP", "T5", "IN", "OUT")]
    assert ["BASE", *_ordered(every)] == list(LAYOUTS[full_layout].ids)
    assert arch_of(load_keytable(arch)) == arch


def test_flux_61_layout_names_every_part_of_a_flux_model():
    parts = present_blocks(load_keytable("flux"))
    assert set(LAYOUTS[61].ids) == parts - {"BASE"}


@pytest.mark.parametrize(
    ("keys", "arch"),
    [
        ({"diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024)}, "sd2"),
        ({"diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768)}, "sd15"),
        ({"diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3), "diffusion_model.label_emb.0.0.weight": (1, 2)}, "sdxl"),
        ({"diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (4608, 1536)}, "sd3"),
        ({"clip_l.transformer.text_model.final_layer_norm.weight": (768,)}, "unknown"),
    ],
)  # fmt: skip
def test_arch_of_small_key_sets(keys, arch):
    assert arch_of(keys) == arch


# --- vectors --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", sorted(LAYOUTS))
def test_vector_entry_i_sets_block_i(length):
    layout = LAYOUTS[length]
    arch = layout.arches[0]
    values = [round(0.01 * (i + 1), 2) for i in range(length)]
    bw = parse_block_weights(",".join(map(str, values)), None, arch)
    assert bw.form == "vector" and bw.layout == layout.name and bw.warnings == ()
    for bid, value in zip(layout.ids, values, strict=True):
        assert bw.multiplier(key_of(bid)) == value, bid


def test_17_vector_on_real_sd15_keys_and_blocks_it_lacks_keep_1():
    values = [f"{i / 100:g}" for i in range(1, 18)]
    bw = parse_block_weights(", ".join(values), None, "sd15")
    for key in load_keytable("sd15"):
        bid = block_id(key)
        part = base_part(key)
        expected = float(values[LAYOUTS[17].ids.index(bid)]) if bid in LAYOUTS[17].ids else 1.0
        assert bw(key) == expected, (key, part)
    assert bw("diffusion_model.input_blocks.3.0.op.weight") == 1.0  # IN03: no entry in the 17 layout


def test_labelled_vector_as_preset_files_write_it():
    plain = parse_block_weights("1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0", None, "sd15")
    labelled = parse_block_weights("SD-INS:1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0", None, "sd15")
    assert labelled.form == "vector" and dict(labelled.blocks) == dict(plain.blocks)


def test_flux_61_sets_text_encoders_and_input_output_layers_apart():
    values = ["0.1", "0.2", "0.3", *["1"] * 57, "0.4"]
    bw = parse_block_weights(",".join(values), None, "flux")
    assert bw(key_of("CLIP")) == 0.1 and bw(key_of("T5")) == 0.2
    assert bw("diffusion_model.txt_in.weight") == 0.3 and bw("diffusion_model.final_layer.linear.weight") == 0.4
    assert bw(key_of("D07")) == 1.0


# --- presets --------------------------------------------------------------------------------------------------------

# The Inspire Pack's resources/lbw-preset.txt (same values as the A1111 extension's built-in presets).
INSPIRE_SD = {
    "NONE": "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "ALL": "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
    "INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
    "MIDD0.2": "1,0,0,0,0,0,0.2,0.4,0.4,0.2,0,0,0,0,0,0,0",
    "MIDD0.8": "1,0,0,0,0,0.5,0.8,0.8,0.4,0,0,0,0,0,0,0,0",
    "MOUT": "1,0,0,0,0,0,1,1,1,1,1,1,1,1,0.5,0,0",
    "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0",
    "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
    "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
    "ALL0.5": "0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5",
}
INSPIRE_SDXL = {
    "NONE": "0,0,0,0,0,0,0,0,0,0,0,0",
    "ALL": "1,1,1,1,1,1,1,1,1,1,1,1",
    "INALL": "1,1,1,1,1,0,0,0,0,0,0,0",
    "MIDALL": "1,0,0,0,0,1,0,0,0,0,0,0",
    "OUTALL": "1,0,0,0,0,0,1,1,1,1,1,1",
}
INSPIRE_FLUX = {  # 18 values, applied by Inspire in order to BASE and the LoRA's blocks, the last one repeating
    "FLUX-DBL-FRONT": "1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0",
    "FLUX-DBL-MID": "0,0,0,0,0,0,1,1,1,1,1,1,0,0,0,0,0,0",
    "FLUX-DBL-TAIL": "0,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1,1",
}


@pytest.mark.parametrize("name", sorted(INSPIRE_SD))
@pytest.mark.parametrize("spelling", ["{}", "SD-{}", "{lower}"])
def test_sd_presets_equal_the_published_vectors(name, spelling):
    preset = parse_block_weights(spelling.format(name, lower=name.lower()), None, "sd15")
    vector = parse_block_weights(INSPIRE_SD[name], None, "sd15")
    assert preset.form == "preset"
    for bid in LAYOUTS[17].ids:
        assert preset(key_of(bid)) == vector(key_of(bid)), bid


@pytest.mark.parametrize("name", sorted(INSPIRE_SDXL))
def test_sdxl_presets_equal_the_published_vectors(name):
    preset = parse_block_weights(f"SDXL-{name}", None, "sdxl")
    vector = parse_block_weights(INSPIRE_SDXL[name], None, "sdxl")
    for bid in LAYOUTS[12].ids:
        assert preset(key_of(bid)) == vector(key_of(bid)), bid


@pytest.mark.parametrize("name", sorted(INSPIRE_FLUX))
def test_flux_presets_equal_inspire_on_a_full_flux_lora(name):
    values = [float(v) for v in INSPIRE_FLUX[name].split(",")]
    order = LAYOUTS[58].ids  # BASE, D00-D18, S00-S37: a full FLUX LoRA's blocks in Inspire's order
    preset = parse_block_weights(name, None, "flux")
    for i, bid in enumerate(order):
        assert preset(key_of(bid)) == values[min(i, len(values) - 1)], bid


def test_group_presets_cover_blocks_the_17_layout_lacks():
    """OUTALL on a LyCORIS LoRA: every OUT block (OUT00-02 too) at 1, every IN block (IN03 too) at 0."""
    bw = parse_block_weights("OUTALL", None, "sd15")
    assert [bw(key_of(b)) for b in ("OUT00", "OUT02", "OUT11", "IN03", "IN00", "MID", "BASE")] == [1, 1, 1, 0, 0, 0, 1]


def test_every_preset_parses_for_its_architectures():
    for name, (_, arches) in PRESETS.items():
        for arch in arches or ("sd15", "sdxl", "flux"):
            assert parse_block_weights(name, None, arch).form == "preset"


# --- explicit form --------------------------------------------------------------------------------------------------


def test_explicit_most_specific_wins():
    bw = parse_block_weights("*:0, IN:0.2, IN04:0.5, CLIP:0.3, BASE:0.7", None, "sd15")
    assert bw(key_of("IN04")) == 0.5 and bw(key_of("IN05")) == 0.2
    assert bw(key_of("MID")) == 0 and bw(key_of("OUT03")) == 0
    assert bw(key_of("CLIP")) == 0.3 and bw(key_of("BASE")) == 0.7


def test_explicit_spellings_and_separators():
    bw = parse_block_weights("in4 = 0.25; m00=0\nOUT:-1,", None, "sd15")
    assert bw(key_of("IN04")) == 0.25 and bw(key_of("MID")) == 0 and bw(key_of("OUT07")) == -1
    assert bw(key_of("IN05")) == 1.0


@pytest.mark.parametrize("text", ["IN05-OUT06:0.3", "OUT06-IN05:0.3"])
def test_ranges_follow_block_order(text):
    bw = parse_block_weights(text, None, "sd15")
    inside = ["IN05", "IN08", "IN11", "MID", "OUT00", "OUT06"]
    outside = ["IN04", "OUT07", "BASE"]
    assert all(bw(key_of(b)) == 0.3 for b in inside) and all(bw(key_of(b)) == 1 for b in outside)


def test_flux_groups_and_parts():
    bw = parse_block_weights("D:0, S10-S12:0.5, IN:0.1, OUT:0.2, T5:0", None, "flux")
    assert bw(key_of("D18")) == 0 and bw(key_of("S11")) == 0.5 and bw(key_of("S13")) == 1
    assert bw("diffusion_model.img_in.weight") == 0.1 and bw("diffusion_model.final_layer.linear.weight") == 0.2
    assert bw(key_of("T5")) == 0 and bw(key_of("CLIP")) == 1


@pytest.mark.parametrize("text", ["", "   ", "ALL", "*:1", "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1"])
def test_identity(text):
    bw = parse_block_weights(text, None, "sd15")
    assert bw.is_identity and bw(key_of("IN04")) == 1.0


def test_not_identity_when_anything_differs():
    assert not parse_block_weights("OUT11:0.99", None, "sd15").is_identity
    assert not parse_block_weights("NONE", None, "sd15").is_identity


# --- errors ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "arch", "message"),
    [
        ("IN04:x", "sd15", "blocks: entry 1 'IN04:x' (at character 1): 'x' is not a number"),
        ("1, 0, R", "sd15", "blocks: entry 3 'R' (at character 7): not a number (the Inspire Pack's random"),
        ("IN04:1,\n  FOO:2", "sd15", "blocks: entry 2 'FOO:2' (at character 11): unknown selector 'FOO'"),
        ("IN04:1, OUT", "sd15", "blocks: entry 2 'OUT' (at character 9): expected SELECTOR:VALUE"),
        ("IN12:1", "sd15", "entry 1 'IN12:1' (at character 1): IN12 is not a block of SD1.5 models"),
        ("IN09:1", "sdxl", "IN09 is not a block of SDXL models, which have IN00-IN08, MID, OUT00-OUT08"),
        ("D04:1", "sd15", "D04 is not a block of SD1.5 models"),
        ("MID:0", "flux", "MID is not a block of FLUX models"),
        ("IN04-D02:1", "unknown", "belong to different kinds of model"),
        ("WEIRD", "sd15", "entry 1 'WEIRD' (at character 1): neither a preset (NONE, ALL"),
        ("%in=0.5", "sd15", "blocks: the Inspire Pack's '%…' form"),
        ("INS", "sdxl", "blocks: preset INS is defined for SD1.5/SD2 models, but this model is SDXL"),
        ("FLUX-DBL-FRONT", "sd15", "preset FLUX-DBL-FRONT is defined for FLUX/Chroma models"),
        (",".join(["1"] * 12), "sd15", "blocks: 12 values is the SDXL-12 block layout"),
        (",".join(["1"] * 17), "flux", "give 58 (BASE,D00-D18,S00-S37) or 61 (CLIP,T5,IN,D00-D18,S00-S37,OUT) values"),
        (",".join(["1"] * 17), "sd3", "block vectors are defined for SD1/SD2, SDXL and FLUX models"),
    ],
)
def test_errors_name_input_entry_position_and_token(text, arch, message):
    with pytest.raises(ValueError) as err:
        parse_block_weights(text, None, arch)
    assert message in str(err.value)


def test_wrong_arch_length_lists_the_expected_lengths():
    with pytest.raises(ValueError, match=r"this model is SD1\.5: give 17 \(BASE,IN01,.*\) or 26 \(BASE,IN00-IN11"):
        parse_block_weights(",".join(["0.5"] * 20), None, "sd15")


def test_input_name_is_the_callers():
    with pytest.raises(ValueError, match=r"^rows: row 3 blocks: entry 1"):
        parse_block_weights("IN04:?", None, "sd15", input_name="rows: row 3 blocks")


def test_unknown_arch_accepts_every_layout_length():
    for length, layout in LAYOUTS.items():
        assert parse_block_weights(",".join(["1"] * length), None, "unknown").layout == layout.name


# --- warnings, never errors -----------------------------------------------------------------------------------------

TINY_SD15 = {"BASE", "CLIP", "IN01", "IN03", "MID", "OUT00", "OUT01", "OUT02", "OUT03"}  # the stand-in's attention


def test_vector_of_unknown_length_is_applied_in_order_with_a_warning():
    bw = parse_block_weights("0.1, 0.2, 0.3, 0.4", TINY_SD15, "sd15")
    assert bw.form == "positional" and len(bw.warnings) == 1
    assert (
        "4 values fit no block layout" in bw.warnings[0] and "last value repeats for the remaining 4" in bw.warnings[0]
    )
    got = [bw(key_of(b)) for b in ("BASE", "IN01", "IN03", "MID", "OUT00", "OUT03")]
    assert got == [0.1, 0.2, 0.3, 0.4, 0.4, 0.4]


def test_long_vector_of_unknown_length_ignores_extras():
    bw = parse_block_weights(",".join(["0.5"] * 30), TINY_SD15, "sd15")
    assert "22 extra value(s) ignored" in bw.warnings[0]


def test_17_vector_on_a_lora_with_other_blocks_warns_once_per_kind():
    bw = parse_block_weights("1,0,0,1,1,1,1,1,1,1,1,1,1,1,1,1,1", TINY_SD15, "sd15")
    missing, unused = bw.warnings
    assert "SD1-17 layout has no entry for IN03, OUT00, OUT01, OUT02" in missing and "26-value layout" in missing
    assert "IN01=0" not in unused and "IN02=0 set, but this LoRA has no weights in those blocks" in unused
    assert bw(key_of("IN03")) == 1.0 and bw(key_of("IN01")) == 0.0


def test_explicit_entries_for_absent_blocks_warn():
    bw = parse_block_weights("IN04:0, D:1, OUT:0, MID:0.5", TINY_SD15, "unknown")
    assert bw.warnings == ("blocks: IN04, D name no block this LoRA patches (ignored)",)
    assert parse_block_weights("IN01:0, OUT:0, BASE:0", TINY_SD15, "sd15").warnings == ()


def test_presets_do_not_warn_about_blocks_the_lora_lacks():
    assert parse_block_weights("MIDD0.2", TINY_SD15, "sd15").warnings == ()


@pytest.mark.parametrize(
    ("key", "bid"),
    [
        ("diffusion_model.joint_blocks.7.x_block.attn.qkv.weight", "J07"),
        ("diffusion_model.layers.12.attention.qkv.weight", "L12"),
        ("diffusion_model.noise_refiner.0.attention.qkv.weight", "BASE"),
        ("diffusion_model.transformer_blocks.41.img_mlp.net.2.weight", "B41"),
        ("diffusion_model.double_stream_modulation_img.lin.weight", "BASE"),
        ("diffusion_model.single_blocks.47.linear1.weight", "S47"),
    ],
)
def test_block_ids_of_the_newer_families(key, bid):
    assert block_id(key) == bid


@pytest.mark.parametrize(
    ("arch", "text", "key", "value"),
    [
        ("sd35_large", "J:0.5, J30-J37:0", "diffusion_model.joint_blocks.33.context_block.attn.qkv.weight", 0.0),
        ("sd35_large", "J:0.5, J30-J37:0", "diffusion_model.joint_blocks.3.context_block.attn.qkv.weight", 0.5),
        ("z_image", "L00-L09:0, *:1", "diffusion_model.layers.4.feed_forward.w1.weight", 0.0),
        ("qwen_image", "B:0.3", "diffusion_model.transformer_blocks.59.attn.to_q.weight", 0.3),
        ("flux2_klein_4b", "D:0, S19:2", "diffusion_model.single_blocks.19.linear2.weight", 2.0),
        ("flux2", "IN:0", "diffusion_model.img_in.weight", 0.0),  # FLUX family: IN is the input layers
    ],
)
def test_block_weights_on_the_newer_families(arch, text, key, value):
    assert parse_block_weights(text, None, arch)(key) == value


def test_a_block_the_family_does_not_have_is_named():
    with pytest.raises(
        ValueError, match=r"S20 is not a block of FLUX\.2 \[klein\] 4B models, which have D00-D04, S00-S19"
    ):
        parse_block_weights("S20:0", None, "flux2_klein_4b")
    with pytest.raises(ValueError, match=r"J38 is not a block of SD3\.5 Large models, which have J00-J37"):
        parse_block_weights("J38:0", None, "sd35_large")
