"""Saving a trained LoRA: kohya names checked against real kohya files, metadata, atomic writes, exact resume."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path

import pytest
import torch
from fixtures_path import FIXTURES, needs_fixtures
from safetensors import safe_open

from lora_math import save as lora_save
from lora_math.formats import parse
from lora_math.formats.io import load_state_dict
from lora_math.names.families import from_file as guess_base_model
from lora_math.names.keymap import match
from lora_math.names.keytables import load_keytable
from lora_math.report import trigger_words
from lora_math.save import write as save_write
from lora_math.save.result import LoomLoRA
from lora_math.train import LoraFactors

REPO = Path(__file__).resolve().parents[2]
ATTN = re.compile(r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)\.weight$")


def _unet_linear_keys(table: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    return {
        k: s for k, s in table.items() if k.startswith("diffusion_model.") and k.endswith(".weight") and len(s) >= 2
    }


def _fixture_modules(name: str) -> dict[str, tuple[list[int], list[int]]]:
    """kohya UNet module name -> (lora_down shape, lora_up shape) of a real kohya file's key list."""
    doc = json.loads((FIXTURES / "keylists" / name).read_text())
    out: dict[str, tuple[list[int], list[int]]] = {}
    for key, entry in doc.items():
        if key.startswith("lora_unet_") and key.endswith(".lora_down.weight"):
            module = key[: -len(".lora_down.weight")]
            out[module] = (entry["shape"], doc[f"{module}.lora_up.weight"]["shape"])
    return out


# --- names ----------------------------------------------------------------------------------------------------------


@needs_fixtures
@pytest.mark.parametrize(
    "arch, fixture",
    [("sd15", "sd15_kohya_rank128.json"), ("sdxl", "sdxl_kohya_rank32.json"), ("flux", "flux_lora_kohya.json")],
)
def test_names_are_the_ones_real_kohya_files_use(arch, fixture):
    """Every UNet module of a real kohya file is the name we give the full-size weight of the same shape."""
    table = load_keytable(arch)
    linear = _unet_linear_keys(table)
    names = lora_save.kohya_names(linear, arch, table)
    by_name = {n: k for k, n in names.items()}
    assert len(by_name) == len(names), "two weights got one name"
    real = _fixture_modules(fixture)
    assert len(real) > 100
    for module, (down, up) in real.items():
        assert module in by_name, f"{module} (in a real {arch} kohya file) is not a name we write"
        shape = linear[by_name[module]]
        assert (up[0], down[1]) == (shape[0], shape[1]), module
    if arch != "flux":  # every attention projection of the real UNet files is there, under our name
        ours = {names[k] for k in linear if ATTN.search(k)}
        assert ours <= set(real) and len(ours) == {"sd15": 128, "sdxl": 560}[arch]


def test_sd15_names_spot_checks_full_size():
    table = load_keytable("sd15")
    keys = [
        "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        "diffusion_model.input_blocks.8.1.transformer_blocks.0.attn2.to_out.0.weight",
        "diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_v.weight",
        "diffusion_model.output_blocks.3.1.transformer_blocks.0.attn2.to_k.weight",
        "diffusion_model.output_blocks.11.1.transformer_blocks.0.attn1.to_q.weight",
    ]
    assert list(lora_save.kohya_names(keys, "sd15", table).values()) == [
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        "lora_unet_down_blocks_2_attentions_1_transformer_blocks_0_attn2_to_out_0",
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_v",
        "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k",
        "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn1_to_q",
    ]


