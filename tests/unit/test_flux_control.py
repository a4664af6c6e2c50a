"""BFL FLUX control LoRAs (FLUX.1 Depth / Canny [dev] LoRA), the pure parts: parsing, key mapping, refusals, inspect.

The files are written here as BFL writes them (seeded, against the full-size FLUX.1 key table): no prefix, PEFT
``lora_A``/``lora_B`` with a ``lora_B.bias`` on every layer, the q/k norm scales of every block as whole tensors, and
an ``img_in.lora_A`` with 128 input columns where FLUX.1's ``img_in`` has 64. ComfyUI-side behaviour (patched
weights and the model's forward against core) is tests/comfy/test_flux_control.py.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from lora_math.__main__ import main
from lora_math.adapters import Full, LoRA, Replace, bypass_forward, merged_weight
from lora_math.errors import LoraShapeError
from lora_math.formats import parse
from lora_math.names.families import from_file
from lora_math.names.keymap import match
from lora_math.names.keytables import load_keytable
from lora_math.weights import inplace as merge

pytestmark = pytest.mark.unit

UNET = "diffusion_model."
IMG_IN = UNET + "img_in.weight"


def control_state_dict(table: dict, seed: int = 0, rank: int = 1) -> dict[str, torch.Tensor]:
    """A BFL control LoRA for every Linear and q/k norm of ``table`` (a FLUX.1 key table), bf16 as BFL stores it."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for key, shape in sorted(table.items()):
        if not key.startswith(UNET):
            continue
        path = key[len(UNET) :]
        if path.endswith(".weight") and len(shape) == 2:
            module = path[: -len(".weight")]
            cols = shape[1] * (2 if module == "img_in" else 1)  # image latent + control latent
            sd[f"{module}.lora_A.weight"] = torch.randn(rank, cols, generator=g).bfloat16()
            sd[f"{module}.lora_B.weight"] = torch.randn(shape[0], rank, generator=g).bfloat16()
            if f"{UNET}{module}.bias" in table:
                sd[f"{module}.lora_B.bias"] = torch.randn(shape[0], generator=g).bfloat16()
        elif re.search(r"_norm\.scale$", path):
            sd[path] = (torch.rand(shape, generator=g) + 0.5).bfloat16()
    return sd


@pytest.fixture(scope="module")
def flux_table() -> dict:
    return load_keytable("flux")


@pytest.fixture(scope="module")
def control(flux_table) -> dict[str, torch.Tensor]:
    return control_state_dict(flux_table)


def test_parses_as_a_flux_control_lora(control):
    p = parse(control, {})
    assert p.format == "flux-control" and p.ignored == ()
    assert p.widened == {"img_in": (3072, 128)}
    norms = {k for k in control if k.endswith("_norm.scale")}
    assert len(norms) == 4 * 19 + 2 * 38
    for key in norms:
        replacement = p.modules[key[: -len(".scale")]]
        assert isinstance(replacement, Replace) and replacement.value is control[key]  # as stored, not converted
    assert isinstance(p.modules["img_in"], LoRA) and p.modules["img_in"].in_features == 128
    bias = p.modules["double_blocks.0.img_attn.qkv.bias"]
    assert isinstance(bias, Full) and bias.diff is None
    assert bias.diff_b is control["double_blocks.0.img_attn.qkv.lora_B.bias"]
    assert from_file(p) == "flux"


def test_without_cores_marker_keys_it_is_no_control_lora(control):
    """Core converts a file as a control LoRA only with ``img_in.lora_A.weight`` and
    ``single_blocks.0.norm.key_norm.scale`` (comfy/lora_convert.py); so does Loom, so no file is one in one and not
    the other: without them the norm scales are left over (as core leaves them) and ``img_in`` is not widened."""
    sd = {k: v for k, v in control.items() if k != "single_blocks.0.norm.key_norm.scale"}
    p = parse(sd, {})
    assert p.format != "flux-control" and p.widened == {}
    assert not any(isinstance(a, Replace) for a in p.modules.values())
    assert "double_blocks.0.img_attn.norm.query_norm.scale" in p.ignored


def test_a_norm_scale_that_is_no_float_tensor_names_its_key(control):
    sd = dict(control, **{"double_blocks.0.txt_attn.norm.key_norm.scale": torch.ones(128, dtype=torch.int64)})
    with pytest.raises(LoraShapeError, match=r"double_blocks\.0\.txt_attn\.norm\.key_norm\.scale: Replace\.value"):
        parse(sd, {})


