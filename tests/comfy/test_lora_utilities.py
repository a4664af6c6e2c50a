"""Interference report, auto-balance, merge, resize, convert and extract on the real tiny SD1.5 model (fp32, CPU).

References are independent of ``lora_math.lowrank.delta``: the stack's effect is read from the weights ComfyUI loads with
the stack applied (``patched_state``), and optimal truncations come from ``torch.linalg.svd`` of the dense ΔW.
"""

import math

import lora_writers as lw
import pytest
import torch
from conftest import patched_state
from safetensors.torch import save_file

pytestmark = (
    pytest.mark.pinned_only
)  # the utilities' math and saving are the same on every ComfyUI; they run once, on 0.3.75

UNET = "diffusion_model."


@pytest.fixture(scope="module")
def files(sd15, loras):
    model, clip, _ = sd15
    written = {
        "a": lw.kohya(model, clip, loras, 1),
        "b": lw.kohya(model, clip, loras, 2),
        "loha": lw.loha(model, clip, loras, 3),
        "dora": lw.dora(model, clip, loras, 4, axis="out"),
    }
    return {k: w.name for k, w in written.items()} | {"written": written}


def hand_change(written, key, originals):
    """ΔW of one file on one weight from ``lora_writers``' fp64 hand reference (DoRA: merged minus original)."""
    (e,) = [e for e in written.expected if e.key == key]
    w = (originals[0] if key.startswith(UNET) else originals[1])[key].double()
    delta = e.delta().double()
    return (delta if e.dora_scale is None else lw.dora_merge(w, delta, e.dora_scale, 1.0) - w).flatten(1)


@pytest.fixture(scope="module")
def originals(sd15):
    model, clip, _ = sd15
    return patched_state(model), patched_state(clip.patcher)


def entry(pack, name, model=1.0, clip=1.0, blocks=""):
    return pack.nodes.load.stack.LoraStackEntry(name, model, clip, blocks)


def applied(pack, model, clip, stack):
    out = pack.nodes.load.stack.LoomLoraStack.execute(model=model, clip=clip, rows="[]", lora_stack=stack).result
    return patched_state(out[0]), (patched_state(out[1].patcher) if clip is not None else {})


def delta_of(lora, key):
    down, up = lora.modules[key]
    scale = lora.alpha_of(key) / down.shape[0]
    return (up.flatten(1).double() @ down.flatten(1).double()) * scale


def save_and_reload(pack, lora, prefix, model, clip):
    """Through Loom Save LoRA (fp32) and back through the stack: the file as every loader reads it."""
    path, stack = pack.nodes.files.save_lora.LoomSaveLora.execute(
        lora=lora, filename_prefix=prefix, scope="", overwrite=True, save_dtype="fp32"
    ).result
    return path, applied(pack, model, clip, stack)


def test_exact_merge_equals_the_stack_applied(pack, sd15, files, originals):
    model, clip, _ = sd15
    stack = [
        entry(pack, files["a"], 0.8, 0.5, "IN:0.5, OUT:1"),
        entry(pack, files["b"], -0.6, 1.0),
        entry(pack, files["loha"], 0.7, 0.3),
    ]
    lora, report = pack.nodes.tools.merge.LoomMergeLoras.execute(
        model=model, clip=clip, lora_stack=stack, mode="exact"
    ).result
    want_model, want_clip = applied(pack, model, clip, stack)
    orig_model, orig_clip = originals
    checked = 0
    for key in lora.modules:
        loaded = (want_model if key.startswith(UNET) else want_clip)[key]
        want, orig = loaded.double(), (orig_model if key.startswith(UNET) else orig_clip)[key].double()
        change = (want - orig).flatten(1)
        err = (delta_of(lora, key) - change).abs().max().item()
        # the loaded weight is rounded to its dtype (fp32 UNet, fp16 CLIP here) once per merged update: a few ulps of
        # the weight; the LoHa's dense part goes through an fp32 SVD (numerical rank): 1e-4 of the change. A wrong
        # strength, block weight or sign is off by ≥ 1e-2 of the change.
        bound = 4 * torch.finfo(loaded.dtype).eps * want.abs().max().item() + 1e-4 * change.abs().max().item()
        assert err <= bound, key
        checked += 1
    assert checked == len(lora.modules) >= 150  # UNet attention/ff/proj/emb and CLIP, all three LoRAs
    assert lora.operation == "merge" and [s["name"] for s in lora.sources] == [files["a"], files["b"], files["loha"]]
    assert lora.sources[0]["blocks"] == "IN:0.5, OUT:1" and len(lora.sources[0]["sha256"]) == 64
    assert "merge of 3 LoRA(s)" in report and "kept 100.000%" in report

    # the saved file, loaded by the stack at strength 1, gives the same model as the three-LoRA stack
    path, (got_model, got_clip) = save_and_reload(pack, lora, "loom-test/merged_exact", model, clip)
    for key in lora.modules:
        got, want = (got_model, want_model) if key.startswith(UNET) else (got_clip, want_clip)
        orig = (orig_model if key.startswith(UNET) else orig_clip)[key]
        change = (want[key].double() - orig.double()).abs().max().item()
        tol = 4 * torch.finfo(want[key].dtype).eps * want[key].abs().max().item() + 1e-4 * change
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=tol, msg=key)


