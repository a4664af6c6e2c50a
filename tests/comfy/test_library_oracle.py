"""The writers' own libraries as the oracle: Loom applies a LoRA exactly as diffusers fuses it.

For each family a small diffusers model (random weights) gets a PEFT LoRA on every Linear layer; the pipeline class
saves it as diffusers 0.42 writes LoRA files (``save_lora_weights``, alpha only in ``lora_adapter_metadata``; for SD
UNets and text encoders the ``lora.down``/``lora_linear_layer`` key styles, and diffusers' own kohya conversion), a
fresh copy of the model loads it back and diffusers fuses it (``fuse_lora``). On the ComfyUI side the same-sized
model is ComfyUI's own class (``families.tiny``) with the diffusers weights copied in; Loom's loader applies the saved
file, and every patched weight must equal diffusers' fused one. diffusers and ComfyUI name the weights differently
(fused qkv, BFL names): the copy goes through the key maps the pack ships, whose every name must land on a weight
of the right shape (else the test fails before comparing).

Tolerance: fp32 throughout; both sides compute ``W + s·(alpha/r)·B·A`` with different summation orders, so
``atol = 1e-5 · max|W'|`` (the deltas are 10–100× larger than that).
"""

from __future__ import annotations

import inspect
import json

import families
import pytest
import torch
from conftest import patched_state, tiny_flux

pytest.importorskip("diffusers")
pytest.importorskip("peft")

import diffusers  # noqa: E402
from peft import LoraConfig, get_peft_model_state_dict  # noqa: E402

RANK, ALPHA = 4, 8.0  # scale 2: a wrong alpha (scale 1) is off by 100% of the delta

# family -> (diffusers model class, its config matching families.tiny / conftest.tiny_flux, pipeline class)
DIFFUSERS = {
    "flux": ("FluxTransformer2DModel", dict(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=64, num_attention_heads=2,
        joint_attention_dim=64, pooled_projection_dim=64, guidance_embeds=True, axes_dims_rope=(16, 24, 24),
    ), "FluxPipeline"),
    "flux2": ("Flux2Transformer2DModel", dict(
        num_layers=2, num_single_layers=2, attention_head_dim=128, num_attention_heads=2, joint_attention_dim=64,
        in_channels=128, guidance_embeds=True,
    ), "Flux2Pipeline"),
    "chroma": ("ChromaTransformer2DModel", dict(
        num_layers=2, num_single_layers=2, attention_head_dim=64, num_attention_heads=2, joint_attention_dim=64,
        in_channels=64, axes_dims_rope=(16, 24, 24), approximator_num_channels=64, approximator_hidden_dim=256,
        approximator_layers=2,
    ), "ChromaPipeline"),
    "z_image": ("ZImageTransformer2DModel", dict(
        in_channels=16, dim=1152, n_layers=2, n_refiner_layers=1, n_heads=9, n_kv_heads=9, cap_feat_dim=64,
        axes_dims=[32, 48, 48], axes_lens=[64, 64, 64],
    ), "ZImagePipeline"),
    "qwen_image": ("QwenImageTransformer2DModel", dict(
        num_layers=2, attention_head_dim=32, num_attention_heads=2, joint_attention_dim=64, in_channels=64,
        out_channels=16, axes_dims_rope=(8, 12, 12),
    ), "QwenImagePipeline"),
    "sd35_medium": ("SD3Transformer2DModel", dict(
        sample_size=32, num_layers=2, attention_head_dim=64, num_attention_heads=2, joint_attention_dim=64,
        caption_projection_dim=128, pooled_projection_dim=64, pos_embed_max_size=32, dual_attention_layers=(0,),
        qk_norm="rms_norm",
    ), "StableDiffusion3Pipeline"),
}  # fmt: skip


def comfy_model(family: str):
    return tiny_flux(0) if family == "flux" else families.tiny(family, **families.DIFFUSERS_SIZED.get(family, {}))


