"""Loom Save LoRA on the tiny SD1.5 model: the saved file loads in ComfyUI core with zero unloaded keys, and core,
LoRA Loom's loader and the exact ``W + scale · up @ down`` from the fp32 factors all agree.

Tolerance (stated per save dtype): the file holds each factor rounded to the save dtype, so each factor element ``x``
is off by at most ``e(x) = u · |x| + η`` (unit roundoff u: 2^-11 fp16, 2^-8 bf16, 2^-24 fp32; η = u · the smallest
normal number: the absolute rounding of subnormals, 2^-25 for fp16). Every element of the file's ΔW is then within
``scale · (e(up) @ (|down| + e(down)) + |up| @ e(down))`` of the exact fp32 ΔW; the loaders add fp32 rounding of the
product and the sum (≤ 2^-22 · (|W'| + scale · |up| @ |down|)), and, should ComfyUI keep the weight in fp16/bf16, half
an ulp of the weight dtype. Each weight is checked element by element against that bound, and the bound is checked to
be far below the change itself (so a wrong scale, sign, transpose or target fails). Core and Loom read the same file
in fp32, so they agree to fp32 rounding.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from comfy_env import REPO
from conftest import patched_state
from safetensors import safe_open

ATTN = re.compile(r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)\.weight$")
RANK, ALPHA = 4, 8.0
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
LOAD_WARNINGS = ("lora key not loaded", "NOT LOADED")


@pytest.fixture
def loras_dir(tmp_path):
    """A fresh folder registered as ComfyUI's first `loras` folder (where the node saves), removed afterwards."""
    import folder_paths

    folder = tmp_path / "loras"
    folder.mkdir()
    folder_paths.add_model_folder_path("loras", str(folder), is_default=True)
    assert folder_paths.get_folder_paths("loras")[0] == str(folder)
    yield folder
    folder_paths.folder_names_and_paths["loras"][0].remove(str(folder))
    folder_paths.filename_list_cache.pop("loras", None)


def trained_lora(pack, model, seed: int = 0, **kw):
    """A LoomLoRA with random non-zero factors on every attention projection of the model (ΔW RMS = 0.1 W RMS)."""
    result = importlib.import_module(f"{pack.__name__}.lora_math.save.result")
    state = model.model.state_dict()
    gen = torch.Generator().manual_seed(seed)
    modules = {}
    for key in sorted(k for k in state if ATTN.search(k)):
        w = state[key].float()
        down = torch.randn(RANK, w.shape[1], generator=gen)
        up = torch.randn(w.shape[0], RANK, generator=gen)
        delta = (ALPHA / RANK) * up @ down
        up *= 0.1 * w.pow(2).mean().sqrt() / delta.pow(2).mean().sqrt()
        modules[key] = (down, up)
    base = {"sha256": "ab" * 32, "name": "loom-tiny-sd15.safetensors", "model_keys": list(state)}
    dataset = {"num_images": 10, "images_sha256": "cd" * 32, "trigger": "zxq cube", "tag_frequency": {"zxq cube": 10}}
    settings = {"rank": RANK, "alpha": ALPHA, "learning_rate": 1e-4, "steps": 20, "seed": 0, "resolution": 64}
    return result.LoomLoRA(
        modules, ALPHA, RANK, "sd15", settings, {**dataset, **kw.pop("dataset", {})}, {**base, **kw.pop("base", {})},
        step=20, **kw,
    )  # fmt: skip


def save(pack, lora, prefix="loom/zxq_cube", scope="a red cube for product shots", **kw):
    node = pack.nodes.files.save_lora.LoomSaveLora
    return node.execute(lora=lora, filename_prefix=prefix, scope=scope, **kw)


def expected_weights(lora, original, dtype: torch.dtype):
    """fp32 ``W + scale · up @ down`` from the exact factors, and how far a file in ``dtype`` may be from it."""
    u = torch.finfo(dtype).eps / 2
    eta = torch.finfo(dtype).tiny * u
    want, bound = {}, {}
    for key, (down, up) in lora.modules.items():
        w = original[key].float()
        want[key] = (w.double() + lora.scale * (up.double() @ down.double())).float()
        e_up, e_down = up.abs() * u + eta, down.abs() * u + eta
        factors = lora.scale * (e_up @ (down.abs() + e_down) + up.abs() @ e_down)
        fp32 = 2.0**-22 * (want[key].abs() + lora.scale * (up.abs() @ down.abs()))
        weight = 0.0 if original[key].dtype == torch.float32 else torch.finfo(original[key].dtype).eps / 2
        bound[key] = factors + fp32 + weight * want[key].abs()
    return want, bound