# A thinned SD1.5 UNet (the stand-in model's layout): two levels, one resnet + attention each, a downsampler after
# level 0, two output blocks per level with the upsampler in output block 1.
_RES = ("in_layers.2.weight", "out_layers.3.weight")
_ATT = tuple(f"transformer_blocks.0.attn{a}.{p}.weight" for a in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out.0"))
THIN_SD15 = (
    ["diffusion_model.input_blocks.0.0.weight", "diffusion_model.input_blocks.2.0.op.weight"]
    + [f"diffusion_model.{b}.0.{r}" for b in ("input_blocks.1", "input_blocks.3") for r in _RES]
    + [f"diffusion_model.{b}.1.{a}" for b in ("input_blocks.1", "input_blocks.3") for a in _ATT]
    + [f"diffusion_model.middle_block.{i}.{r}" for i in (0, 2) for r in _RES]
    + [f"diffusion_model.middle_block.1.{a}" for a in _ATT]
    + [f"diffusion_model.output_blocks.{n}.0.{r}" for n in range(4) for r in _RES]
    + [f"diffusion_model.output_blocks.{n}.1.{a}" for n in range(4) for a in _ATT]
    + ["diffusion_model.output_blocks.1.2.conv.weight", "diffusion_model.out.2.weight"]
)


def test_sd15_names_of_a_thinned_unet_follow_its_own_layout():
    attn = [k for k in THIN_SD15 if ATTN.search(k)]
    names = lora_save.kohya_names(attn, "sd15", THIN_SD15)
    prefix = "lora_unet_{}_transformer_blocks_0_attn1_to_q"
    expected = {
        "input_blocks.1.1": "down_blocks_0_attentions_0",
        "input_blocks.3.1": "down_blocks_1_attentions_0",
        "middle_block.1": "mid_block_attentions_0",
        "output_blocks.0.1": "up_blocks_0_attentions_0",
        "output_blocks.1.1": "up_blocks_0_attentions_1",
        "output_blocks.2.1": "up_blocks_1_attentions_0",
        "output_blocks.3.1": "up_blocks_1_attentions_1",
    }
    for ldm, diffusers in expected.items():
        key = f"diffusion_model.{ldm}.transformer_blocks.0.attn1.to_q.weight"
        assert names[key] == prefix.format(diffusers)
    assert len(set(names.values())) == len(attn) == 56


def test_sd15_names_need_the_full_key_list():
    attn = [k for k in THIN_SD15 if ATTN.search(k)]
    with pytest.raises(ValueError, match=r"full list of weight keys.*base\['model_keys'\]"):
        lora_save.kohya_names(attn, "sd15")  # without the resnets/downsampler the numbering would be wrong


def test_sgm_bfl_and_mmdit_names_are_the_module_paths():
    keys = {
        "diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight": (
            "sdxl",
            "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k",
        ),
        "diffusion_model.double_blocks.0.img_attn.qkv.weight": ("flux", "lora_unet_double_blocks_0_img_attn_qkv"),
        "diffusion_model.single_blocks.7.linear1.weight": ("flux", "lora_unet_single_blocks_7_linear1"),
        "diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": ("sd3", "lora_unet_joint_blocks_0_x_block_attn_qkv"),
    }
    for key, (arch, name) in keys.items():
        assert lora_save.kohya_names([key], arch) == {key: name}


def test_names_refuse_other_keys_and_arches():
    with pytest.raises(ValueError, match="not a denoiser weight key"):
        lora_save.kohya_names(["diffusion_model.blocks.0.bias"], "flux")
    with pytest.raises(ValueError, match="arch: 'wan'"):
        lora_save.kohya_names(["diffusion_model.blocks.0.weight"], "wan")


# --- text encoder names ---------------------------------------------------------------------------------------------

CLIP_LAYER = re.compile(r"\.text_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])\.weight$")


def _clip_keys(table: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    return {k: s for k, s in table.items() if k.startswith(("clip_l.", "clip_g.")) and CLIP_LAYER.search(k)}


def test_text_encoder_names_spot_checks():
    q = "transformer.text_model.encoder.layers.{}.self_attn.q_proj.weight"
    fc2 = "transformer.text_model.encoder.layers.{}.mlp.fc2.weight"
    assert lora_save.kohya_names(["clip_l." + q.format(3), "clip_l." + fc2.format(11)], "sd15") == {
        "clip_l." + q.format(3): "lora_te_text_model_encoder_layers_3_self_attn_q_proj",
        "clip_l." + fc2.format(11): "lora_te_text_model_encoder_layers_11_mlp_fc2",
    }
    assert lora_save.kohya_names(["clip_h." + q.format(0)], "sd2") == {
        "clip_h." + q.format(0): "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    }
    assert lora_save.kohya_names(["clip_l." + q.format(0), "clip_g." + fc2.format(31)], "sdxl") == {
        "clip_l." + q.format(0): "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
        "clip_g." + fc2.format(31): "lora_te2_text_model_encoder_layers_31_mlp_fc2",
    }


@pytest.mark.parametrize("arch, n", [("sd15", 72), ("sdxl", 72 + 192), ("flux", 72)])
def test_text_encoder_names_load_back_onto_the_same_keys(arch, n):
    """Saved TE (and UNet) names go back through the pack's own parser and key map onto the keys they came from."""
    table = load_keytable(arch)
    clip = _clip_keys(table)
    unet = dict(list(_unet_linear_keys(table).items())[:3])
    assert len(clip) == n
    lora = _lora(clip | unet, rank=1, arch=arch, operation="merge")
    names = lora_save.kohya_names(lora.modules, arch, table)
    parsed = parse(lora_save.to_state_dict(lora, names, torch.float32), {})
    m = match(parsed, table)
    assert not m.unmatched and len(m.matched) == n + 3
    assert {p.key for p in m.patches} == set(lora.modules)
    for patch in m.patches:  # each name landed on the weight of its own factors
        down, up = lora.modules[patch.key]
        assert torch.equal(patch.adapter.down.float(), down) and torch.equal(patch.adapter.up.float(), up)


@needs_fixtures
@pytest.mark.parametrize("arch, fixture", [("sd15", "sd15_kohya_rank128.json"), ("sdxl", "sdxl_kohya_rank32.json")])
def test_text_encoder_names_are_the_ones_real_kohya_files_use(arch, fixture):
    doc = json.loads((FIXTURES / "keylists" / fixture).read_text())
    real = {k[: -len(".lora_down.weight")] for k in doc if k.startswith("lora_te") and k.endswith(".lora_down.weight")}
    assert set(lora_save.kohya_names(_clip_keys(load_keytable(arch)), arch).values()) == real


@pytest.mark.parametrize(
    "key, arch, message",
    [
        ("t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight", "flux", "'t5xxl'"),
        ("clip_g.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight", "sd15", "'clip_g'"),
        ("clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight", "sd2", "'clip_l'"),
        ("first_stage_model.decoder.conv_in.weight", "sd15", "that encoder"),
    ],
)
def test_text_encoder_keys_without_kohya_names_are_refused(key, arch, message):
    with pytest.raises(
        ValueError, match=rf"{re.escape(key)}: .*text-encoder LoRA for {message} cannot be saved in kohya"
    ):
        lora_save.kohya_names([key], arch)


def test_text_encoder_weights_kohya_does_not_name_are_refused():
    key = "clip_l.transformer.text_model.embeddings.token_embedding.weight"
    with pytest.raises(ValueError, match=rf"{re.escape(key)}: kohya text-encoder names cover only"):
        lora_save.kohya_names([key], "sd15")


# --- a LoRA to save --------------------------------------------------------------------------------------------------


def _factors(shape: tuple[int, ...], rank: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (down, up) for a weight of ``shape``: linear ``[r, in]``/``[out, r]``, conv ``[r, in, kh, kw]``/``[out, r,
    1, 1]``."""
    down = torch.randn(rank, *shape[1:], generator=gen) * 0.1
    up = torch.randn(shape[0], rank, *[1] * (len(shape) - 2), generator=gen) * 0.1
    return down, up


def _lora(keys_shapes: dict[str, tuple[int, ...]], rank=4, alpha=2.0, arch="sd15", seed=0, **kw) -> LoomLoRA:
    gen = torch.Generator().manual_seed(seed)
    modules = {k: _factors(s, rank, gen) for k, s in keys_shapes.items()}
    base = {"sha256": "ab" * 32, "name": "tiny.safetensors", **kw.pop("base", {})}
    dataset = {
        "num_images": 12,
        "images_sha256": "cd" * 32,
        "trigger": "zxq cube",
        "tag_frequency": {"zxq cube": 12, "red": 7},
        **kw.pop("dataset", {}),
    }
    settings = {"rank": rank, "alpha": alpha, "learning_rate": 1e-4, "lr_schedule": "cosine", "steps": 30, "seed": 3}
    settings |= {"optimizer": "adamw", "resolution": 512, "batch_size": 1, "target": "attention"}
    settings |= kw.pop("settings", {})
    return LoomLoRA(modules, alpha, rank, arch, settings, dataset, base, **{"step": 30, **kw})


@pytest.fixture(scope="module")
def sd15_attention() -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    table = load_keytable("sd15")
    return {k: s for k, s in table.items() if ATTN.search(k)}, table


# --- tensors and metadata ---------------------------------------------------------------------------------------------


def test_state_dict_is_kohya_lora(sd15_attention):
    attn, table = sd15_attention
    lora = _lora(attn)
    names = lora_save.kohya_names(attn, "sd15", table)
    sd = lora_save.to_state_dict(lora, names, torch.bfloat16)
    assert len(sd) == 3 * 128
    for key, (down, up) in lora.modules.items():
        name = names[key]
        assert sd[f"{name}.lora_down.weight"].dtype == torch.bfloat16
        assert torch.equal(sd[f"{name}.lora_down.weight"], down.bfloat16())
        assert torch.equal(sd[f"{name}.lora_up.weight"], up.bfloat16())
        assert sd[f"{name}.alpha"].shape == () and sd[f"{name}.alpha"].item() == 2.0
    exact = lora_save.to_state_dict(lora, names, torch.float32)  # an fp32 file holds the masters bit for bit
    assert all(torch.equal(exact[f"{names[k]}.lora_up.weight"], up) for k, (_, up) in lora.modules.items())


def test_state_dict_refuses_nan_and_fp16_overflow(sd15_attention):
    attn, table = sd15_attention
    names = lora_save.kohya_names(attn, "sd15", table)
    lora = _lora(attn)
    key = next(iter(lora.modules))
    lora.modules[key][1][0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        lora_save.to_state_dict(lora, names)
    lora.modules[key][1][0, 0] = 1e6
    with pytest.raises(ValueError, match="do not fit torch.float16; use save_dtype bf16 or fp32"):
        lora_save.to_state_dict(lora, names)
    assert lora_save.to_state_dict(lora, names, torch.bfloat16)  # fits bf16


REQUIRED = [
    "ss_base_model_version",
    "ss_network_module",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_resolution",
    "ss_num_train_images",
    "ss_steps",
    "ss_tag_frequency",
    "ss_training_comment",
    "ss_learning_rate",
    "ss_optimizer",
    "ss_lr_scheduler",
    "ss_seed",
    "ss_training_started_at",
    "ss_training_finished_at",
    "modelspec.sai_model_spec",
    "modelspec.architecture",
    "modelspec.implementation",
    "modelspec.title",
    "modelspec.date",
    "modelspec.resolution",
    "modelspec.trigger_phrase",
    "loom_trigger_words",
    "loom_base_model_sha256",
    "loom_dataset_sha256",
    "loom_settings",
    "loom_scope",
    "loom_interrupted",
    "loom_version",
]


@pytest.mark.parametrize(
    "arch, version, architecture, resolution",
    [
        ("sd15", "sd_v1", "stable-diffusion-v1/lora", "512x512"),
        ("sdxl", "sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora", "1024x1024"),
        ("flux", "flux1", "flux-1-dev/lora", "1024x1024"),
    ],
)
def test_metadata_fields(arch, version, architecture, resolution):
    lora = _lora({"diffusion_model.x.weight": (8, 8)}, arch=arch, settings={"resolution": None}, interrupted=True)
    md = lora_save.metadata(
        lora, "  a red cube, for product shots  ", "cube_v1", started_at=1.7e9, finished_at=1.7e9 + 60
    )
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in md.items())
    missing = [k for k in REQUIRED if k not in md]
    assert not missing
    assert md["ss_base_model_version"] == version and md["modelspec.architecture"] == architecture
    assert md["modelspec.resolution"] == resolution
    assert (
        md["ss_network_module"] == "networks.lora" and md["ss_network_dim"] == "4" and md["ss_network_alpha"] == "2.0"
    )
    assert md["ss_steps"] == "30" and md["ss_num_train_images"] == "12" and md["ss_seed"] == "3"
    assert md["modelspec.sai_model_spec"] == "1.0.0" and md["modelspec.title"] == "cube_v1"
    assert json.loads(md["ss_tag_frequency"]) == {"dataset": {"zxq cube": 12, "red": 7}}
    assert json.loads(md["loom_settings"])["learning_rate"] == 1e-4
    assert md["loom_scope"] == md["ss_training_comment"] == "a red cube, for product shots"
    assert md["loom_interrupted"] == "true" and md["loom_base_model_sha256"] == "ab" * 32
    assert md["loom_dataset_sha256"] == "cd" * 32
    assert md["ss_training_started_at"] == str(1.7e9)
    assert md["modelspec.trigger_phrase"] == md["loom_trigger_words"] == "zxq cube"
    assert trigger_words(md)[0] == "zxq cube"
    assert md["loom_version"] == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_metadata_counts_tags_from_captions_when_not_given():
    lora = _lora({"diffusion_model.x.weight": (8, 8)}, dataset={"tag_frequency": None, "captions": ["a, b", "a"]})
    md = lora_save.metadata(lora, "", "x")
    assert json.loads(md["ss_tag_frequency"]) == {"dataset": {"a": 2, "b": 1}}
    assert md["ss_training_comment"] == "trigger word: zxq cube"
    assert "ss_training_started_at" not in md and md["loom_interrupted"] == "false"


# --- utilities' results: per-module rank and alpha, conv factors, metadata ----------------------------------------------

CONV = {
    "diffusion_model.input_blocks.1.0.in_layers.2.weight": (320, 320, 3, 3),  # resnet conv 3x3
    "diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),  # SD1.5 proj_in: conv 1x1
    "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": (320, 320),
}
SOURCES = (
    {"name": "style.safetensors", "sha256": "12" * 32, "format": "kohya", "strength_model": 0.8, "role": "lora"},
    {"name": "char.safetensors", "sha256": "34" * 32, "format": "kohya", "strength_model": 0.5, "role": "lora"},
)


def _utility(keys_shapes, ranks, alphas, operation="merge", arch="sd15", seed=0, **kw) -> LoomLoRA:
    """A utility's result: module ``i`` has rank ``ranks[i]`` and alpha ``alphas[i]``, no training settings."""
    gen = torch.Generator().manual_seed(seed)
    modules = {k: _factors(s, r, gen) for (k, s), r in zip(keys_shapes.items(), ranks, strict=True)}
    module_alpha = dict(zip(keys_shapes, alphas, strict=True))
    base = {"name": "tiny.safetensors", **kw.pop("base", {})}
    return LoomLoRA(
        modules, alphas[0], max(ranks), arch, base=base, module_alpha=module_alpha, operation=operation, **kw
    )


def _want_delta(lora: LoomLoRA, key: str) -> torch.Tensor:
    down, up = lora.modules[key]
    return (lora.scale_of(key) * up.flatten(1).double() @ down.flatten(1).double()).reshape(
        up.shape[0], *down.shape[1:]
    )


def test_per_module_alpha_and_conv_factors_load_back_with_the_same_delta(tmp_path):
    table = load_keytable("sd15")
    lora = _utility(CONV, ranks=[4, 2, 3], alphas=[1.0, 7.3, 3.0], sources=SOURCES)
    proj_in = "diffusion_model.input_blocks.1.1.proj_in.weight"
    assert lora.alpha_of(proj_in) == 7.3 and lora.rank_of(proj_in) == 2 and lora.scale_of(proj_in) == 7.3 / 2
    names = lora_save.kohya_names(lora.modules, "sd15", table)
    assert names["diffusion_model.input_blocks.1.0.in_layers.2.weight"] == "lora_unet_down_blocks_0_resnets_0_conv1"
    assert names[proj_in] == "lora_unet_down_blocks_0_attentions_0_proj_in"
    path = lora_save.save(tmp_path / "m.safetensors", lora, names, "", "m", dtype=torch.float32)
    tensors, md = load_state_dict(path)
    for key, (down, up) in lora.modules.items():  # kohya's own shapes and each module's alpha (fp32)
        name = names[key]
        assert tensors[f"{name}.lora_down.weight"].shape == down.shape
        assert tensors[f"{name}.lora_up.weight"].shape == up.shape
        assert tensors[f"{name}.alpha"].item() == torch.tensor(lora.alpha_of(key)).item()
    assert tensors["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].shape == (4, 320, 3, 3)
    assert tensors["lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight"].shape == (320, 4, 1, 1)
    assert {tensors[f"{n}.alpha"].item() for n in names.values()} == {1.0, torch.tensor(7.3).item(), 3.0}

    parsed = parse(tensors, md)
    assert parsed.format == "kohya"
    m = match(parsed, table)
    assert not m.unmatched and {p.key for p in m.patches} == set(CONV)
    for patch in m.patches:
        got = patch.adapter.delta_weight(table[patch.key]).double()
        torch.testing.assert_close(got, _want_delta(lora, patch.key), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "down, up",
    [
        ((4, 320, 3, 3), (320, 4)),  # conv down, linear up
        ((4, 320), (320, 4, 1, 1)),  # linear down, conv up
        ((4, 320, 3, 3), (320, 4, 3, 3)),  # up must be 1x1
        ((4, 320, 3, 3), (320, 2, 1, 1)),  # ranks differ
        ((4, 320, 3), (320, 4, 1)),  # 3-D
    ],
)
def test_bad_factor_shapes_are_refused_naming_the_key(down, up):
    key = "diffusion_model.input_blocks.1.0.in_layers.2.weight"
    lora = _utility({key: (320, 320, 3, 3)}, [4], [1.0])
    lora.modules[key] = (torch.zeros(down), torch.zeros(up))
    expected = re.escape("down [r, in] and up [out, r] (linear) or down [r, in, kh, kw] and up [out, r, 1, 1] (conv)")
    with pytest.raises(
        ValueError, match=rf"{re.escape(key)}: factors must be {expected}; got {re.escape(str(list(down)))}"
    ):
        lora_save.to_state_dict(lora, {key: "lora_unet_x"})


TRAINING_KEYS = (
    "ss_steps",
    "ss_max_train_steps",
    "ss_learning_rate",
    "ss_unet_lr",
    "ss_optimizer",
    "ss_lr_scheduler",
    "ss_seed",
    "ss_tag_frequency",
    "ss_num_train_images",
    "ss_resolution",
    "ss_batch_size_per_device",
    "ss_training_started_at",
    "ss_training_finished_at",
    "loom_settings",
    "loom_dataset_sha256",
    "loom_interrupted",
    "loom_resume_file",
)


def test_utility_metadata_names_operation_and_sources_and_no_training_keys():
    notes = {"modules": 3, "relative_error": 0.031}
    training_like = {"learning_rate": 1e-4, "steps": 30, "seed": 3, "resolution": 768, "optimizer": "adamw"}
    dataset = {"num_images": 5, "tag_frequency": {"a": 1}, "images_sha256": "cd" * 32}
    lora = _utility(
        CONV, [4, 2, 3], [1.0, 7.3, 3.0], sources=SOURCES, notes=notes, settings=training_like, dataset=dataset, step=30
    )
    md = lora_save.metadata(lora, "", "blend", finished_at=1.7e9)
    assert all(isinstance(v, str) for v in md.values())
    assert not [k for k in TRAINING_KEYS if k in md]
    assert md["loom_operation"] == "merge"
    assert json.loads(md["loom_sources"]) == [dict(s) for s in SOURCES]
    assert json.loads(md["loom_operation_details"]) == notes
    assert md["ss_network_module"] == "networks.lora"
    assert md["ss_network_dim"] == md["ss_network_alpha"] == "Dynamic"  # as sd-scripts' resize_lora.py writes
    description = "merge of style.safetensors (0.8), char.safetensors (0.5)"
    assert md["ss_training_comment"] == md["modelspec.description"] == description and md["loom_scope"] == ""
    assert md["modelspec.architecture"] == "stable-diffusion-v1/lora" and md["modelspec.resolution"] == "512x512"
    assert md["modelspec.title"] == md["ss_output_name"] == "blend" and md["modelspec.date"].startswith("20")
    assert md["ss_base_model_version"] == "sd_v1" and md["ss_v2"] == "False"
    assert md["ss_sd_model_name"] == "tiny.safetensors" and "loom_base_model_sha256" not in md

    scoped = lora_save.metadata(lora, " style + character ", "blend")
    assert (
        scoped["ss_training_comment"] == scoped["modelspec.description"] == scoped["loom_scope"] == "style + character"
    )


def test_utility_metadata_one_rank_and_alpha_and_descriptions():
    keys = dict(list(CONV.items())[2:]) | {"diffusion_model.middle_block.1.proj_out.weight": (320, 320)}
    resized = _utility(
        keys, [8, 8], [4.0, 4.0], "resize", arch="sdxl", sources=SOURCES[:1], notes={"rank_rule": "energy 0.9"}
    )
    md = lora_save.metadata(resized, "", "small")
    assert md["ss_network_dim"] == "8" and md["ss_network_alpha"] == "4.0"
    assert md["ss_training_comment"] == "resize of style.safetensors to rank 8 (energy 0.9)"
    assert md["modelspec.resolution"] == "1024x1024" and "ss_v2" not in md
    tuned = {"name": "tuned.safetensors", "role": "tuned", "sha256": "56" * 32}
    extracted = _utility(
        keys, [4, 2], [4.0, 2.0], "extract", sources=({"name": "base.safetensors", "role": "base"}, tuned)
    )
    assert lora_save.describe(extracted) == "extract of tuned.safetensors against base.safetensors"
    assert lora_save.metadata(extracted, "", "x")["ss_network_dim"] == "Dynamic"  # ranks differ, alpha / rank does not
    converted = _utility(
        keys, [4, 4], [4.0, 4.0], "convert", sources=({"name": "a.safetensors", "format": "lycoris-loha"},)
    )
    assert lora_save.describe(converted) == "convert of a.safetensors (lycoris-loha) to LoRA"
    with pytest.raises(ValueError, match="operation: 'blend' is not one of train, merge"):
        _utility(keys, [4, 4], [4.0, 4.0], "blend")


def test_utility_save_writes_no_resume_file_and_drops_a_replaced_one(tmp_path):
    table = load_keytable("sd15")
    trained = _lora({k: s for k, s in CONV.items() if len(s) == 2})
    _save(tmp_path, trained, table, name="m.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.loom-state", "m.safetensors"]

    merged = _utility(CONV, [4, 2, 3], [1.0, 7.3, 3.0], sources=SOURCES)
    path = _save(tmp_path, merged, table, name="n.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.loom-state", "m.safetensors", "n.safetensors"]
    _, md = load_state_dict(path)
    assert "loom_resume_file" not in md and md["loom_operation"] == "merge"
    with pytest.raises(FileNotFoundError, match="no resume state"):
        lora_save.load_trained(path)

    _save(tmp_path, merged, table, name="m.safetensors", overwrite=True)  # the trained LoRA's state would not match
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "n.safetensors"]
    assert load_state_dict(tmp_path / "m.safetensors")[1]["loom_operation"] == "merge"


# --- saving -----------------------------------------------------------------------------------------------------------


def _save(tmp_path, lora, table, name="cube.safetensors", **kw):
    names = lora_save.kohya_names(lora.modules, lora.arch, table)
    return lora_save.save(tmp_path / name, lora, names, "a cube", Path(name).stem, **kw)


def test_saved_file_parses_as_kohya_and_matches_every_weight(tmp_path, sd15_attention):
    attn, table = sd15_attention
    lora = _lora(attn)
    path = _save(tmp_path, lora, table)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cube.loom-state", "cube.safetensors"]
    tensors, md = load_state_dict(path)
    parsed = parse(tensors, md)
    assert parsed.format == "kohya" and guess_base_model(parsed) == "sd15"
    m = match(parsed, table)
    assert len(m.matched) == 128 and not m.unmatched
    assert {p.key for p in m.patches} == set(attn)
    assert md["loom_resume_file"] == "cube.loom-state"
    if os.name == "posix":  # permissions as for any new file (umask), not a temp file's 0600
        umask = os.umask(0)
        os.umask(umask)
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_error_mid_write_leaves_nothing(tmp_path, sd15_attention, monkeypatch):
    attn, table = sd15_attention
    lora = _lora(attn)
    calls = []

    def failing_fsync(fd):
        calls.append(os.fstat(fd).st_size)  # the temp file holds data when the "disk" fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        _save(tmp_path, lora, table)
    assert calls and calls[0] > 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fail_at", ["main", "state"])
def test_error_at_rename_leaves_nothing(tmp_path, sd15_attention, monkeypatch, fail_at):
    attn, table = sd15_attention
    lora = _lora(attn)
    real_replace, real_link = os.replace, os.link

    def replace(src, dst):
        if str(dst).endswith(".loom-state" if fail_at == "state" else ".safetensors"):
            raise KeyboardInterrupt  # even an interrupt cleans up
        return real_replace(src, dst)

    def link(src, dst):
        if fail_at == "main":
            raise KeyboardInterrupt
        return real_link(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "link", link)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, lora, table)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_unless_asked(tmp_path, sd15_attention):
    attn, table = sd15_attention
    first = _save(tmp_path, _lora(attn, seed=1), table)
    before = first.read_bytes()
    with pytest.raises(FileExistsError, match=r"already exists; choose another filename_prefix, or set overwrite"):
        _save(tmp_path, _lora(attn, seed=2), table)
    assert first.read_bytes() == before and len(list(tmp_path.iterdir())) == 2
    _save(tmp_path, _lora(attn, seed=2), table, overwrite=True)
    assert first.read_bytes() != before and len(list(tmp_path.iterdir())) == 2


def test_no_clobber_even_when_the_file_appears_after_the_check(tmp_path, sd15_attention, monkeypatch):
    """The exists-check and the final rename are not one step; the no-overwrite commit must hold by itself."""
    attn, table = sd15_attention
    target = tmp_path / "cube.safetensors"
    real = lora_save.to_state_dict

    def sneaky(*a, **kw):
        target.write_bytes(b"someone else's file")
        return real(*a, **kw)

    monkeypatch.setattr(save_write, "to_state_dict", sneaky)
    with pytest.raises(FileExistsError, match="overwrite"):
        _save(tmp_path, _lora(attn), table)
    assert target.read_bytes() == b"someone else's file"
    assert [p.name for p in tmp_path.iterdir()] == ["cube.safetensors"]


# --- resume -------------------------------------------------------------------------------------------------------------

SHAPES = {"diffusion_model.a.weight": (6, 5), "diffusion_model.b.weight": (4, 7), "diffusion_model.c.weight": (3, 3)}


def _loss(factors: LoraFactors, targets: dict[str, torch.Tensor], step: int) -> torch.Tensor:
    loss = torch.zeros(())
    for k in factors.down:
        delta = factors.scale * factors.up[k] @ factors.down[k]
        loss = loss + ((delta - targets[k] * (1 + 0.1 * step)) ** 2).mean()
    return loss


def _make_optimizer(factors: LoraFactors, start: int):
    opt = torch.optim.AdamW(factors.parameters(), lr=3e-2, weight_decay=1e-2, betas=(0.8, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + 0.1 * s), last_epoch=start - 1)
    return opt, sched


def _steps(factors, opt, sched, targets, start, n):
    for step in range(start, start + n):
        _loss(factors, targets, step).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()


def test_adamw_resumed_from_the_saved_state_continues_exactly(tmp_path):
    gen = torch.Generator().manual_seed(5)
    targets = {k: torch.randn(*s, generator=gen) for k, s in SHAPES.items()}
    factors = LoraFactors(SHAPES, rank=2, alpha=1.0, seed=1)
    opt, sched = _make_optimizer(factors, 0)
    _steps(factors, opt, sched, targets, 0, 3)

    lora = LoomLoRA(
        factors.snapshot(),
        1.0,
        2,
        "flux",
        settings={"learning_rate": 3e-2, "steps": 7},
        step=3,
        loss_history=[3.0, 2.0, 1.0],
        optimizer_state=opt.state_dict(),
        interrupted=True,
    )
    path = lora_save.save(tmp_path / "r.safetensors", lora, lora_save.kohya_names(SHAPES, "flux"), "", "r")
    with safe_open(str(lora_save.state_path(path)), "pt") as fh:
        names = set(fh.keys())
    assert {"module.0.down", "module.2.up", "state.0.exp_avg", "state.5.exp_avg_sq", "state.3.step"} <= names

    _steps(factors, opt, sched, targets, 3, 4)  # the uninterrupted run

    modules, optimizer_state, step, settings = lora_save.load_resume_state(path)
    assert step == 3 and settings == {"learning_rate": 3e-2, "steps": 7}
    for k, (down, up) in lora.modules.items():  # the fp32 masters, exactly (the LoRA file itself is fp16)
        assert torch.equal(modules[k][0], down) and torch.equal(modules[k][1], up)
    resumed = LoraFactors(SHAPES, rank=2, alpha=1.0, seed=99)  # another init: all must come from the file
    resumed.load(modules)
    opt2, _ = _make_optimizer(resumed, 0)
    opt2.load_state_dict(optimizer_state)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0 / (1 + 0.1 * s), last_epoch=step - 1)
    _steps(resumed, opt2, sched2, targets, step, 4)
    for a, b in zip(factors.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert opt2.param_groups[0]["betas"] == (0.8, 0.95)

    again = lora_save.load_trained(path)
    assert again.step == 3 and again.interrupted and again.loss_history == [3.0, 2.0, 1.0] and again.arch == "flux"


def test_resume_state_without_optimizer_and_wrong_order_is_refused(tmp_path):
    factors = LoraFactors(SHAPES, rank=2, alpha=1.0)
    lora = LoomLoRA(factors.snapshot(), 1.0, 2, "flux")
    path = lora_save.save(tmp_path / "n.safetensors", lora, lora_save.kohya_names(SHAPES, "flux"), "", "n")
    assert lora_save.load_resume_state(lora_save.state_path(path)).optimizer_state is None

    params = list(reversed(factors.parameters()))  # not LoraFactors.parameters() order
    opt = torch.optim.AdamW(params, lr=1e-3)
    sum((p**2).sum() for p in params).backward()
    opt.step()
    lora = LoomLoRA(factors.snapshot(), 1.0, 2, "flux", optimizer_state=opt.state_dict())
    with pytest.raises(ValueError, match="LoraFactors.parameters"):
        lora_save.save(tmp_path / "w.safetensors", lora, lora_save.kohya_names(SHAPES, "flux"), "", "w")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.loom-state", "n.safetensors"]
