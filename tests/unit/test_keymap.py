"""lora_math.names.keymap.match / guess_base_model against the full-size key tables, thinned layouts and the fixtures.

The key tables (lora_math/names/keytables) are ComfyUI's own SD1.5 / SDXL / FLUX.1 key names and shapes, so a module that
maps here maps on a real ComfyUI model. Full-size key lists are parsed as ``meta`` tensors (shapes only).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lora_math.adapters import Full, LoKr, LoRA
from lora_math.errors import LoraShapeError
from lora_math.formats import ParsedLoRA, parse
from lora_math.names.families import from_file as guess_base_model
from lora_math.names.keymap import Patch, alias_table, match
from lora_math.names.keytables import ARCHES, load_keytable

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
GEN = torch.Generator().manual_seed(1)


from fixtures_path import FIXTURES, needs_fixtures  # noqa: E402


def keylist_state_dict(name: str) -> dict[str, torch.Tensor]:
    """A fixture key list as ``meta`` tensors (shapes only) with real 0-d alphas."""
    doc = json.loads((FIXTURES / "keylists" / f"{name}.json").read_text())
    return {
        key: torch.tensor(8.0) if key.endswith(".alpha") else torch.empty(spec["shape"], device="meta")
        for key, spec in doc.items()
        if isinstance(spec, dict) and "shape" in spec
    }


def lora(out: int, inp: int, r: int = 2, alpha: float | None = None) -> LoRA:
    return LoRA(down=torch.randn(r, inp, generator=GEN), up=torch.randn(out, r, generator=GEN), alpha=alpha)


def parsed(modules: dict, fmt: str = "test") -> ParsedLoRA:
    return ParsedLoRA(format=fmt, modules=modules, metadata={})


def patch_of(km, name_key: str) -> Patch:
    (p,) = [p for p in km.patches if p.key == name_key]
    return p


# --- key tables ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHES)
def test_keytables_hold_comfy_patcher_keys(arch):
    table = load_keytable(arch)
    heads = {k.split(".", 1)[0] for k in table}
    expected = {"sd15": {"diffusion_model", "clip_l"}, "sdxl": {"diffusion_model", "clip_l", "clip_g"},
                "flux": {"diffusion_model", "clip_l", "t5xxl"}, "sd35_large": {"diffusion_model", "clip_l", "clip_g", "t5xxl"},
                "sd35_medium": {"diffusion_model", "clip_l", "clip_g", "t5xxl"}}.get(arch, {"diffusion_model"})  # fmt: skip
    assert heads == expected
    # FLUX.1's q/k norm scales too: BFL control LoRAs replace them
    assert all(k.endswith((".weight", ".bias")) or (arch == "flux" and k.endswith("_norm.scale")) for k in table)
    assert all(isinstance(s, tuple) and all(isinstance(d, int) for d in s) for s in table.values())


def test_keytable_facts():
    sd15, sdxl, flux = (load_keytable(a) for a in ("sd15", "sdxl", "flux"))
    assert sd15["diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] == (320, 768)
    assert sd15["diffusion_model.input_blocks.1.1.proj_in.weight"] == (320, 320, 1, 1)
    assert sdxl["diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"] == (640, 2048)
    assert sdxl["clip_g.transformer.text_model.encoder.layers.31.self_attn.q_proj.weight"] == (1280, 1280)
    assert flux["diffusion_model.double_blocks.18.img_attn.qkv.weight"] == (9216, 3072)
    assert flux["diffusion_model.single_blocks.37.linear1.weight"] == (21504, 3072)
    assert flux["diffusion_model.single_blocks.37.linear2.weight"] == (3072, 15360)
    assert flux["t5xxl.transformer.encoder.block.23.layer.1.DenseReluDense.wo.weight"] == (4096, 10240)


@pytest.mark.parametrize("arch", ARCHES)
def test_every_weight_resolves_from_its_kohya_name(arch):
    """No two weights share a spelling: each key's own kohya name resolves back to it."""
    table = alias_table(load_keytable(arch))
    roles = {"diffusion_model.": ["lora_unet_"], "clip_l.transformer.": ["lora_te1_"],
             "clip_g.transformer.": ["lora_te2_"], "t5xxl.transformer.": ["lora_te3_"]}  # fmt: skip
    if arch == "flux":
        roles["t5xxl.transformer."] = ["lora_te2_", "lora_te3_"]  # FLUX has no CLIP-G: te2 is T5 there
    checked = 0
    for key in table.shapes:
        if not key.endswith(".weight"):
            continue
        prefix = next(p for p in roles if key.startswith(p))
        path = key[len(prefix) : -len(".weight")]
        for role in roles[prefix]:
            assert table.resolve(role + path.replace(".", "_")).key == key
            checked += 1
    assert checked > 80


