"""Soak: 100 prompts with random LoRA stacks through one server — all finish, memory stays flat, base intact."""

import hashlib
import random

from PIL import Image

POOL = ["loom-tiny-sd15-lora.safetensors", "loom-tiny-sd15-lora-b.safetensors", "loom-tiny-sd15-loha.safetensors"]
PROMPTS = 100


def build_prompt(stack: list[tuple[str, float, float]], seed: int = 7) -> dict:
    """txt2img on the tiny SD1.5 with a chain of Loom LoRA Loaders (empty chain: the base model).

    The soak is about LoRA patching, not image quality, so each prompt is as cheap as a full pipeline gets: one
    text encode (also used as the negative), one euler step at cfg 1 (one UNet call: ComfyUI skips the negative at
    cfg 1) on a 32×32 image. Every prompt still loads the patched CLIP and UNet (each stack is merged into the
    shared base weights and taken out again), decodes and saves an image. Per prompt that is about half the time of
    2 steps at cfg 4 and 64×64, and as sensitive: a model strength of 1e-4 left behind already changes the
    base image's pixels.
    """
    p = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "loom-tiny-sd15.safetensors"}}}
    model, clip = ["ckpt", 0], ["ckpt", 1]
    for i, (name, sm, sc) in enumerate(stack):
        p[f"lora{i}"] = {
            "class_type": "LoomLoraLoader",
            "inputs": {"model": model, "clip": clip, "lora_name": name, "strength_model": sm, "strength_clip": sc},
        }
        model, clip = [f"lora{i}", 0], [f"lora{i}", 1]
    p["pos"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": "a loomstyle lighthouse"}}
    p["latent"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}}
    p["sample"] = {
        "class_type": "KSampler",
        "inputs": {
            "model": model, "positive": ["pos", 0], "negative": ["pos", 0], "latent_image": ["latent", 0],
            "seed": seed, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
        },
    }  # fmt: skip
    p["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}}
    p["save"] = {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "loom_soak/img"}}
    return p


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def pixels(path) -> str:
    with Image.open(path) as img:
        return hashlib.sha256(img.tobytes()).hexdigest()


def test_random_stacks_soak(server):
    rng = random.Random(1234)
    base_before = pixels(server.run_prompt(build_prompt([]))["images"][0])
    rss = {}
    for i in range(1, PROMPTS + 1):
        stack = [
            (rng.choice(POOL), round(rng.uniform(-1.0, 1.5), 2), round(rng.uniform(0.0, 1.0), 2))
            for _ in range(rng.randint(0, 3))
        ]
        result = server.run_prompt(build_prompt(stack, seed=rng.randint(0, 2**31)), timeout=300)
        assert result["images"], f"prompt {i} with {stack} produced no image"
        if i in (10, PROMPTS):
            rss[i] = rss_kib(server.proc.pid)
    assert rss[PROMPTS] <= rss[10] * 1.10, f"server RSS grew from {rss[10]} KiB to {rss[PROMPTS]} KiB"
    # The base model renders bit-identically after 100 stacks: its weights were restored exactly.
    after = server.run_prompt(build_prompt([]))
    assert after["progress"], "the base prompt came from ComfyUI's cache: the sampler did not run again"
    assert pixels(after["images"][0]) == base_before
