"""The world model's file format: thin parts written as a full-size SD1.5 checkpoint that ComfyUI's own loader
detects as SD1.5 and runs to the same numbers as the thin parts (scripts/world/padded.py explains why it can).

Random thin parts (norm gains and biases perturbed, so the padded norms are exercised), fp32 end to end.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from world import files, models, padded  # noqa: E402

TOL = 5e-5  # fp32, the same maths in another association (padded norms, attention over zero channels)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import comfy.sd

    torch.manual_seed(0)
    vae, unet, text = models.thin_vae(), models.thin_unet(), models.TextEmbedding(seed=3)
    with torch.no_grad():
        for module in (*vae.modules(), *unet.modules()):
            if isinstance(module, (padded.PaddedGroupNorm, padded.PaddedLayerNorm)) and module.weight is not None:
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
            elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and not module.weight.any():
                module.weight.normal_(std=0.02)  # the zero-initialised residual branches, so they count
    folder = tmp_path_factory.mktemp("world")
    ids = models.tokenize(["a large red circle at the top left on a striped white background"])
    files.save_thin(folder / "thin.safetensors", vae, unet, text, ids.flatten().tolist(), 3, {"test": True})
    files.write_checkpoint(folder / "thin.safetensors", folder / "world.safetensors", dtype=torch.float32)
    loaded = comfy.sd.load_checkpoint_guess_config(str(folder / "world.safetensors"), output_vae=True, output_clip=True)
    thin = files.load_thin(folder / "thin.safetensors")  # fp16 on disk: compare against what was written
    return thin, loaded


def test_comfyui_detects_sd15(world):
    _, (model, clip, vae, _) = world
    assert type(model.model.model_config).__name__ == "SD15"
    assert model.model.diffusion_model.model_channels == 320 and vae.latent_channels == 4


def test_vae_encodes_and_decodes_as_the_thin_one(world):
    (vae, _, _), (_, _, comfy_vae, _) = world
    image = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        thin_latent = vae.encode(image.movedim(-1, 1) * 2 - 1)
        torch.testing.assert_close(comfy_vae.encode(image).float(), thin_latent, rtol=0, atol=TOL * 10)
        thin_pixels = ((vae.decode(thin_latent) + 1) / 2).clamp(0, 1).movedim(1, -1)
        torch.testing.assert_close(comfy_vae.decode(thin_latent).float(), thin_pixels, rtol=0, atol=TOL * 10)


def test_unet_predicts_as_the_thin_one(world):
    (_, unet, _), (model, _, _, _) = world
    g = torch.Generator().manual_seed(2)
    x, context = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 768, generator=g)
    t = torch.tensor([10.0, 700.0])
    with torch.no_grad():
        full = model.model.diffusion_model.float()(x, t, context=context)
        thin = unet(x, t, context=context)
    assert thin.abs().max() > 0.1  # not a trivially zero network
    torch.testing.assert_close(full, thin, rtol=0, atol=TOL * float(thin.abs().max()))


def test_clip_embeds_as_the_closed_form(world):
    (_, _, text), (_, clip, _, _) = world
    caption = "a large red circle at the top left on a striped white background"
    with torch.no_grad():
        full = clip.encode_from_tokens(clip.tokenize(caption))[0].float()
        thin = text(models.tokenize([caption]))[0]
    torch.testing.assert_close(full, thin, rtol=0, atol=2e-3 * float(thin.abs().max()))  # ComfyUI's CLIP: fp16