def test_alias_table_is_cached_per_key_set():
    keys = load_keytable("sdxl")
    assert alias_table(keys) is alias_table(dict(keys))
    assert alias_table(keys) is not alias_table(load_keytable("sd15"))


# --- real files and key lists: full coverage on their base ---------------------------------------------------------


@needs_fixtures
@pytest.mark.parametrize(
    ("file", "components"),
    [
        ("smart_falcon_4_lokr", {"diffusion_model", "clip_l"}),
        ("catundchat_sd15_weapons", {"diffusion_model"}),
        ("diffusers_pr8283_sd15_pokemon", {"diffusion_model"}),
    ],
)
def test_real_files_full_coverage_on_sd15(file, components):
    from lora_math.formats.io import load_state_dict

    sd, meta = load_state_dict(FIXTURES / "real_loras" / f"{file}.safetensors")
    p = parse(sd, meta)
    km = match(p, load_keytable("sd15"))
    assert km.unmatched == () and km.coverage == 1.0 and km.targets == len(p.modules)
    keys = [patch.key for patch in km.patches]
    assert len(keys) == len(set(keys)) == len(p.modules)
    assert {k.split(".", 1)[0] for k in keys} == components
    assert guess_base_model(p) == "sd15"


@needs_fixtures
def test_smart_falcon_conv_and_text_encoder_targets():
    from lora_math.formats.io import load_state_dict

    sd, meta = load_state_dict(FIXTURES / "real_loras" / "smart_falcon_4_lokr.safetensors")
    km = match(parse(sd, meta), load_keytable("sd15"))
    by_key = {p.key: p for p in km.patches}
    conv = by_key["diffusion_model.input_blocks.1.0.in_layers.2.weight"]
    assert isinstance(conv.adapter, LoKr) and conv.adapter.delta_weight((320, 320, 3, 3)).shape == (320, 320, 3, 3)
    assert "diffusion_model.output_blocks.2.1.conv.weight" in by_key  # up_blocks.0.upsamplers.0.conv
    assert "clip_l.transformer.text_model.encoder.layers.11.mlp.fc2.weight" in by_key


@needs_fixtures
def test_old_processor_to_out_lands_on_to_out_0():
    from lora_math.formats.io import load_state_dict

    sd, meta = load_state_dict(FIXTURES / "real_loras" / "catundchat_sd15_weapons.safetensors")
    km = match(parse(sd, meta), load_keytable("sd15"))
    assert "diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_out.0.weight" in {
        p.key for p in km.patches
    }


@needs_fixtures
@pytest.mark.parametrize(
    ("name", "arch"),
    [
        ("sd15_kohya_rank128", "sd15"),
        ("sdxl_kohya_rank32", "sdxl"),
        ("flux_lora_kohya", "flux"),
        ("flux_lora_diffusers", "flux"),
        ("flux_peft_base_model_prefix", "flux"),
    ],
)
def test_keylists_full_coverage_on_their_base(name, arch):
    p = parse(keylist_state_dict(name), {})
    km = match(p, load_keytable(arch))
    assert km.unmatched == () and km.coverage == 1.0 and len(km.patches) == len(p.modules)
    assert guess_base_model(p) == arch