def diffusers_model(family: str, seed: int = 0):
    cls, config, _ = DIFFUSERS[family]
    torch.manual_seed(seed)
    model = getattr(diffusers, cls)(**config)
    with torch.no_grad():  # norms and embeddings at random values too, so every weight is distinct
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


def linear_names(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def pipeline(family: str, transformer):
    cls = getattr(diffusers, DIFFUSERS[family][2])
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    return cls(**{p: None for p in params if p != "transformer"}, transformer=transformer)


def write_lora(family: str, folder, config: LoraConfig, name: str):
    """The LoRA as diffusers' pipeline saves it: ``transformer.…lora_A/B``, alpha only in the header metadata."""
    model = diffusers_model(family)
    model.add_adapter(config)
    torch.manual_seed(7)
    with torch.no_grad():  # lora_B at random values (PEFT starts it at zero)
        for n, p in model.named_parameters():
            if "lora_B" in n or "lora_magnitude" in n:
                p.copy_(0.1 * torch.randn_like(p) + (1.0 if "lora_magnitude" in n else 0.0))
    layers = get_peft_model_state_dict(model)
    cls = getattr(diffusers, DIFFUSERS[family][2])
    cls.save_lora_weights(
        str(folder / name), transformer_lora_layers=layers, transformer_lora_adapter_metadata=config.to_dict()
    )
    path = folder / f"{name}.safetensors"
    (folder / name / "pytorch_lora_weights.safetensors").replace(path)
    return path


def fused(family: str, path, scale: float) -> dict[str, torch.Tensor]:
    pipe = pipeline(family, diffusers_model(family))
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora(components=["transformer"], lora_scale=scale)
    pipe.unload_lora_weights()
    return {k: v.detach().clone() for k, v in pipe.transformer.state_dict().items()}


def copy_into_comfy(pack, dm, cm) -> dict:
    """diffusers weights into the ComfyUI model through the pack's key maps; returns {diffusers name: Target}."""
    keys = {k: tuple(v.shape) for k, v in cm.model.state_dict().items()}
    table = pack.lora_math.names.keymap.alias_table(keys)
    sd = cm.model.state_dict()
    targets = {}
    for n in linear_names(dm):
        target = table.resolve(f"transformer.{n}")
        assert target is not None, f"{n}: no ComfyUI weight for this diffusers layer"
        layer = dm.get_submodule(n)
        for part in ("weight", "bias"):
            src = getattr(layer, part)
            if src is None:
                continue
            key = target.key[: -len("weight")] + part
            dst = sd[key] if target.rows is None else sd[key][target.rows[0] : target.rows[1]]
            value = src.detach()
            if target.swap_halves:
                value = torch.cat(value.chunk(2, dim=0)[::-1])
            assert dst.shape == value.shape, f"{n}.{part}: {tuple(value.shape)} does not fit {key} {tuple(dst.shape)}"
            with torch.no_grad():
                dst.copy_(value)
        targets[n] = target
    return targets


def compare(dm_fused: dict, patched: dict, targets: dict, label: str) -> int:
    checked = 0
    for n, target in targets.items():
        want = dm_fused[f"{n}.weight"]
        got = patched[target.key]
        got = got if target.rows is None else got[target.rows[0] : target.rows[1]]
        if target.swap_halves:
            got = torch.cat(got.chunk(2, dim=0)[::-1])
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * float(want.abs().max()), msg=f"{label}: {n}")
        checked += 1
    return checked


CONFIGS = {
    "plain": dict(r=RANK, lora_alpha=ALPHA),
    "rslora": dict(r=RANK, lora_alpha=ALPHA, use_rslora=True),  # scale alpha / sqrt(r)
    "dora": dict(r=RANK, lora_alpha=ALPHA, use_dora=True),  # PEFT's lora_magnitude_vector
}


