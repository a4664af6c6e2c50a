"""Comfy tier: real comfy.* objects in-process, on the generated small models (CPU)."""

import pytest
from comfy_env import MODELS, flux_dit_config, import_comfy, load_pack, register_model_folders

import_comfy(cpu=True)
register_model_folders()

SD15 = MODELS / "checkpoints" / "loom-tiny-sd15.safetensors"
SD15_LORA = "loom-tiny-sd15-lora.safetensors"


@pytest.fixture(scope="session")
def pack():
    return load_pack()


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    """A fresh folder registered as a ComfyUI ``loras`` folder: Loom finds the files there as it finds a user's."""
    import folder_paths

    folder = tmp_path_factory.mktemp("loras")
    folder_paths.add_model_folder_path("loras", str(folder))
    yield folder
    folder_paths.folder_names_and_paths["loras"][0].remove(str(folder))
    folder_paths.filename_list_cache.pop("loras", None)  # later tests must not list these files


@pytest.fixture(scope="session")
def sd15():
    """(model patcher, clip, vae) of the tiny SD1.5 checkpoint, loaded once per session."""
    import comfy.sd

    if not SD15.exists():
        pytest.fail(f"{SD15} is missing: run `make models`")
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(SD15), output_vae=True, output_clip=True)
    # SD1.5 files carry no CLIP text projection and ComfyUI leaves that (unused) weight uninitialised:
    # memory that may hold NaN would make bit-equality checks of the CLIP weights flaky.
    import torch

    with torch.no_grad():
        clip.patcher.model.clip_l.transformer.text_projection.weight.copy_(torch.eye(768))
    return model, clip, vae


@pytest.fixture()
def model(sd15):
    """The session's SD1.5 model patcher with nothing loaded before or after the test (weights back to the base)."""
    import comfy.model_management as mm

    mm.unload_all_models()
    yield sd15[0]
    mm.unload_all_models()


def patched_state(patcher) -> dict:
    """The weights a patcher produces when loaded, as a plain state dict (then unpatched again)."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher], force_full_load=True)
    sd = {k: v.detach().clone() for k, v in patcher.model.state_dict().items()}
    patcher.unpatch_model()
    return sd


def as_dynamic(patcher):
    """``patcher`` as upstream's dynamic-VRAM patcher presents itself (``is_dynamic()`` True). On a CPU upstream's
    ``ModelPatcherDynamic`` returns a plain ModelPatcher, so tests take the dynamic paths this way and drive
    upstream's per-weight patch protocol (``LowVramPatch``) themselves."""
    from comfy.model_patcher import ModelPatcher

    class DynamicPatcher(ModelPatcher):
        def is_dynamic(self):
            return True

    patcher.__class__ = DynamicPatcher
    return patcher


# A small FLUX.1-dev-shaped DiT (guidance embedding, double + single blocks), 16 latent channels, 2×2 patches.
FLUX_CONFIG = {
    "image_model": "flux",
    "in_channels": 16,
    "out_channels": 16,
    "vec_in_dim": 64,
    "context_in_dim": 64,
    "hidden_size": 128,
    "mlp_ratio": 4.0,
    "num_heads": 2,
    "depth": 1,
    "depth_single_blocks": 1,
    "axes_dim": [16, 24, 24],
    "theta": 10000,
    "patch_size": 2,
    "qkv_bias": True,
    "guidance_embed": True,
}


def tiny_flux(seed: int, dtype=None):
    """ComfyUI's own Flux BaseModel from its model config, weights seeded (ComfyUI's ops leave them uninitialised)."""
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    config = comfy.supported_models.Flux(flux_dit_config(FLUX_CONFIG))
    config.set_inference_dtype(dtype or torch.float32, None)
    base = config.get_model({})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in base.diffusion_model.named_parameters():
            if name.endswith(".scale"):  # RMSNorm scales
                p.fill_(1.0)
            elif p.ndim == 1:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(base, load_device=cpu, offload_device=cpu)
