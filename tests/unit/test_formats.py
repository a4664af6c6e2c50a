"""lora_math.formats.parse: every family of docs/lora-formats.md, the alpha rules, and the refusals.

Synthetic state dicts are built from the format description with tiny tensors; the real files and full-size key lists
of the fixtures corpus are parsed as they are (key lists as ``meta`` tensors: shapes only, no memory).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lora_math.adapters import Full, LoHa, LoKr, LoRA, Replace
from lora_math.errors import LoraFormatError, LoraShapeError
from lora_math.formats import ParsedLoRA, parse

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
GEN = torch.Generator().manual_seed(0)


from fixtures_path import FIXTURES, needs_fixtures  # noqa: E402


def t(*shape: int) -> torch.Tensor:
    """A small random fp32 tensor."""
    return torch.randn(*shape, generator=GEN)


def a(value: float) -> torch.Tensor:
    """A 0-d alpha tensor as kohya stores it (fp16)."""
    return torch.tensor(value, dtype=torch.float16)


def lora_pair(prefix: str, out: int, inp: int, r: int = 2, *, down: str, up: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{down}": t(r, inp), f"{prefix}.{up}": t(out, r)}


def keylist_state_dict(name: str) -> dict[str, torch.Tensor]:
    """A fixture key list as tensors: ``meta`` for weights (shape only), real 0-d alphas (their value is read)."""
    doc = json.loads((FIXTURES / "keylists" / f"{name}.json").read_text())
    out = {}
    for key, spec in doc.items():
        if not isinstance(spec, dict) or "shape" not in spec:
            continue
        shape = spec["shape"]
        out[key] = torch.tensor(8.0) if key.endswith(".alpha") else torch.empty(shape, device="meta")
    return out


# --- kohya / LyCORIS ----------------------------------------------------------------------------------------------


def test_kohya_lora_with_alpha():
    sd = {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": t(4, 320),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": t(320, 4),
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": a(2.0),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": t(4, 768),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": t(3072, 4),
    }
    p = parse(sd, {"ss_network_dim": "4"})
    assert isinstance(p, ParsedLoRA) and p.format == "kohya"
    m = p.modules["lora_unet_down_blocks_0_attentions_0_proj_in"]
    assert isinstance(m, LoRA) and m.alpha == 2.0 and m.scale == 0.5
    te = p.modules["lora_te_text_model_encoder_layers_0_mlp_fc1"]
    assert te.alpha is None and te.scale == 1.0  # kohya without alpha: scale 1
    assert p.metadata == {"ss_network_dim": "4"} and p.ignored == ()


def test_locon_conv_and_tucker_mid():
    sd = {
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": t(4, 320, 3, 3),
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": t(320, 4, 1, 1),
        "lora_unet_down_blocks_0_resnets_0_conv1.alpha": a(1.0),
        "lora_unet_down_blocks_0_resnets_0_conv2.lora_down.weight": t(4, 320, 1, 1),
        "lora_unet_down_blocks_0_resnets_0_conv2.lora_mid.weight": t(4, 4, 3, 3),
        "lora_unet_down_blocks_0_resnets_0_conv2.lora_up.weight": t(320, 4, 1, 1),
        "lora_unet_down_blocks_0_resnets_0_conv2.alpha": a(4.0),
    }
    p = parse(sd, {})
    conv1 = p.modules["lora_unet_down_blocks_0_resnets_0_conv1"]
    conv2 = p.modules["lora_unet_down_blocks_0_resnets_0_conv2"]
    assert p.format == "kohya"
    assert conv1.mid is None and conv1.fan_in == 320 * 9 and conv1.scale == 0.25
    assert conv2.mid is not None and conv2.fan_in == 320 * 9 and conv2.scale == 1.0


def test_loha_with_and_without_tucker():
    sd = {
        "lora_unet_mid_block_attentions_0_proj_in.hada_w1_a": t(1280, 4),
        "lora_unet_mid_block_attentions_0_proj_in.hada_w1_b": t(4, 1280),
        "lora_unet_mid_block_attentions_0_proj_in.hada_w2_a": t(1280, 4),
        "lora_unet_mid_block_attentions_0_proj_in.hada_w2_b": t(4, 1280),
        "lora_unet_mid_block_attentions_0_proj_in.alpha": a(2.0),
        "lora_unet_mid_block_resnets_0_conv1.hada_w1_a": t(4, 1280),
        "lora_unet_mid_block_resnets_0_conv1.hada_w1_b": t(4, 1280),
        "lora_unet_mid_block_resnets_0_conv1.hada_w2_a": t(4, 1280),
        "lora_unet_mid_block_resnets_0_conv1.hada_w2_b": t(4, 1280),
        "lora_unet_mid_block_resnets_0_conv1.hada_t1": t(4, 4, 3, 3),
        "lora_unet_mid_block_resnets_0_conv1.hada_t2": t(4, 4, 3, 3),
    }
    p = parse(sd, {})
    assert p.format == "lycoris-loha"
    lin = p.modules["lora_unet_mid_block_attentions_0_proj_in"]
    conv = p.modules["lora_unet_mid_block_resnets_0_conv1"]
    assert isinstance(lin, LoHa) and lin.scale == 0.5  # alpha / hada_w1_b.shape[0]
    assert isinstance(conv, LoHa) and conv.t1 is not None and conv.out_features == 1280 and conv.fan_in == 1280 * 9


def test_lokr_factorised_and_full_halves():
    sd = {
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lokr_w1_a": t(64, 4),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lokr_w1_b": t(4, 32),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lokr_w2_a": t(48, 4),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lokr_w2_b": t(4, 24),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": a(4.0),
        "lora_te_text_model_encoder_layers_0_mlp_fc2.lokr_w1": t(32, 64),
        "lora_te_text_model_encoder_layers_0_mlp_fc2.lokr_w2": t(24, 48),
        "lora_te_text_model_encoder_layers_0_mlp_fc2.alpha": a(4.0),
    }
    p = parse(sd, {})
    assert p.format == "lycoris-lokr"
    fc1 = p.modules["lora_te_text_model_encoder_layers_0_mlp_fc1"]
    fc2 = p.modules["lora_te_text_model_encoder_layers_0_mlp_fc2"]
    assert isinstance(fc1, LoKr) and (fc1.out_features, fc1.fan_in) == (3072, 768) and fc1.scale == 1.0
    assert isinstance(fc2, LoKr) and fc2.rank is None and fc2.scale == 1.0  # both halves full: alpha ignored


def test_full_diff_modules():
    sd = {
        "lora_unet_conv_in.diff": t(320, 4, 3, 3),
        "lora_unet_conv_in.diff_b": t(320),
        "lora_unet_time_embedding_linear_1.diff": t(1280, 320),
    }
    p = parse(sd, {})
    assert p.format == "lycoris-full"
    assert isinstance(p.modules["lora_unet_conv_in"], Full) and p.modules["lora_unet_conv_in"].diff_b is not None
    assert p.modules["lora_unet_time_embedding_linear_1"].diff_b is None


@pytest.mark.parametrize(
    ("keys", "fmt"),
    [
        ({"lora_unet_x_to_q.lora_down.weight": (2, 8), "lora_unet_x_to_q.lora_up.weight": (8, 2)}, "kohya+dora"),
        ({"lora_unet_x_to_q.hada_w1_a": (8, 2), "lora_unet_x_to_q.hada_w1_b": (2, 8)} | {
            "lora_unet_x_to_q.hada_w2_a": (8, 2), "lora_unet_x_to_q.hada_w2_b": (2, 8)}, "lycoris-loha+dora"),
        ({"lora_transformer_x_to_q.lora_down.weight": (2, 8), "lora_transformer_x_to_q.lora_up.weight": (8, 2)},
         "onetrainer+dora"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("dora_shape", [(8, 1), (8,), (1, 8)])
def test_dora_scale_on_any_adapter(keys, fmt, dora_shape):
    sd = {k: t(*s) for k, s in keys.items()}
    module = next(iter(keys)).split(".")[0]
    sd[f"{module}.dora_scale"] = t(*dora_shape)
    sd[f"{module}.alpha"] = a(2.0)
    p = parse(sd, {})
    assert p.format == fmt
    assert p.modules[module].dora_scale.shape == dora_shape


@pytest.mark.parametrize(
    "suffix",
    ["lora_magnitude_vector", "lora_magnitude_vector.weight", "lora_magnitude_vector.default.weight"],
)
def test_peft_magnitude_vector_is_dora_scale(suffix):
    sd = {
        "base_model.model.blocks.0.attn.q.lora_A.weight": t(2, 8),
        "base_model.model.blocks.0.attn.q.lora_B.weight": t(8, 2),
        f"base_model.model.blocks.0.attn.q.{suffix}": t(8),
    }
    p = parse(sd, {})
    assert p.format == "diffusers-peft+dora"
    assert p.modules["base_model.model.blocks.0.attn.q"].dora_scale.shape == (8,)


# --- diffusers / PEFT -------------------------------------------------------------------------------------------------


def test_diffusers_attention_processor_and_text_linear_layer():
    sd = lora_pair(
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora",
        320,
        320,
        down="down.weight",
        up="up.weight",
    ) | lora_pair(
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
        768,
        768,
        down="lora_linear_layer.down.weight",
        up="lora_linear_layer.up.weight",
    )
    p = parse(sd, {})
    assert p.format == "diffusers-attn-processor"
    assert set(p.modules) == {
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora",
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
    }
    assert all(m.alpha is None and m.scale == 1.0 for m in p.modules.values())  # no alpha: scale 1


def test_diffusers_lora_layer_down_up():
    sd = lora_pair("unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0", 1280, 1280,
                   down="lora.down.weight", up="lora.up.weight")  # fmt: skip
    p = parse(sd, {})
    assert p.format == "diffusers-lora-layer"
    assert p.modules["unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0"].scale == 1.0


@pytest.mark.parametrize(
    "prefix",
    ["unet.", "text_encoder.", "text_encoder_2.", "transformer.", "base_model.model.", ""],
)
@pytest.mark.parametrize(("down", "up"), [("lora_A.weight", "lora_B.weight"),
                                          ("lora_A.default.weight", "lora_B.default.weight")])  # fmt: skip
def test_peft_prefixes_default_alpha_is_rank(prefix, down, up):
    sd = lora_pair(f"{prefix}blocks.0.attn.to_k", 16, 8, r=4, down=down, up=up)
    p = parse(sd, {})
    (adapter,) = p.modules.values()
    assert list(p.modules) == [f"{prefix}blocks.0.attn.to_k"]
    assert adapter.alpha == 4.0 and adapter.scale == 1.0  # no config: alpha = r


def test_alpha_tensor_that_the_metadata_contradicts_is_refused_naming_the_key():
    sd = lora_pair("transformer.blocks.0.to_k", 16, 8, r=4, down="lora_A.weight", up="lora_B.weight")
    sd["transformer.blocks.0.to_k.alpha"] = a(2.0)
    meta = {"lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": 16})}
    with pytest.raises(
        LoraFormatError, match=r"^transformer\.blocks\.0\.to_k\.alpha = 2 but .* alpha 16 .*contradicts"
    ):
        parse(sd, meta)


def test_alpha_tensor_that_the_metadata_agrees_with_is_read():
    sd = lora_pair("transformer.blocks.0.to_k", 16, 8, r=4, down="lora_A.weight", up="lora_B.weight")
    sd["transformer.blocks.0.to_k.alpha"] = a(16.0)
    meta = {"lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": 16})}
    assert parse(sd, meta).modules["transformer.blocks.0.to_k"].scale == 4.0


@pytest.mark.parametrize(
    "module, down, up",
    [
        ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "lora.down.weight", "lora.up.weight"),
        (
            "text_encoder.encoder.layers.0.self_attn.q_proj",
            "lora_linear_layer.down.weight",
            "lora_linear_layer.up.weight",
        ),
    ],
)
def test_diffusers_old_key_styles_take_the_component_alpha_from_the_metadata(module, down, up):
    """diffusers ≥ 0.34 saves SD UNet / text-encoder LoRAs with ``lora.down``/``lora_linear_layer`` keys and the
    alpha only in the header, per component (``unet.lora_alpha``); r = 8, alpha 16 is scale 2, not 1."""
    sd = lora_pair(module, 32, 32, r=8, down=down, up=up)
    meta = {"lora_adapter_metadata": json.dumps({"unet.r": 8, "unet.lora_alpha": 16, "text_encoder.r": 8,
                                                 "text_encoder.lora_alpha": 16})}  # fmt: skip
    assert parse(sd, meta).modules[module].scale == 2.0
    assert parse(sd, {}).modules[module].scale == 1.0  # no metadata: no alpha (scale 1), as before


def test_peft_metadata_real_case_r4_alpha16_gives_scale_4():
    sd = lora_pair("transformer.single_transformer_blocks.0.attn.to_q", 3072, 3072, r=4,
                   down="lora_A.weight", up="lora_B.weight")  # fmt: skip
    meta = {"lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": 16, "use_dora": False}, indent=2)}
    assert parse(sd, meta).modules["transformer.single_transformer_blocks.0.attn.to_q"].scale == 4.0


def test_peft_metadata_component_prefix_and_patterns():
    sd = (
        lora_pair("transformer.blocks.0.attn.to_q", 16, 8, r=4, down="lora_A.weight", up="lora_B.weight")
        | lora_pair("transformer.blocks.0.ff.net.2", 8, 32, r=4, down="lora_A.weight", up="lora_B.weight")
        | lora_pair("text_encoder.layers.0.q_proj", 8, 8, r=2, down="lora_A.weight", up="lora_B.weight")
    )
    meta = {
        "lora_adapter_metadata": json.dumps(
            {
                "transformer.r": 4,
                "transformer.lora_alpha": 8,
                "transformer.alpha_pattern": {"ff.net.2": 2},
                "text_encoder.r": 2,
                "text_encoder.lora_alpha": 1,
            }
        )
    }
    mods = parse(sd, meta).modules
    assert mods["transformer.blocks.0.attn.to_q"].scale == 2.0  # 8 / 4
    assert mods["transformer.blocks.0.ff.net.2"].scale == 0.5  # alpha_pattern 2 / 4
    assert mods["text_encoder.layers.0.q_proj"].scale == 0.5  # 1 / 2


def test_peft_metadata_of_one_component_leaves_others_at_alpha_r():
    sd = lora_pair("transformer.blocks.0.to_q", 8, 8, r=4, down="lora_A.weight", up="lora_B.weight")
    sd |= lora_pair("text_encoder.layers.0.q_proj", 8, 8, r=4, down="lora_A.weight", up="lora_B.weight")
    sd |= lora_pair("blocks.1.to_q", 8, 8, r=4, down="lora_A.weight", up="lora_B.weight")
    mods = parse(sd, {"lora_adapter_metadata": json.dumps({"transformer.r": 4, "transformer.lora_alpha": 8})}).modules
    assert mods["transformer.blocks.0.to_q"].scale == 2.0
    assert mods["text_encoder.layers.0.q_proj"].scale == 1.0  # not described: alpha = r
    assert mods["blocks.1.to_q"].scale == 2.0  # unprefixed names take the single described component's config


def test_peft_use_rslora_scales_by_sqrt_rank():
    sd = lora_pair("unet.blocks.0.to_v", 16, 8, r=4, down="lora_A.weight", up="lora_B.weight")
    meta = {"lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": 8, "use_rslora": True})}
    assert math.isclose(parse(sd, meta).modules["unet.blocks.0.to_v"].scale, 8 / math.sqrt(4))


def test_peft_sidecar_adapter_config():
    sd = lora_pair("base_model.model.blocks.0.to_v", 16, 8, r=4, down="lora_A.weight", up="lora_B.weight")
    sidecar = {"r": 4, "lora_alpha": 16, "alpha_pattern": {}, "rank_pattern": {}, "target_modules": ["to_v"]}
    assert parse(sd, {}, sidecar).modules["base_model.model.blocks.0.to_v"].scale == 4.0
    # Header metadata comes before the sidecar.
    meta = {"lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": 8})}
    assert parse(sd, meta, sidecar).modules["base_model.model.blocks.0.to_v"].scale == 2.0


def test_bad_lora_adapter_metadata_is_refused_clearly():
    sd = lora_pair("unet.x", 4, 4, down="lora_A.weight", up="lora_B.weight")
    with pytest.raises(LoraFormatError, match="lora_adapter_metadata"):
        parse(sd, {"lora_adapter_metadata": "{not json"})


# --- FLUX families ----------------------------------------------------------------------------------------------------


def test_flux_bfl_names_without_alpha():
    sd = lora_pair("diffusion_model.double_blocks.0.img_attn.qkv", 9216, 3072, r=2,
                   down="lora_A.weight", up="lora_B.weight")  # fmt: skip
    p = parse(sd, {})
    assert p.format == "flux-bfl"
    assert p.modules["diffusion_model.double_blocks.0.img_attn.qkv"].scale == 1.0


def test_flux_xlabs_scale_one():
    sd = {}
    for n in ("qkv_lora1", "qkv_lora2"):
        sd |= lora_pair(f"double_blocks.0.processor.{n}", 9216, 3072, r=2, down="down.weight", up="up.weight")
    for n in ("proj_lora1", "proj_lora2"):
        sd |= lora_pair(f"double_blocks.0.processor.{n}", 3072, 3072, r=2, down="down.weight", up="up.weight")
    p = parse(sd, {})
    assert p.format == "flux-xlabs"
    assert len(p.modules) == 4 and all(m.alpha is None and m.scale == 1.0 for m in p.modules.values())


def test_flux_diffusers_split_qkv():
    sd = {}
    for n in ("to_q", "to_k", "to_v"):
        sd |= lora_pair(f"transformer.single_transformer_blocks.0.attn.{n}", 3072, 3072,
                        down="lora_A.weight", up="lora_B.weight")  # fmt: skip
    sd |= lora_pair("transformer.single_transformer_blocks.0.proj_mlp", 12288, 3072,
                    down="lora_A.weight", up="lora_B.weight")  # fmt: skip
    p = parse(sd, {})
    assert p.format == "flux-diffusers" and len(p.modules) == 4


def test_bfl_control_lora_bias_diffs():
    sd = lora_pair("img_in", 3072, 128, r=2, down="lora_A.weight", up="lora_B.weight")
    sd["img_in.lora_B.bias"] = t(3072)
    sd |= lora_pair("double_blocks.0.img_attn.qkv", 9216, 3072, r=2, down="lora_A.weight", up="lora_B.weight")
    sd["double_blocks.0.img_attn.qkv.lora_B.bias"] = t(9216)
    sd["single_blocks.0.norm.key_norm.scale"] = t(128)
    p = parse(sd, {})
    assert p.format == "flux-control"
    assert isinstance(p.modules["img_in"], LoRA)
    bias = p.modules["img_in.bias"]
    assert isinstance(bias, Full) and bias.diff is None and bias.diff_b.shape == (3072,)
    assert "double_blocks.0.img_attn.qkv.bias" in p.modules
    # the norm scale replaces the model's (tests/unit/test_flux_control.py has the rest)
    assert isinstance(p.modules["single_blocks.0.norm.key_norm"], Replace) and p.ignored == ()
    assert p.widened == {"img_in": (3072, 128)}


@pytest.mark.parametrize(
    ("module", "fmt"),
    [
        ("lora_unet_double_blocks_0_img_attn_to_k_", "kohya"),  # SimpleTuner trailing underscore
        ("lora_unet__blocks_0_cross_attn_k", "wan-fun"),
        ("lora_transformer_single_transformer_blocks_0_attn_to_q", "onetrainer"),
        ("lycoris_down_blocks_0_attentions_0_proj_in", "simpletuner-lycoris"),
    ],
)
def test_underscore_families(module, fmt):
    p = parse(lora_pair(module, 8, 8, down="lora_down.weight", up="lora_up.weight"), {})
    assert p.format == fmt and list(p.modules) == [module]


def test_simpletuner_lycoris_lokr_format_name():
    sd = {"lycoris_x.lokr_w1": t(2, 2), "lycoris_x.lokr_w2_a": t(4, 2), "lycoris_x.lokr_w2_b": t(2, 4)}
    assert parse(sd, {}).format == "simpletuner-lycoris-lokr"


# --- refusals and errors ---------------------------------------------------------------------------------------------


def test_cloneofsimo_refused_naming_the_format():
    sd = {"unet:0:up": t(320, 4), "unet:0:down": t(4, 320), "text_encoder:0:up": t(768, 4)}
    with pytest.raises(LoraFormatError, match="cloneofsimo"):
        parse(sd, {})


def test_no_adapter_keys_names_the_first_keys():
    sd = {f"model.diffusion_model.layer{i}.weight": t(2) for i in range(8)}
    with pytest.raises(LoraFormatError) as err:
        parse(sd, {})
    msg = str(err.value)
    assert "model.diffusion_model.layer0.weight" in msg and "and 3 more" in msg


def test_only_orphan_alphas_is_refused():
    with pytest.raises(LoraFormatError, match="no LoRA adapter keys"):
        parse({"lora_unet_x.alpha": a(1.0)}, {})


def test_incomplete_module_names_key_and_missing_part():
    sd = {"lora_unet_x.lora_up.weight": t(8, 2)}
    with pytest.raises(LoraFormatError, match=r"lora_unet_x\.lora_up\.weight.*'down'"):
        parse(sd, {})
    sd = {"lora_unet_y.lokr_w1": t(2, 2), "lora_unet_y.lokr_w2_a": t(4, 2)}
    with pytest.raises(LoraFormatError, match="w2_b"):
        parse(sd, {})


def test_rank_disagreement_names_keys_and_shapes():
    sd = {"lora_unet_x.lora_down.weight": t(4, 8), "lora_unet_x.lora_up.weight": t(8, 2)}
    with pytest.raises(LoraShapeError) as err:
        parse(sd, {})
    msg = str(err.value)
    assert "lora_unet_x.lora_up.weight" in msg and "[8, 2]" in msg and "[8, 4]" in msg


def test_mixed_algorithms_in_one_module_refused():
    sd = lora_pair("lora_unet_x", 8, 8, down="lora_down.weight", up="lora_up.weight") | {"lora_unet_x.diff": t(8, 8)}
    with pytest.raises(LoraFormatError, match="mixes"):
        parse(sd, {})


def test_unknown_extra_keys_are_listed_not_fatal():
    sd = lora_pair("lora_unet_x", 8, 8, down="lora_down.weight", up="lora_up.weight")
    sd |= {"emb_params": t(2, 768), "lora_unet_orphan.alpha": a(1.0)}
    p = parse(sd, {})
    assert list(p.modules) == ["lora_unet_x"]
    assert p.ignored == ("emb_params", "lora_unet_orphan.alpha")


# --- the fixtures corpus ---------------------------------------------------------------------------------------------


@needs_fixtures
@pytest.mark.parametrize(
    ("name", "fmt", "modules", "rank"),
    [
        ("sd15_kohya_rank128", "kohya", 264, 128),
        ("sdxl_kohya_rank32", "kohya", 986, 32),
        ("flux_lora_kohya", "kohya", 304, 16),
        ("flux_lora_diffusers", "flux-diffusers", 494, 32),
        ("flux_peft_base_model_prefix", "flux-diffusers", 381, 4),
    ],
)
def test_keylists_parse(name, fmt, modules, rank):
    p = parse(keylist_state_dict(name), {})
    assert p.format == fmt and len(p.modules) == modules
    assert {m.rank for m in p.modules.values()} == {rank}
    if name == "flux_peft_base_model_prefix":
        assert all(m.alpha == rank for m in p.modules.values())  # PEFT without config: alpha = r


@needs_fixtures
@pytest.mark.parametrize(
    ("file", "fmt", "modules", "kind", "alpha"),
    [
        ("smart_falcon_4_lokr", "lycoris-lokr", 350, LoKr, 4.0),
        ("catundchat_sd15_weapons", "diffusers-attn-processor", 128, LoRA, None),
        ("diffusers_pr8283_sd15_pokemon", "diffusers-lora-layer", 128, LoRA, None),
    ],
)
def test_real_files_parse(file, fmt, modules, kind, alpha):
    from lora_math.formats.io import load_state_dict

    sd, meta = load_state_dict(FIXTURES / "real_loras" / f"{file}.safetensors")
    p = parse(sd, meta)
    assert p.format == fmt and len(p.modules) == modules and p.ignored == ()
    assert all(isinstance(m, kind) and m.alpha == alpha and m.rank == 4 for m in p.modules.values())
    assert p.metadata == meta


@needs_fixtures
def test_real_cloneofsimo_file_refused():
    from lora_math.formats.io import load_state_dict

    sd, meta = load_state_dict(FIXTURES / "real_loras" / "analog_svd_rank4.safetensors")
    with pytest.raises(LoraFormatError, match="cloneofsimo"):
        parse(sd, meta)


def test_malformed_part_names_the_module():
    sd = {"lora_unet_x.lora_down.weight": t(4), "lora_unet_x.lora_up.weight": t(8, 4)}
    with pytest.raises(LoraShapeError, match="lora_unet_x"):
        parse(sd, {})