@needs_fixtures
def test_sdxl_text_encoders_land_on_clip_l_and_clip_g():
    km = match(parse(keylist_state_dict("sdxl_kohya_rank32"), {}), load_keytable("sdxl"))
    keys = {p.key for p in km.patches}
    assert "clip_l.transformer.text_model.encoder.layers.11.self_attn.q_proj.weight" in keys
    assert "clip_g.transformer.text_model.encoder.layers.31.mlp.fc2.weight" in keys
    assert "diffusion_model.output_blocks.5.1.transformer_blocks.1.attn2.to_k.weight" in keys


@needs_fixtures
def test_flux_diffusers_split_qkv_fill_fused_rows_exactly():
    km = match(parse(keylist_state_dict("flux_lora_diffusers"), {}), load_keytable("flux"))
    rows: dict[str, list[tuple[int, int]]] = {}
    for p in km.patches:
        if p.rows is not None:
            rows.setdefault(p.key, []).append(p.rows)
    assert sorted(rows["diffusion_model.single_blocks.0.linear1.weight"]) == [
        (0, 3072), (3072, 6144), (6144, 9216), (9216, 21504)]  # fmt: skip
    thirds = [(0, 3072), (3072, 6144), (6144, 9216)]
    assert sorted(rows["diffusion_model.double_blocks.0.img_attn.qkv.weight"]) == thirds
    assert sorted(rows["diffusion_model.double_blocks.0.txt_attn.qkv.weight"]) == thirds
    fused = [k for k in rows if k.endswith(("qkv.weight", "linear1.weight"))]
    assert len(fused) == 19 * 2 + 38


# --- thinned and synthetic layouts ---------------------------------------------------------------------------------

_RES = ("in_layers.2", "emb_layers.1", "out_layers.3")
_ATTN = ("proj_in", "proj_out", "transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn2.to_k")


def thin_sd15_keys() -> dict[str, tuple[int, ...]]:
    """ComfyUI's key layout of SD1.5 with num_res_blocks [1, 1], channel_mult [1, 2] (shapes irrelevant here)."""
    blocks = {
        "input_blocks.1.0": _RES, "input_blocks.1.1": _ATTN, "input_blocks.2.0": ("op",),
        "input_blocks.3.0": (*_RES, "skip_connection"), "input_blocks.3.1": _ATTN,
        "middle_block.0": _RES, "middle_block.1": _ATTN, "middle_block.2": _RES,
        "output_blocks.0.0": (*_RES, "skip_connection"), "output_blocks.0.1": _ATTN,
        "output_blocks.1.0": (*_RES, "skip_connection"), "output_blocks.1.1": _ATTN, "output_blocks.1.2": ("conv",),
        "output_blocks.2.0": (*_RES, "skip_connection"), "output_blocks.2.1": _ATTN,
        "output_blocks.3.0": (*_RES, "skip_connection"), "output_blocks.3.1": _ATTN,
    }  # fmt: skip
    paths = [f"{b}.{c}" for b, children in blocks.items() for c in children]
    paths += ["input_blocks.0.0", "time_embed.0", "time_embed.2", "out.2"]
    return {f"diffusion_model.{p}.weight": (4, 4) for p in paths}


@pytest.mark.parametrize(
    ("diffusers", "ldm"),
    [
        ("down_blocks_0_resnets_0_conv1", "input_blocks.1.0.in_layers.2"),
        ("down_blocks_0_attentions_0_proj_in", "input_blocks.1.1.proj_in"),
        ("down_blocks_0_downsamplers_0_conv", "input_blocks.2.0.op"),
        ("down_blocks_1_resnets_0_conv_shortcut", "input_blocks.3.0.skip_connection"),
        ("mid_block_resnets_1_time_emb_proj", "middle_block.2.emb_layers.1"),
        ("mid_block_attentions_0_transformer_blocks_0_attn2_to_k", "middle_block.1.transformer_blocks.0.attn2.to_k"),
        ("up_blocks_0_resnets_1_conv2", "output_blocks.1.0.out_layers.3"),
        ("up_blocks_0_upsamplers_0_conv", "output_blocks.1.2.conv"),
        ("up_blocks_1_resnets_0_conv_shortcut", "output_blocks.2.0.skip_connection"),
        ("up_blocks_1_attentions_1_proj_out", "output_blocks.3.1.proj_out"),
        ("conv_in", "input_blocks.0.0"),
        ("conv_out", "out.2"),
        ("time_embedding_linear_2", "time_embed.2"),
    ],
)
def test_thinned_sd15_diffusers_names_derived_from_keys(diffusers, ldm):
    table = alias_table(thin_sd15_keys())
    assert table.resolve(f"lora_unet_{diffusers}").key == f"diffusion_model.{ldm}.weight"
    assert table.resolve(f"lycoris_{diffusers}").key == f"diffusion_model.{ldm}.weight"


