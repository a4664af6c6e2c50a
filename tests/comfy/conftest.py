"""Comfy tier: real comfy.* objects in-process, on the generated small models (CPU)."""

import pytest
from comfy_env import MODELS, import_comfy, load_pack, register_model_folders

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