@pytest.mark.parametrize("variant", list(CONFIGS))
@pytest.mark.parametrize("family", list(DIFFUSERS))
def test_loom_applies_a_diffusers_lora_as_diffusers_fuses_it(family, variant, pack, loras):
    if variant == "dora" and family not in ("flux2", "z_image"):
        pytest.skip("DoRA is checked on two families (the magnitude path does not depend on the names)")
    dm = diffusers_model(family)
    cm = comfy_model(family)
    targets = copy_into_comfy(pack, dm, cm)
    config = LoraConfig(target_modules=linear_names(dm), init_lora_weights=False, **CONFIGS[variant])
    path = write_lora(family, loras, config, f"oracle-{family}-{variant}")
    meta = pack.lora_math.formats.io.load_state_dict(path)[1]
    assert f'"transformer.lora_alpha": {ALPHA:g}' in meta["lora_adapter_metadata"].replace(".0,", ",")
    # DoRA: diffusers scales the whole decomposed weight with lora_scale, ComfyUI interpolates from the original;
    # the two agree at strength 1
    strength = 1.0 if variant == "dora" else 0.7
    out = pack.nodes.load.loader.LoomLoraLoader.execute(
        model=cm, clip=None, lora_name=path.name, strength_model=strength, strength_clip=0
    )
    loom_model, _, report = out.result
    assert "unmatched" not in report and f"{len(targets)}/{len(targets)} modules matched" in report, report
    checked = compare(fused(family, path, strength), patched_state(loom_model), targets, f"{family} {variant}")
    assert checked == len(linear_names(dm)) > 10


def test_the_metadata_alpha_scales_the_update(pack, loras):
    """The check above would pass at the wrong scale only if both sides ignored the metadata: show diffusers does
    not (its fused delta doubles with lora_alpha)."""
    dm = diffusers_model("qwen_image")
    names = linear_names(dm)
    base = {k: v.clone() for k, v in dm.state_dict().items()}
    deltas = []
    for alpha in (ALPHA, 2 * ALPHA):
        config = LoraConfig(r=RANK, lora_alpha=alpha, target_modules=names, init_lora_weights=False)
        path = write_lora("qwen_image", loras, config, f"oracle-alpha-{alpha:g}")
        after = fused("qwen_image", path, 1.0)
        deltas.append(after[f"{names[0]}.weight"] - base[f"{names[0]}.weight"])
    torch.testing.assert_close(deltas[1], 2 * deltas[0], rtol=1e-4, atol=1e-6)
    assert (
        json.loads(pack.lora_math.formats.io.load_state_dict(path)[1]["lora_adapter_metadata"])["transformer.r"] == RANK
    )


# --- SD UNet and CLIP text encoder: diffusers' own key styles ----------------------------------------------------

# A small SD1.x-style UNet (one attention level) and CLIP-L-style text encoder, and the ComfyUI config that names it.
SD_UNET = dict(
    block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
)  # fmt: skip
SD_UNET_COMFY = {
    "model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": [1, 1], "transformer_depth": [1, 0],
    "transformer_depth_output": [1, 1, 0, 0], "transformer_depth_middle": 1, "context_dim": 32, "num_heads": 4,
    "in_channels": 4, "out_channels": 4,
}  # fmt: skip


def sd_models(seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(**SD_UNET).eval()
    te = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4,
                                      num_hidden_layers=2, vocab_size=1000, bos_token_id=0, eos_token_id=2)).eval()  # fmt: skip
    return unet, te


def sd_key_map(unet, te) -> dict[str, str]:
    """ComfyUI ModelPatcher key -> diffusers/transformers key, by ComfyUI's own UNet converter (not the pack's):
    the UNet as ``diffusion_model.<LDM>``, CLIP as ComfyUI names it (``clip_l.transformer.text_model.…``; current
    transformers has no ``text_model.`` level)."""
    import comfy.utils

    out = {f"diffusion_model.{ldm}": dif for dif, ldm in comfy.utils.unet_to_diffusers(SD_UNET_COMFY).items()}
    out = {k: v for k, v in out.items() if v in unet.state_dict()}
    out.update({f"clip_l.transformer.text_model.{k}": f"te:{k}" for k in te.state_dict()})
    return out