def test_thinned_sd15_dotted_diffusers_and_old_processor_names():
    table = alias_table(thin_sd15_keys())
    assert table.resolve("unet.up_blocks.1.attentions.1.proj_out").key.endswith("output_blocks.3.1.proj_out.weight")
    assert table.resolve("up_blocks.0.upsamplers.0.conv").key.endswith("output_blocks.1.2.conv.weight")
    name = "mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora"
    assert table.resolve(name).key == "diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.weight"


@pytest.mark.parametrize(
    ("model_key", "module"),
    [
        ("diffusion_model.blocks.0.cross_attn.k.weight", "lora_unet__blocks_0_cross_attn_k"),  # Wan-Fun
        ("diffusion_model.blocks.0.cross_attn.k.weight", "lora_unet_blocks_0_cross_attn_k_"),  # SimpleTuner
        ("diffusion_model.blocks.0.cross_attn.k.weight", "diffusion_model.blocks.0.cross_attn.k"),
        ("diffusion_model.blocks.0.cross_attn.k.weight", "base_model.model.blocks.0.cross_attn.k"),
        ("clip_h.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
         "lora_te_text_model_encoder_layers_0_self_attn_q_proj"),  # SD2: te -> clip_h
        ("clip_h.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
         "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"),
    ],
)  # fmt: skip
def test_name_variants_resolve(model_key, module):
    assert alias_table({model_key: (8, 8)}).resolve(module).key == model_key


def test_flux_text_encoder_roles():
    table = alias_table(load_keytable("flux"))
    t5 = "t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight"
    assert table.resolve("lora_te2_encoder_block_0_layer_0_SelfAttention_q").key == t5
    assert table.resolve("lora_te3_encoder_block_0_layer_0_SelfAttention_q").key == t5
    assert table.resolve("text_encoder_2.encoder.block.0.layer.0.SelfAttention.q").key == t5
    clip = "clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
    assert table.resolve("lora_te1_text_model_encoder_layers_0_self_attn_q_proj").key == clip
    assert table.resolve("text_encoder.text_model.encoder.layers.0.self_attn.q_proj").key == clip


def test_sd15_text_encoder_kohya_name():
    table = alias_table(load_keytable("sd15"))
    target = table.resolve("lora_te_text_model_encoder_layers_0_self_attn_q_proj")
    assert target.key == "clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"


def test_flux_xlabs_and_bfl_names():
    flux = load_keytable("flux")
    mods = {
        "double_blocks.3.processor.qkv_lora1": lora(9216, 3072),
        "double_blocks.3.processor.proj_lora2": lora(3072, 3072),
        "diffusion_model.single_blocks.2.linear2": lora(3072, 15360),
        "lora_unet_single_blocks_2_modulation_lin": lora(9216, 3072),
    }
    km = match(parsed(mods), flux)
    assert km.coverage == 1.0
    assert {p.key for p in km.patches} == {
        "diffusion_model.double_blocks.3.img_attn.qkv.weight",
        "diffusion_model.double_blocks.3.txt_attn.proj.weight",
        "diffusion_model.single_blocks.2.linear2.weight",
        "diffusion_model.single_blocks.2.modulation.lin.weight",
    }
    assert all(p.rows is None for p in km.patches)