def _core_load(model, path, caplog):
    import comfy.sd
    import comfy.utils

    with caplog.at_level(logging.WARNING):
        caplog.clear()
        core_model, _ = comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(str(path)), 1.0, 0)
    unloaded = [r.getMessage() for r in caplog.records if any(w in r.getMessage() for w in LOAD_WARNINGS)]
    return core_model, unloaded


@pytest.mark.parametrize("save_dtype", ["fp16", "bf16"])  # fp32: the unit tier checks the file holds the masters
def test_saved_lora_loads_in_core_and_loom_with_the_trained_weights(pack, sd15, loras_dir, caplog, save_dtype):
    import folder_paths

    model, _, _ = sd15
    original = {k: v.detach().clone() for k, v in model.model.state_dict().items()}
    lora = trained_lora(pack, model)
    assert len(lora.modules) == 56  # to_q/k/v/out.0 of attn1/attn2 in 7 transformer blocks

    out = save(pack, lora, save_dtype=save_dtype)
    rel, stack = out.result
    assert rel == str(Path("loom", "zxq_cube.safetensors"))
    assert [tuple(e) for e in stack] == [(rel, 1.0, 1.0)]  # a LORA_STACK for a stack node in the same graph
    assert rel in folder_paths.get_filename_list("loras")  # every loader lists it at once
    assert "loom/zxq_cube.loom-state" not in folder_paths.get_filename_list("loras")
    text = out.ui.as_dict()["text"][0]
    assert text.startswith(f"saved {rel} (56 modules, rank 4, alpha 8, {save_dtype},")
    path = loras_dir / "loom" / "zxq_cube.safetensors"
    assert sorted(p.name for p in path.parent.iterdir()) == ["zxq_cube.loom-state", "zxq_cube.safetensors"]

    # (a) ComfyUI core's loader: every key of the file lands
    core_model, unloaded = _core_load(model, path, caplog)
    assert unloaded == []
    assert len(core_model.patches) == 56

    # (b) core == Loom's own loader == W + scale · up @ down
    loom_model, _, report = pack.nodes.load.loader.LoomLoraLoader.execute(
        model=model, clip=None, lora_name=rel, strength_model=1.0, strength_clip=1.0
    ).result
    assert report == f"{rel}: 56/56 modules matched, 56 weights patched"
    core, loom = patched_state(core_model), patched_state(loom_model)
    want, bounds = expected_weights(lora, original, DTYPES[save_dtype])
    for key, orig in original.items():
        if key not in want:
            assert torch.equal(core[key], orig) and torch.equal(loom[key], orig), key
            continue
        bound = bounds[key]
        change = (want[key] - orig.float()).abs()
        assert bound.mean() < change.mean() / (20 if save_dtype == "bf16" else 500), key  # the check has teeth
        for got in (core[key], loom[key]):
            err = (got.float() - want[key]).abs()
            assert (err <= bound).all(), f"{key}: max error {err.max():.3g}, bound {bound[err > bound].min():.3g}"
        torch.testing.assert_close(loom[key], core[key], rtol=2.0**-20, atol=2.0**-20 * orig.abs().max().item())
    after = model.model.state_dict()
    assert all(torch.equal(after[k], original[k]) for k in original)  # the input model is untouched