def test_every_module_lands_on_flux1_img_in_widened(control, flux_table):
    p = parse(control, {})
    km = match(p, flux_table)
    assert km.coverage == 1.0 and km.unmatched == ()
    by_key = {pt.key: pt for pt in km.patches}
    assert by_key[IMG_IN].shape == (3072, 128) and by_key[IMG_IN].adapter is p.modules["img_in"]
    assert all(pt.shape is None for k, pt in by_key.items() if k != IMG_IN)
    norm = by_key[UNET + "single_blocks.0.norm.key_norm.scale"]
    assert isinstance(norm.adapter, Replace)
    assert isinstance(by_key[UNET + "img_in.bias"].adapter, Full)


def test_upstream_names_the_norm_weight_weight(control, flux_table):
    """Upstream ComfyUI's RMSNorm calls the q/k norm scale ``….weight``; the file's ``….scale`` lands there."""
    upstream = {re.sub(r"_norm\.scale$", "_norm.weight", k): v for k, v in flux_table.items()}
    km = match(parse(control, {}), upstream)
    assert km.coverage == 1.0
    norms = [pt.key for pt in km.patches if isinstance(pt.adapter, Replace)]
    assert len(norms) == 152 and all(k.endswith("_norm.weight") for k in norms)


def test_a_model_that_takes_the_control_latent_already_is_not_widened(control, flux_table):
    """FLUX.1 Depth [dev] (the full model) has a 128-column img_in: the delta fits as it is."""
    depth_model = dict(flux_table, **{IMG_IN: (3072, 128)})
    (p,) = [pt for pt in match(parse(control, {}), depth_model).patches if pt.key == IMG_IN]
    assert p.shape is None


@pytest.mark.parametrize(
    ("arch", "said"),
    [
        ("chroma", "this model is chroma (diffusion_model.img_in.weight [3072, 64])"),
        ("flux2_klein_4b", "this model is flux2_klein_4b (diffusion_model.img_in.weight [3072, 128])"),
        ("flux2", "this model is flux2"),
        ("sd15", "this model (sd15) has no img_in weight"),
    ],
)
def test_a_model_whose_img_in_cannot_take_it_is_refused(control, arch, said):
    """Chroma and FLUX.2 klein 4B have FLUX.1's block names and (klein: exactly the widened) img_in shapes, so the
    file would silently fit them in core; Loom refuses, naming the module and what the model is."""
    with pytest.raises(LoraShapeError) as err:
        match(parse(control, {}), load_keytable(arch))
    msg = str(err.value)
    assert msg.count("img_in: this FLUX.1 control LoRA's img_in takes 128 input features") == 1 and said in msg
    assert "FLUX.1 [dev]" in msg
    km = match(parse(control, {}), load_keytable(arch), strict=False)
    assert "img_in" in km.mismatched and "img_in" in km.unmatched


def test_a_wider_img_in_is_refused(control, flux_table):
    fill = dict(flux_table, **{IMG_IN: (3072, 384)})  # FLUX.1 Fill: image, masked image and mask latents
    with pytest.raises(LoraShapeError, match=r"\[3072, 384\] cannot be widened to \[3072, 128\]"):
        match(parse(control, {}), fill)


@pytest.mark.parametrize("strength", [1.0, 0.3, -0.7])
def test_a_replacement_ignores_the_strength_as_cores_set_patch(strength):
    value = torch.tensor([0.5, 1.5, 2.0], dtype=torch.bfloat16)
    weight = torch.ones(3, dtype=torch.bfloat16)
    out = merged_weight(weight, Replace(value), strength)
    assert torch.equal(out, value) and out.dtype == weight.dtype and torch.equal(weight, torch.ones(3).bfloat16())
    assert not merge.is_additive(Replace(value))  # never on the in-place delta path


def test_a_replacement_has_no_delta_nor_bypass():
    r = Replace(torch.ones(4))
    with pytest.raises(LoraShapeError, match="replaces the weight"):
        r.delta_weight((4,))
    with pytest.raises(NotImplementedError, match="merged_weight"):
        bypass_forward(r, torch.ones(2, 4), torch.ones(2, 4), 1.0, kind="linear")
    with pytest.raises(LoraShapeError, match=r"\[4\].*\[5\]"):
        r.replaced((5,))


def test_inspect_reports_a_flux_control_lora_with_full_coverage(tmp_path, capsys, control):
    path = tmp_path / "flux1-depth-dev-lora.safetensors"
    save_file(control, str(path))
    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "flux-control" and report["base_model"] == "flux" and report["arch"] == "flux"
    assert report["targets"] == report["matched"] == 780 and report["coverage"] == 1.0
    assert report["unmatched"] == [] and report["ignored_keys"] == [] and "mismatched" not in report