def tiny_flux_keys() -> dict[str, tuple[int, ...]]:
    """A FLUX-shaped key set with hidden 4 (qkv 12 rows, linear1 12 + 16 rows)."""
    return {
        "diffusion_model.double_blocks.0.img_attn.qkv.weight": (12, 4),
        "diffusion_model.double_blocks.0.img_attn.qkv.bias": (12,),
        "diffusion_model.single_blocks.0.linear1.weight": (28, 4),
        "diffusion_model.final_layer.adaLN_modulation.1.weight": (8, 4),
        "diffusion_model.img_in.weight": (4, 8),
        "diffusion_model.img_in.bias": (4,),
    }


def test_row_slices_follow_the_model_hidden_size():
    km = match(
        parsed(
            {
                "transformer.transformer_blocks.0.attn.to_k": lora(4, 4),
                "transformer.single_transformer_blocks.0.proj_mlp": lora(16, 4),
                "lora_transformer_single_transformer_blocks_0_attn_to_v": lora(4, 4),
            }
        ),
        tiny_flux_keys(),
    )
    rows = sorted((p.key.split(".")[1], p.rows) for p in km.patches)
    assert rows == [("double_blocks", (4, 8)), ("single_blocks", (8, 12)), ("single_blocks", (12, 28))]


def test_norm_out_swaps_shift_and_scale_halves():
    adapter = lora(8, 4, alpha=2.0)
    km = match(parsed({"transformer.norm_out.linear": adapter}), tiny_flux_keys())
    (p,) = km.patches
    assert p.key == "diffusion_model.final_layer.adaLN_modulation.1.weight" and p.rows is None
    want = adapter.delta_weight((8, 4))
    assert torch.equal(p.adapter.delta_weight((8, 4)), torch.cat([want[4:], want[:4]]))