def test_utility_lora_with_a_unet_and_a_clip_module_loads_in_core(pack, sd15, loras_dir, caplog):
    """A merge result (no training) holding one UNet and one CLIP module, each with its own rank and alpha: saved
    through the node, ComfyUI core's loader takes every key and patches both weights with ``W + alpha / r · up @
    down``; no resume file is written."""
    import comfy.sd
    import comfy.utils

    result = importlib.import_module(f"{pack.__name__}.lora_math.save.result")
    model, clip, _ = sd15
    unet_state, clip_state = model.model.state_dict(), clip.patcher.model.state_dict()
    unet_key = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    clip_key = "clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
    originals = {unet_key: unet_state[unet_key].detach().clone(), clip_key: clip_state[clip_key].detach().clone()}
    gen = torch.Generator().manual_seed(7)
    modules = {}
    for (key, w), rank in zip(originals.items(), (4, 2), strict=True):
        modules[key] = (torch.randn(rank, w.shape[1], generator=gen), torch.randn(w.shape[0], rank, generator=gen))
    sources = tuple({"name": f"{n}.safetensors", "strength_model": 0.5, "role": "lora"} for n in ("a", "b", "c"))
    lora = result.LoomLoRA(
        modules, 8.0, 4, "sd15", base={"name": "loom-tiny-sd15.safetensors", "model_keys": list(unet_state)},
        module_alpha={unet_key: 8.0, clip_key: 0.5}, operation="merge", sources=sources, notes={"modules": 2},
    )  # fmt: skip

    out = save(pack, lora, prefix="loom/merged", scope="", save_dtype="fp32")
    text = out.ui.as_dict()["text"][0]
    assert text.startswith("saved ") and "(2 modules, ranks 2-4, alphas 0.5-8, fp32," in text
    assert text.endswith("; merge of 3 LoRAs") and "resume" not in text
    path = loras_dir / "loom" / "merged.safetensors"
    assert [p.name for p in path.parent.iterdir()] == ["merged.safetensors"]
    with safe_open(str(path), "pt") as fh:
        md, names = fh.metadata(), set(fh.keys())
    assert md["loom_operation"] == "merge" and md["ss_network_dim"] == "Dynamic" and "ss_steps" not in md
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in names

    with caplog.at_level(logging.WARNING):
        caplog.clear()
        sd = comfy.utils.load_torch_file(str(path))
        core_model, core_clip = comfy.sd.load_lora_for_models(model, clip, sd, 1.0, 1.0)
    assert [r.getMessage() for r in caplog.records if any(w in r.getMessage() for w in LOAD_WARNINGS)] == []
    assert set(core_model.patches) == {unet_key} and set(core_clip.patcher.patches) == {clip_key}
    for patcher, key in ((core_model, unet_key), (core_clip.patcher, clip_key)):
        down, up = modules[key]
        orig, scale = originals[key], lora.scale_of(key)
        want = orig.double() + scale * (up.double() @ down.double())
        # fp32 factors, product and sum (2^-22 as above), then rounding to the weight's dtype (ComfyUI keeps this
        # CLIP in fp16): u · |W'| + η, η the absolute rounding of subnormals (as in expected_weights)
        u = torch.finfo(orig.dtype).eps / 2
        eta = torch.finfo(orig.dtype).tiny * u
        bound = u * want.abs() + eta + 2.0**-22 * (want.abs() + scale * (up.abs().double() @ down.abs().double()))
        err = (patched_state(patcher)[key].double() - want).abs()
        assert (err <= bound).all(), f"{key}: max error {err.max():.3g}"
        assert bound.mean() < (want - orig.double()).abs().mean() / 100, key  # the check has teeth
    assert torch.equal(model.model.state_dict()[unet_key], originals[unet_key])  # the inputs are untouched
    assert torch.equal(clip.patcher.model.state_dict()[clip_key], originals[clip_key])


def test_core_warning_capture_sees_an_unloadable_key(pack, sd15, loras_dir, caplog):
    """The zero-unloaded-keys check above can fail: an extra module the model lacks is reported and caught."""
    import comfy.sd
    import comfy.utils

    model, _, _ = sd15
    save(pack, trained_lora(pack, model))
    sd = comfy.utils.load_torch_file(str(loras_dir / "loom" / "zxq_cube.safetensors"))
    sd["lora_unet_not_a_layer.lora_down.weight"] = torch.zeros(4, 8)
    sd["lora_unet_not_a_layer.lora_up.weight"] = torch.zeros(8, 4)
    with caplog.at_level(logging.WARNING):
        comfy.sd.load_lora_for_models(model, None, sd, 1.0, 0)
    assert any("lora key not loaded: lora_unet_not_a_layer" in r.getMessage() for r in caplog.records)