def write_sd_lora(folder, name: str, kohya: bool = False):
    """The UNet and text-encoder LoRA as ``StableDiffusionPipeline.save_lora_weights`` writes it, or (``kohya``) as
    diffusers' kohya conversion writes the same PEFT layers (``convert_state_dict_to_kohya``)."""
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
    from peft import inject_adapter_in_model

    unet, te = sd_models()
    ucfg = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj", "net.2"],
                      init_lora_weights=False)  # fmt: skip
    tcfg = LoraConfig(r=RANK, lora_alpha=2 * ALPHA, target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1"],
                      init_lora_weights=False)  # fmt: skip
    unet.add_adapter(ucfg)
    te = inject_adapter_in_model(tcfg, te)
    torch.manual_seed(7)
    with torch.no_grad():
        for model in (unet, te):
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(0.1 * torch.randn_like(p))
    if kohya:
        from safetensors.torch import save_file

        layers = {f"unet.{k}": v for k, v in get_peft_model_state_dict(unet).items()}
        layers |= {f"text_encoder.{k}": v for k, v in get_peft_model_state_dict(te).items()}
        state = convert_state_dict_to_kohya(layers)
        path = folder / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        return path
    diffusers.StableDiffusionPipeline.save_lora_weights(
        str(folder / name),
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(te)),
        unet_lora_adapter_metadata=ucfg.to_dict(),
        text_encoder_lora_adapter_metadata=tcfg.to_dict(),
    )
    path = folder / f"{name}.safetensors"
    (folder / name / "pytorch_lora_weights.safetensors").replace(path)
    return path


def sd_fused(path, scale: float) -> dict[str, torch.Tensor]:
    unet, te = sd_models()
    pipe = diffusers.StableDiffusionPipeline(
        vae=None, text_encoder=te, tokenizer=None, unet=unet, scheduler=None, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora(components=["unet", "text_encoder"], lora_scale=scale)
    pipe.unload_lora_weights()
    out = {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}
    out.update({f"te:{k}": v.detach().clone() for k, v in pipe.text_encoder.state_dict().items()})
    return out


@pytest.mark.parametrize("style", ["diffusers", "kohya-conversion"])
def test_sd_unet_and_text_encoder_loras_as_diffusers_writes_and_fuses_them(style, pack, loras):
    """diffusers 0.42: ``unet.….lora.down.weight`` and ``text_encoder.encoder.layers.N.….lora_linear_layer…`` with the
    alpha only in the header (``unet.lora_alpha``: scale 2; ``text_encoder.lora_alpha``: scale 4), and its kohya
    conversion (``lora_te1_encoder_layers_N_…``): every module matched, at diffusers' scale."""
    from lora_loom.lora_math import adapters, formats
    from lora_loom.lora_math.formats.io import load_state_dict
    from lora_loom.lora_math.names import keymap

    path = write_sd_lora(loras, f"oracle-sd-{style}", kohya=style == "kohya-conversion")
    unet, te = sd_models()
    names = sd_key_map(unet, te)
    base = {**unet.state_dict(), **{f"te:{k}": v for k, v in te.state_dict().items()}}
    keys = {k: tuple(base[v].shape) for k, v in names.items()}
    match = keymap.match(formats.parse(*load_state_dict(path)), keys)
    assert not match.unmatched and match.coverage == 1.0, match.unmatched[:5]
    strength = 0.8
    want = sd_fused(path, strength)
    by_key: dict[str, list] = {}
    for p in match.patches:
        by_key.setdefault(p.key, []).append(p)
    for key, patches in by_key.items():
        weight = base[names[key]].clone()
        for p in patches:
            weight = adapters.merged_weight(weight, p.adapter, strength)
        target = want[names[key]]
        torch.testing.assert_close(weight, target, rtol=0, atol=1e-5 * float(target.abs().max()), msg=key)
    unet_keys = sum(k.startswith("diffusion_model.") for k in by_key)
    assert unet_keys >= 10 and len(by_key) - unet_keys == 10  # 2 CLIP layers × (q, k, v, out_proj, fc1)