def test_compressed_merge_error_falls_with_rank_and_matches_the_dropped_singular_values(pack, sd15, files, originals):
    model, clip, _ = sd15
    stack = [entry(pack, files["a"], 1.0, 1.0), entry(pack, files["b"], 0.9, 1.0), entry(pack, files["loha"], 0.5, 0.5)]
    want_model, _ = applied(pack, model, None, stack)
    keys = [k for k in want_model if k.endswith("attn1.to_q.weight")][:3]
    errors = []
    for rank in (2, 4, 8):
        lora, report = pack.nodes.tools.merge.LoomMergeLoras.execute(
            model=model, lora_stack=stack, mode="compressed", rank=rank
        ).result
        assert lora.rank == rank and f"rank {rank}" in report
        total_err = 0.0
        for key in keys:
            change = (want_model[key].double() - originals[0][key].double()).flatten(1)
            s = torch.linalg.svdvals(change)
            dropped = float((s[rank:] ** 2).sum())
            err = float((delta_of(lora, key) - change).pow(2).sum())
            assert err == pytest.approx(dropped, rel=1e-3, abs=1e-9 * float((s**2).sum())), (key, rank)
            total_err += math.sqrt(err / float((s**2).sum()))
        errors.append(total_err)
    assert errors[0] > errors[1] > errors[2] > 0


def test_resize_matches_a_full_svd_per_module(pack, sd15, files, originals):
    model, clip, _ = sd15
    resize = pack.nodes.tools.resize.LoomResizeLora.execute
    lora, report = resize(
        model=model, clip=clip, lora_name=files["a"], method="energy", rank=8, dynamic_param=0.9
    ).result
    want_model, want_clip = applied(pack, model, clip, [entry(pack, files["a"])])
    for key in list(lora.modules)[:40]:
        want = (want_model if key.startswith(UNET) else want_clip)[key].double()
        orig = (originals[0] if key.startswith(UNET) else originals[1])[key].double()
        s2 = torch.linalg.svdvals((want - orig).flatten(1)) ** 2
        k = lora.modules[key][0].shape[0]
        kept = torch.cumsum(s2, 0) / s2.sum()
        assert k == int((kept < 0.9 - 1e-9).sum()) + 1, key  # the fewest singular values holding 90%
    assert "energy 0.9 (max rank 8)" in report and "block" in report and "least kept" in report
    fixed, report = resize(model=model, lora_name=files["a"], method="rank", rank=2).result
    assert {d.shape[0] for d, _ in fixed.modules.values()} == {2}
    assert "rank 2" in report and "→ plain LoRA" in report


@pytest.mark.parametrize("name", ["loha", "dora"])
def test_convert_to_plain_lora(pack, sd15, files, originals, name):
    model, clip, _ = sd15
    lora, report = pack.nodes.tools.resize.LoomConvertLora.execute(
        model=model, clip=clip, lora_name=files[name], rank=6
    ).result
    keys = list(lora.modules)
    for key in keys[:12] + keys[-6:]:  # UNet and CLIP
        change = hand_change(files["written"][name], key, originals)
        s = torch.linalg.svdvals(change)
        err = float((delta_of(lora, key) - change).pow(2).sum())
        assert err == pytest.approx(float((s[6:] ** 2).sum()), rel=2e-3, abs=1e-9 * float((s**2).sum())), key
    assert ("LoHa" in report) if name == "loha" else ("LoRA+DoRA" in report)