def test_metadata_and_inspect_cli(pack, sd15, loras_dir):
    model, _, _ = sd15
    save(pack, trained_lora(pack, model, interrupted=True), prefix="zxq")
    path = loras_dir / "zxq.safetensors"
    with safe_open(str(path), "pt") as fh:
        md = fh.metadata()
    assert md["ss_network_module"] == "networks.lora" and md["ss_base_model_version"] == "sd_v1"
    assert md["ss_network_dim"] == "4" and md["ss_network_alpha"] == "8.0" and md["ss_steps"] == "20"
    assert json.loads(md["ss_tag_frequency"]) == {"dataset": {"zxq cube": 10}}
    assert json.loads(md["loom_settings"])["steps"] == 20
    assert md["loom_scope"] == "a red cube for product shots" and md["loom_interrupted"] == "true"
    assert md["modelspec.architecture"] == "stable-diffusion-v1/lora" and md["modelspec.title"] == "zxq"
    assert md["loom_base_model_sha256"] == "ab" * 32 and md["loom_dataset_sha256"] == "cd" * 32

    proc = subprocess.run(
        [sys.executable, "-m", "lora_math", "inspect", str(path), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["format"] == "kohya" and report["base_model"] == "sd15"
    assert report["rank"] == 4 and report["alpha"] == 8.0
    assert report["trigger_words"][0] == "zxq cube"


def test_resume_state_round_trips_through_the_node(pack, sd15, loras_dir):
    lora_save = importlib.import_module(f"{pack.__name__}.lora_math.save")
    model, _, _ = sd15
    lora = trained_lora(pack, model)
    save(pack, lora, prefix="r")
    again = lora_save.load_trained(loras_dir / "r.safetensors")
    assert list(again.modules) == list(lora.modules)
    assert all(torch.equal(again.modules[k][i], lora.modules[k][i]) for k in lora.modules for i in (0, 1))
    assert "model_keys" not in again.base and again.base["sha256"] == "ab" * 32


def test_refuses_to_overwrite_unless_asked(pack, sd15, loras_dir):
    model, _, _ = sd15
    save(pack, trained_lora(pack, model, seed=1), prefix="dup")
    path = loras_dir / "dup.safetensors"
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="filename_prefix: .*dup.safetensors already exists.*overwrite"):
        save(pack, trained_lora(pack, model, seed=2), prefix="dup")
    assert path.read_bytes() == before
    save(pack, trained_lora(pack, model, seed=2), prefix="dup", overwrite=True)
    assert path.read_bytes() != before
    assert sorted(p.name for p in loras_dir.iterdir()) == ["dup.loom-state", "dup.safetensors"]


@pytest.mark.parametrize(
    "bad, message",
    [
        ("/etc/evil", "absolute path"),
        ("C:\\loras\\x", "absolute path"),
        ("../checkpoints/x", r"leaves the `loras` folder \('..'\)"),
        ("a/../../x", r"leaves the `loras` folder"),
        ("", "is empty"),
        ("loom/", "ends in a folder"),
        ("a?b", "contains '\\?'"),
    ],
)
def test_bad_filename_prefix_is_refused_naming_it(pack, sd15, loras_dir, bad, message):
    node = pack.nodes.files.save_lora.LoomSaveLora
    assert re.search(f"filename_prefix: .*{message}", node.validate_inputs(filename_prefix=bad))
    model, _, _ = sd15
    with pytest.raises(ValueError, match=f"filename_prefix: .*{message}"):
        save(pack, trained_lora(pack, model), prefix=bad)
    assert list(loras_dir.iterdir()) == []


def test_prefix_forms(pack):
    rel = pack.nodes.files.save_lora.relative_name
    assert rel("loom/my_lora") == "loom/my_lora.safetensors"
    assert rel(" loom\\sub\\x.safetensors ") == "loom/sub/x.safetensors"
    assert rel("./x") == "x.safetensors"
    assert pack.nodes.files.save_lora.LoomSaveLora.validate_inputs(filename_prefix="ok", save_dtype="fp16") is True


def test_missing_model_keys_and_wrong_input_are_clear_errors(pack, sd15, loras_dir):
    model, _, _ = sd15
    lora = trained_lora(pack, model)
    lora.base = {k: v for k, v in lora.base.items() if k != "model_keys"}
    with pytest.raises(ValueError, match=r"lora: .*base\['model_keys'\]"):
        save(pack, lora)
    with pytest.raises(
        ValueError, match="lora: expected a LOOM_LORA from Loom Train LoRA or a Loom LoRA utility node, got str"
    ):
        save(pack, "not a lora")
    with pytest.raises(ValueError, match="save_dtype: 'fp8'"):
        save(pack, trained_lora(pack, model), save_dtype="fp8")
    assert list(loras_dir.iterdir()) == []


def test_schema(pack):
    node = pack.nodes.files.save_lora.LoomSaveLora
    schema = node.define_schema()
    assert node in pack.nodes.NODES
    assert schema.display_name == "Loom Save LoRA" and schema.category == "loom/train" and schema.is_output_node
    assert [i.id for i in schema.inputs] == ["lora", "filename_prefix", "scope", "overwrite", "save_dtype"]
