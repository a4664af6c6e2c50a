"""Loom Train LoRA as a node on the tiny SD1.5 model: outputs, bad input, interrupt-and-keep, resume."""

import importlib
import types

import comfy.model_management as mm
import pytest
import torch

STEPS = 4


@pytest.fixture(scope="module")
def train_mod(pack):
    return importlib.import_module("lora_loom.nodes.train.train_lora")


def images(n=3, size=(64, 64), seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        im = torch.zeros(1, *size, 3)
        im[..., 0] = 0.9
        im[:, 16:48, 16:48, 2] = 0.7 + 0.2 * torch.rand(32, 32, generator=g)
        out.append(im)
    return out


def run(train_mod, sd15, **over):
    model, clip, vae = sd15
    kw = dict(
        model=model, clip=clip, vae=vae, images=images(), captions="a photo of {trigger}", trigger="loomtok",
        rank=4, alpha=4.0, target="attention", steps=STEPS, learning_rate=1e-3, lr_schedule="constant",
        warmup_steps=0, optimizer="adamw", batch_size=1, resolution=64, seed=0, caption_dropout=0.0,
        noise_offset=0.0, min_snr_gamma=5.0, gradient_checkpointing=False, preview_every=0,
    )  # fmt: skip
    kw.update(over)
    listed = {k: (v if k in ("images", "class_images") else [v]) for k, v in kw.items()}
    with torch.inference_mode():  # as ComfyUI runs nodes
        return train_mod.LoomTrainLora.execute(**listed).result


def test_outputs_model_lora_curve_and_report(train_mod, sd15):
    model, lora, curve, report = run(train_mod, sd15, gradient_checkpointing=True)
    assert lora.step == STEPS and len(lora.loss_history) == STEPS and not lora.interrupted
    assert len(lora.modules) == 56 and all(up.abs().sum() > 0 for _, up in lora.modules.values())
    assert model.get_attachment("lora_loom") is not None  # the loader's merge path
    assert curve.shape == (1, 256, 512, 3)
    assert report.startswith(f"trained {STEPS} steps") and "56/56 modules matched" in report
    assert lora.dataset["num_images"] == 3 and lora.dataset["trigger"] == "loomtok"
    assert len(lora.base["sha256"]) == 64 and lora.base["model_keys"]
    mm.unload_all_models()


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"images": []}, r"^images: no images connected"),
        ({"captions": "one\ntwo"}, r"^captions: 2 lines for 3 images"),
        ({"images": [torch.zeros(1, 0, 64, 3)]}, r"^images: image 1 has zero size"),
        ({"images": [torch.zeros(1, 32, 64, 3)]}, r"^images: .*32×64"),
        ({"rank": 400}, r"^rank: 400 is larger than layer .* allows"),
        ({"class_images": images(1)}, r"^class_prompt: class images need a caption"),
        ({"optimizer": "sgd"}, r"^optimizer: 'sgd' is not one of adamw"),
        ({"lr_schedule": "step"}, r"^lr_schedule"),
    ],
)
def test_bad_input_names_the_input(train_mod, sd15, over, message):
    with pytest.raises(ValueError, match=message):
        run(train_mod, sd15, **over)


def test_unknown_family_and_mismatched_vae(train_mod, sd15):
    model, clip, vae = sd15
    odd = types.SimpleNamespace(model=types.SimpleNamespace(diffusion_model=torch.nn.Linear(2, 2)))
    with pytest.raises(
        ValueError,
        match=r"^model: SimpleNamespace \(unknown\) is not a model family LoRA Loom trains or saves LoRAs for",
    ):
        run(train_mod, sd15, model=odd)

    class WrongVae:  # an encoder for another latent space (16 channels, as FLUX/SD3 VAEs)
        first_stage_model = object()

        def encode(self, pixels):
            return torch.zeros(pixels.shape[0], 16, pixels.shape[1] // 8, pixels.shape[2] // 8)

    with pytest.raises(ValueError, match=r"^vae: it encodes to 16-channel latents, but this sd15 model works on 4"):
        run(train_mod, sd15, vae=WrongVae())


def test_out_of_memory_is_a_clear_error(train_mod, sd15, monkeypatch):
    def oom(run):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train_mod.engine, "train", oom)
    with pytest.raises(ValueError, match=r"^batch_size/resolution: out of GPU memory while training"):
        run(train_mod, sd15)


def test_interrupt_keeps_the_lora_so_far(train_mod, sd15, monkeypatch):
    step = train_mod.Progress.step

    def press_cancel_after_step_2(self, n, loss, factors):
        step(self, n, loss, factors)
        if n == 2:
            mm.interrupt_current_processing(True)  # what ComfyUI's cancel button does

    monkeypatch.setattr(train_mod.Progress, "step", press_cancel_after_step_2)
    model, lora, _, report = run(train_mod, sd15, steps=10)
    assert lora.interrupted and lora.step == 2 and len(lora.loss_history) == 2
    assert report.startswith("interrupted after 2 steps") and model.get_attachment("lora_loom") is not None
    assert not mm.processing_interrupted()  # consumed: the rest of the graph (e.g. Save LoRA) runs
    mm.unload_all_models()


def test_save_then_resume_continues_the_run(train_mod, sd15, tmp_path):
    import folder_paths

    save = importlib.import_module("lora_loom.nodes.files.save_lora").LoomSaveLora
    folder = tmp_path / "loras"
    folder.mkdir()
    folder_paths.add_model_folder_path("loras", str(folder), is_default=True)
    try:
        _, first, _, _ = run(train_mod, sd15, steps=2)
        name, stack = save.execute(lora=first, filename_prefix="resume/first", scope="test").result
        assert [tuple(e) for e in stack] == [(name, 1.0, 1.0)]
        _, resumed, _, report = run(train_mod, sd15, steps=4, resume_from=name)
        assert resumed.step == 4 and len(resumed.loss_history) == 4
        assert resumed.loss_history[:2] == first.loss_history and report.startswith("trained 2 steps (4 in all)")
        with pytest.raises(ValueError, match=r"resume_from"):
            run(train_mod, sd15, steps=4, resume_from="resume/missing.safetensors")
        with pytest.raises(
            ValueError, match=r"resume_from: cannot resume 'loom-tiny-sd15-lora.safetensors'.*Loom Save"
        ):
            run(train_mod, sd15, steps=4, resume_from="loom-tiny-sd15-lora.safetensors")
    finally:
        folder_paths.folder_names_and_paths["loras"][0].remove(str(folder))
        folder_paths.filename_list_cache.pop("loras", None)
        mm.unload_all_models()