@pytest.mark.parametrize("w1_rows", [2, 1])  # kron rows interleave (2: halves of w1 too; 1: w2 alone)
def test_norm_out_lokr_swaps_halves_of_its_dense_delta(w1_rows):
    """A Kronecker product's output halves are not one factor's halves in general: SimpleTuner's LyCORIS LoKr on
    ``norm_out.linear`` becomes its dense ΔW with the halves swapped (exact without DoRA)."""
    adapter = LoKr(w1=torch.randn(w1_rows, 2, generator=GEN), w2=torch.randn(8 // w1_rows, 2, generator=GEN))
    km = match(parsed({"lycoris_norm_out_linear": adapter}), tiny_flux_keys())
    (p,) = km.patches
    want = adapter.delta_weight((8, 4))
    assert isinstance(p.adapter, Full) and torch.equal(p.adapter.delta_weight((8, 4)), torch.cat([want[4:], want[:4]]))


def test_full_diff_and_bias_become_one_patch_per_key():
    diff, diff_b = torch.randn(12, 4, generator=GEN), torch.randn(12, generator=GEN)
    km = match(parsed({"double_blocks.0.img_attn.qkv": Full(diff=diff, diff_b=diff_b)}), tiny_flux_keys())
    by_key = {p.key: p for p in km.patches}
    assert set(by_key) == {"diffusion_model.double_blocks.0.img_attn.qkv.weight",
                           "diffusion_model.double_blocks.0.img_attn.qkv.bias"}  # fmt: skip
    assert torch.equal(by_key["diffusion_model.double_blocks.0.img_attn.qkv.bias"].adapter.delta_weight((12,)), diff_b)
    assert by_key["diffusion_model.double_blocks.0.img_attn.qkv.weight"].adapter.diff_b is None


def test_bfl_control_lora_bias_patches_and_widened_img_in():
    sd = {
        "img_in.lora_A.weight": torch.randn(2, 16, generator=GEN),  # control LoRAs double img_in's input channels
        "img_in.lora_B.weight": torch.randn(4, 2, generator=GEN),
        "img_in.lora_B.bias": torch.randn(4, generator=GEN),
        "double_blocks.0.img_attn.qkv.lora_A.weight": torch.randn(2, 4, generator=GEN),
        "double_blocks.0.img_attn.qkv.lora_B.weight": torch.randn(12, 2, generator=GEN),
        "double_blocks.0.img_attn.qkv.lora_B.bias": torch.randn(12, generator=GEN),
    }
    p = parse(sd, {})
    with pytest.raises(LoraShapeError) as err:
        match(p, tiny_flux_keys())
    msg = str(err.value)
    assert "img_in" in msg and "[4, 16]" in msg and "[4, 8]" in msg
    km = match(p, tiny_flux_keys(), strict=False)
    assert km.mismatched == ("img_in",) and "img_in" in km.unmatched
    keys = {p.key for p in km.patches}
    assert keys == {"diffusion_model.img_in.bias", "diffusion_model.double_blocks.0.img_attn.qkv.weight",
                    "diffusion_model.double_blocks.0.img_attn.qkv.bias"}  # fmt: skip


def test_shape_mismatch_names_module_found_and_expected():
    bad = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": lora(320, 1024)}
    with pytest.raises(LoraShapeError) as err:
        match(parsed(bad), load_keytable("sd15"))
    msg = str(err.value)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k" in msg
    assert "[320, 1024]" in msg and "[320, 768]" in msg
    assert "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in msg


def test_other_base_model_is_unmatched_not_an_error():
    mods = {"lora_unet_down_blocks_0_attentions_0_proj_in": lora(320, 320), "lora_te_text_model_x": lora(4, 4)}
    km = match(parsed(mods), load_keytable("flux"))
    assert km.patches == () and km.matched == () and km.coverage == 0.0
    assert km.unmatched == tuple(mods) and km.targets == 2


def test_conv_adapter_on_1x1_conv_and_linear_down():
    sd15 = load_keytable("sd15")
    km = match(parsed({"lora_unet_down_blocks_0_attentions_0_proj_in": lora(320, 320)}), sd15)
    (p,) = km.patches
    assert p.key == "diffusion_model.input_blocks.1.1.proj_in.weight"
    assert p.adapter.delta_weight(sd15[p.key]).shape == (320, 320, 1, 1)


# --- guess_base_model -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("modules", "metadata", "base"),
    [
        ({"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k": (640, 1024)}, {}, "sd2"),
        ({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v": (640, 2048)}, {}, "sdxl"),
        ({"lora_unet_input_blocks_4_1_proj_in": (640, 640)}, {}, "sdxl"),
        ({"lora_te2_text_model_encoder_layers_0_self_attn_q_proj": (1280, 1280)}, {}, "sdxl"),
        ({"lora_te_text_model_encoder_layers_0_self_attn_q_proj": (1024, 1024)}, {}, "sd2"),
        ({"lora_te_text_model_encoder_layers_0_self_attn_q_proj": (768, 768)}, {}, "sd15"),
        ({"lora_unet_joint_blocks_0_x_block_attn_qkv": (4608, 1536)}, {}, "sd35_medium"),
        ({"transformer.transformer_blocks.0.attn.add_q_proj": (1536, 1536)}, {}, "sd35_medium"),
        ({"transformer.transformer_blocks.3.attn.to_k": (2432, 2432)}, {}, "sd35_large"),
        ({"lora_unet_joint_blocks_0_x_block_attn_qkv": (7296, 2432)}, {}, "sd35_large"),
        ({"transformer.transformer_blocks.0.attn.to_q": (6144, 6144)}, {}, "flux2"),
        ({"diffusion_model.single_blocks.3.linear1": (27648, 3072)}, {}, "flux2_klein_4b"),  # 9 × hidden: FLUX.2
        ({"lora_unet_single_blocks_3_linear1": (36864, 4096)}, {}, "flux2_klein_9b"),
        ({"lora_unet_double_blocks_0_img_mlp_0": (18432, 3072)}, {}, "flux2_klein_4b"),  # gated MLP: 6 × hidden
        ({"transformer.single_transformer_blocks.0.attn.to_qkv_mlp_proj": (27648, 3072)}, {}, "flux2_klein_4b"),
        ({"transformer.double_stream_modulation_img.linear": (18432, 3072)}, {}, "flux2_klein_4b"),
        ({"lora_unet_double_blocks_0_img_mlp_0": (12288, 3072)}, {}, "flux"),
        ({"diffusion_model.distilled_guidance_layer.layers.0.in_layer": (5120, 5120)}, {}, "chroma"),
        ({"lora_unet_double_blocks_0_img_attn_qkv": (9216, 3072)}, {"modelspec.architecture": "chroma"}, "chroma"),
        ({"lora_unet_double_blocks_0_img_attn_qkv": (9216, 3072)}, {}, "flux"),
        ({"diffusion_model.layers.0.attention.qkv": (11520, 3840)}, {}, "z_image"),
        ({"lora_unet_layers_0_attention_to_q": (3840, 3840)}, {}, "z_image"),  # musubi-tuner native
        ({"transformer.layers.0.feed_forward.w1": (10240, 3840)}, {}, "z_image"),
        ({"transformer_blocks.0.img_mlp.net.0.proj.lora_A.default": (12288, 3072)}, {}, "qwen_image"),  # DiffSynth
        ({"transformer.transformer_blocks.40.attn.to_q": (3072, 3072)}, {}, "qwen_image"),  # deeper than FLUX.1
        ({"transformer.transformer_blocks.0.attn.add_q_proj": (3072, 3072)}, {}, "flux"),
        ({"lora_unet_single_blocks_0_linear1": (21504, 3072)}, {}, "flux"),
        ({"lora_unet_conv_in": (320, 36)}, {"ss_base_model_version": "sdxl_base_v1-0"}, "sdxl"),
        ({"lora_unet_conv_in": (320, 36)}, {"ss_v2": "True"}, "sd2"),
        ({"lora_unet_conv_in": (320, 36)}, {"modelspec.architecture": "flux-1-dev/lora"}, "flux"),
        ({"lora_unet_conv_in": (320, 36)}, {}, "unknown"),
    ],
)
def test_guess_base_model(modules, metadata, base):
    mods = {name: lora(*shape) for name, shape in modules.items()}
    assert guess_base_model(ParsedLoRA(format="test", modules=mods, metadata=metadata)) == base


@pytest.mark.parametrize(
    ("arch", "module", "model_key"),
    [
        ("sd15", "text_encoder.encoder.layers.3.self_attn.q_proj",
         "clip_l.transformer.text_model.encoder.layers.3.self_attn.q_proj.weight"),  # diffusers ≥ 0.34 / transformers 5
        ("sd15", "lora_te_encoder_layers_3_mlp_fc1", "clip_l.transformer.text_model.encoder.layers.3.mlp.fc1.weight"),
        ("sd15", "lora_te1_encoder_layers_3_self_attn_out_proj",  # diffusers' own kohya conversion
         "clip_l.transformer.text_model.encoder.layers.3.self_attn.out_proj.weight"),
        ("sdxl", "text_encoder_2.encoder.layers.30.self_attn.k_proj",
         "clip_g.transformer.text_model.encoder.layers.30.self_attn.k_proj.weight"),
        ("sdxl", "lora_te2_encoder_layers_30_mlp_fc2", "clip_g.transformer.text_model.encoder.layers.30.mlp.fc2.weight"),
    ],
)  # fmt: skip
def test_text_encoder_names_without_the_text_model_level(arch, module, model_key):
    assert alias_table(load_keytable(arch)).resolve(module).key == model_key


@pytest.mark.parametrize("arch", [a for a in ARCHES if a not in ("sd15", "sdxl")])
def test_each_family_is_told_from_a_full_lora_of_its_own(arch):
    """A LoRA on every targetable denoiser weight of the full-size model, under the model's own names, is guessed
    as that family (the key tables are ComfyUI's classes on meta)."""
    modules = {
        key[: -len(".weight")]: lora(*shape[:2])
        for key, shape in load_keytable(arch).items()
        if key.startswith("diffusion_model.") and key.endswith(".weight") and len(shape) == 2
    }
    assert guess_base_model(parsed(modules)) == arch


def test_diffusers_kohya_conversion_of_its_own_lora_down_names():
    """``convert_all_state_dict_to_peft`` + ``convert_state_dict_to_kohya`` on a saved diffusers SD file leave the
    UNet names as ``…_to_k_lora.down.weight`` (the diffusers docs' recipe); diffusers cannot load them, Loom can."""
    table = alias_table(load_keytable("sd15"))
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0_lora"
    assert table.resolve(name).key == "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.weight"