def test_extract_recovers_a_known_difference(pack, sd15, files, originals):
    import comfy.sd
    from conftest import SD15

    model, _, _ = sd15
    tuned, _, _, _ = comfy.sd.load_checkpoint_guess_config(str(SD15), output_vae=False, output_clip=False)
    keys = [k for k in tuned.model.state_dict() if k.endswith(("attn1.to_q.weight", "attn2.to_v.weight"))]
    g = torch.Generator().manual_seed(5)
    added = {}
    with torch.no_grad():
        for key in keys:
            w = tuned.model.state_dict()[key]
            low = torch.randn(w.shape[0], 3, generator=g) @ torch.randn(3, w.shape[1], generator=g) * 0.02
            noise = torch.randn(w.shape, generator=g) * 3e-3
            added[key] = (low + noise).double()
            w += low + noise
    extract = pack.nodes.tools.extract.LoomExtractLora.execute
    lora, report = extract(model_tuned=tuned, model_base=model, target="attention", method="rank", rank=3).result
    assert set(added) <= set(lora.modules)  # untouched layers are left out (zero difference)
    assert len(lora.modules) == len(added) and "had no update" in report
    for key, want in added.items():
        s = torch.linalg.svdvals(want)
        err = float((delta_of(lora, key) - want).pow(2).sum())
        assert err == pytest.approx(float((s[3:] ** 2).sum()), rel=1e-2), key
    lora, report = extract(
        model_tuned=tuned, model_base=model, target="attention", method="energy", rank=64, dynamic_param=0.999
    ).result
    assert all(d.shape[0] > 3 for d, _ in lora.modules.values())  # the noise needs more than rank 3 for 99.9%
    # models are read as they load: base + a LoRA stack minus base extracts the stack (rank 8 holds it exactly)
    stacked = pack.nodes.load.stack.LoomLoraStack.execute(
        model=model, clip=None, rows="[]", lora_stack=[entry(pack, files["a"], 0.7)]
    ).result[0]
    lora, _ = extract(model_tuned=stacked, model_base=model, target="attention", method="rank", rank=8).result
    written = files["written"]["a"]
    attention = [e.key for e in written.expected if ".attn" in e.key and e.key.startswith(UNET)]
    assert set(lora.modules) == set(attention)
    for key in attention[:16]:
        want = 0.7 * hand_change(written, key, originals)
        torch.testing.assert_close(delta_of(lora, key), want, rtol=0, atol=1e-4 * want.abs().max().item())
    # target "all": every Linear and conv; a 3x3 conv's difference comes out as a LoCon module that saves and loads
    conv = f"{UNET}input_blocks.1.0.in_layers.2.weight"
    with torch.no_grad():
        w = tuned.model.state_dict()[conv]
        low = (torch.randn(w.shape[0], 2, generator=g) @ torch.randn(2, w[0].numel(), generator=g)).reshape(w.shape)
        w += low * 0.02
    lora, _ = extract(model_tuned=tuned, model_base=model, target="all", method="rank", rank=3).result
    assert set(lora.modules) == set(added) | {conv}
    down, up = lora.modules[conv]
    assert down.shape == (3, w.shape[1], 3, 3) and up.shape == (w.shape[0], 3, 1, 1)
    torch.testing.assert_close(delta_of(lora, conv).reshape(w.shape), (low * 0.02).double(), rtol=0, atol=1e-5)
    _, (got, _) = save_and_reload(pack, lora, "loom-test/extracted_all", model, None)
    want = originals[0][conv].double() + delta_of(lora, conv).reshape(w.shape)
    torch.testing.assert_close(got[conv].double(), want, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="^model_base: the two models have the same weights"):
        extract(model_tuned=model, model_base=model, target="attention", method="rank", rank=4)
    with pytest.raises(ValueError, match="^clip_base: connect both"):
        extract(model_tuned=tuned, model_base=model, rank=4, clip_tuned=sd15[1])


def test_interference_finds_overlap_where_it_is(pack, sd15, files, originals):
    model, clip, _ = sd15
    node = pack.nodes.tools.interference.LoomLoraInterference.execute
    same = [entry(pack, files["a"], 1.0), entry(pack, files["a"], 0.5)]
    text, image = node(model=model, clip=clip, lora_stack=same).result
    report, _ = pack.nodes.tools.interference.analyse(model, clip, same)
    assert all(b.cosine(0, 1) == pytest.approx(1.0, abs=1e-6) for b in report.blocks)
    assert "reinforce" in text and image.ndim == 4 and image.shape[-1] == 3
    different = [entry(pack, files["a"], 1.0), entry(pack, files["b"], 1.0)]
    report, _ = pack.nodes.tools.interference.analyse(model, clip, different)
    assert all(abs(b.cosine(0, 1)) < 0.15 for b in report.blocks)  # independent random LoRAs: near-orthogonal
    assert not [f for f in report.flags() if f.kind == "overlap"]
    # relative norms against the weights ComfyUI loads with that stack (block IN01, both LoRAs)
    want_model, _ = applied(pack, model, None, [entry(pack, files["a"]), entry(pack, files["b"])])
    in01 = next(b for b in report.blocks if b.block == "IN01")
    keys = [k for k in want_model if ".input_blocks.1." in k and k in report_keys(pack, model, clip, different)]
    num = sum(float((want_model[k].double() - originals[0][k].double()).pow(2).sum()) for k in keys)
    den = sum(float(originals[0][k].double().pow(2).sum()) for k in keys)
    assert in01.combined == pytest.approx(math.sqrt(num / den), rel=1e-4)


def report_keys(pack, model, clip, stack):
    specs = pack.nodes.tools.stack_updates.specs_of(model, clip, stack)
    updates = pack.nodes.tools.stack_updates.stack_updates(model, clip, specs)
    return {w.key for w in updates.weights}


def test_balance_keeps_the_combined_update_in_budget(pack, sd15, files):
    model, clip, _ = sd15
    stack = [entry(pack, files["a"], 1.0, 0.8), entry(pack, files["a"], 0.6, 0.4, "OUT:0"), entry(pack, files["b"])]
    before, _ = pack.nodes.tools.interference.analyse(model, clip, stack)
    budget = before.worst("model").combined / 2
    out, text = pack.nodes.tools.balance.LoomBalanceStack.execute(
        model=model, clip=clip, lora_stack=stack, budget=budget
    ).result
    after, _ = pack.nodes.tools.interference.analyse(model, clip, out)
    assert after.worst("model").combined == pytest.approx(budget, rel=1e-6)
    assert after.worst("clip").combined <= budget * (1 + 1e-6)
    ratios = [o[1] / s[1] for o, s in zip(out, stack, strict=True)]
    assert max(ratios) == pytest.approx(min(ratios)) and ratios[0] == pytest.approx(0.5, rel=1e-6)
    assert out[1].blocks == "OUT:0" and "model strengths ×0.5000" in text
    same, text = pack.nodes.tools.balance.LoomBalanceStack.execute(
        model=model, lora_stack=stack, budget=budget * 10
    ).result
    assert [tuple(e) for e in same] == [tuple(e) for e in stack] and "unchanged" in text


def test_bad_inputs_get_clear_errors(pack, sd15, files, loras):
    model, clip, _ = sd15
    merge = pack.nodes.tools.merge.LoomMergeLoras.execute
    with pytest.raises(ValueError, match="^lora_stack: the stack is empty"):
        merge(model=model, lora_stack=[], mode="exact")
    with pytest.raises(ValueError, match="^lora_stack: the stack is empty"):
        merge(model=model, lora_stack=[entry(pack, files["a"], 0.0, 0.0)], mode="exact")
    # an SDXL LoRA (cross-attention input 2048) next to an SD1.5 one
    save_file(
        {
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(4, 2048),
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.zeros(640, 4),
        },
        str(loras / "sdxl-like.safetensors"),
    )
    with pytest.raises(ValueError, match=r"^lora_stack: 'sdxl-like.safetensors' is a sdxl LoRA but .* is a sd15 LoRA"):
        merge(model=model, lora_stack=[entry(pack, files["a"]), entry(pack, "sdxl-like.safetensors")], mode="exact")
    with pytest.raises(ValueError, match=r"^rank: 4096 is above the rank of diffusion_model\..* at most \d+\)"):
        merge(model=model, lora_stack=[entry(pack, files["a"])], mode="compressed", rank=4096)
    resize = pack.nodes.tools.resize.LoomResizeLora.execute
    with pytest.raises(ValueError, match="^dynamic_param: energy: 1.5 must be a fraction"):
        resize(model=model, lora_name=files["a"], method="energy", rank=8, dynamic_param=1.5)
    with pytest.raises(ValueError, match="^lora_name: LoRA 'missing.safetensors' is not in any `loras` folder"):
        resize(model=model, lora_name="missing.safetensors", method="rank", rank=4)
    assert "missing.safetensors" in pack.nodes.tools.resize.LoomResizeLora.validate_inputs("missing.safetensors")


def test_text_encoder_weights_kohya_cannot_name_are_left_out_with_a_note(pack, sd15, loras):
    model, clip, _ = sd15
    g = torch.Generator().manual_seed(9)
    unet = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file(
        {
            "lora_te_text_projection.lora_down.weight": torch.randn(4, 768, generator=g),
            "lora_te_text_projection.lora_up.weight": torch.randn(768, 4, generator=g) * 0.01,
            f"{unet}.lora_down.weight": torch.randn(4, 320, generator=g),
            f"{unet}.lora_up.weight": torch.randn(320, 4, generator=g) * 0.01,
        },
        str(loras / "with-projection.safetensors"),
    )
    lora, report = pack.nodes.tools.merge.LoomMergeLoras.execute(
        model=model, clip=clip, lora_stack=[entry(pack, "with-projection.safetensors")], mode="exact"
    ).result
    assert list(lora.modules) == [f"{UNET}input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"]
    assert "note: 1 text-encoder updates that kohya LoRA files cannot name" in report
    path, _ = pack.nodes.files.save_lora.LoomSaveLora.execute(
        lora=lora, filename_prefix="loom-test/without_projection", scope="", overwrite=True, save_dtype="fp16"
    ).result
    assert path.endswith("without_projection.safetensors")
