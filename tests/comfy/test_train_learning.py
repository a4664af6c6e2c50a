"""Learning for real (issue 5, "Must show"): the trainer learns a synthetic concept, on CPU, on real ComfyUI models.

A concept ("a photo of loomtok"): 64×64 images of a saturated orange disk in a cyan ring on a deep-blue ground, with
random position, size and tint. Class images ("a photo of a shape"): grey, noise-textured squares on grey. Every
measure is taken on *held-out* images (drawn from the same generators, never trained on), against the untrained model:

- held-out denoising loss: fixed noise, a fixed grid of schedule positions, through ``model.model.apply_model`` and the
  engine's own objective (``lora_math.train.objective.denoising_loss``, as ``nodes/train/engine.py`` trains on), with the
  trained LoRA merged into a clone by ComfyUI core's own LoRA weight adapter (``W + alpha/rank · up @ down``);
- prior preservation (class images + class prompt, prior_weight 1): the held-out class loss stays within a margin;
- generation: ComfyUI's sampler (``comfy.sample.sample``, same noise and seed, trained vs untrained), measured in
  latent space: the distance of each sample's per-channel mean to the held-out images' mean latent.

Two families, each with its real ComfyUI denoiser:

- SD1.5-class: the ``sd15`` fixture (tiny SD1.5 UNet, CLIP-L and VAE with seeded random weights). With random
  weights the VAE's latents are small (std ≈ 0.08 after the latent scale) and the two prompts' CLIP embeddings are
  nearly identical (cosine ≈ 0.98), so what the LoRA learns first is mostly prompt-independent: the class loss falls
  too, and the sampler's outputs (per-channel means ~90 away from the data's, whose own are within ±0.3) move toward
  the concept's statistics whatever the prompt. The SD1.5 measures show that it learns the data, not that the
  trigger alone carries it.
- FLUX-class: a small DiT built from ComfyUI's own ``Flux`` classes (``supported_models.Flux`` → ``model_base.Flux``),
  with encoder stand-ins (a linear pooling "VAE" and a per-word hashing "text encoder", below) whose latents and
  embeddings carry the concept at unit scale. There the prompt matters, and prior preservation is also measured on
  generations: with it, class-prompt samples stay near the class statistics; without it they drift to the concept.

Margins were checked with two seeds. The SD1.5 runs use seed 0 (``LOOM_LEARNING_SEED=1`` runs the other); the FLUX
runs, which are cheap, run both. Measured (seed 0 / seed 1), as ratios to the untrained model:
SD1.5 held-out concept loss 0.757 / 0.746 (prior on: 0.736 / 0.704), held-out class loss with prior 0.747 / 0.713,
trigger generation distance 0.536 / 0.565; FLUX concept loss 0.549 / 0.547 (prior on: 0.555 / 0.551), class loss with
prior 0.527 / 0.542, trigger generation distance 0.596 / 0.369, class-prompt generation distance with prior / without
0.54 / 0.58.
"""

import importlib
import os
import zlib

import comfy.model_management as mm
import comfy.model_patcher
import comfy.sample
import comfy.supported_models
import pytest
import torch
from comfy.weight_adapter.lora import LoRAAdapter
from conftest import tiny_flux

CONCEPT, CLASS = "a photo of loomtok", "a photo of a shape"
# The SD1.5 runs take most of this file's minute and exercise nothing that differs between ComfyUI versions (the
# trainer's ComfyUI side is the same calls as the FLUX runs, which run on both): `make test` runs them on 0.3.75.
SD15_ONCE = pytest.mark.pinned_only
N_TRAIN, N_HELD, N_CLASS, N_CLASS_HELD = 10, 4, 6, 4
GRID = (0.1, 0.3, 0.5, 0.7, 0.9)  # schedule positions of the held-out loss (0 = clean end, 1 = pure noise)
NOISE_DRAWS = 1  # fixed noise draws per held-out image and grid position
SD15_SEED = int(os.environ.get("LOOM_LEARNING_SEED", "0"))
SD15_SAMPLING = {"channels": 4, "cfg": 4.0, "scheduler": "normal", "steps": 8}
FLUX_SAMPLING = {"channels": 16, "cfg": 1.0, "scheduler": "simple", "steps": 12, "guidance": 1.0}  # distilled guidance

# Margins (ratios to the untrained model's value; measured values in the module docstring).
SD15_CONCEPT_MAX = 0.85  # held-out concept loss at least 15% lower
SD15_GENERATION_MAX = 0.75  # trigger samples' distance to the concept statistics at least 25% smaller
FLUX_CONCEPT_MAX = 0.75  # at least 25% lower
FLUX_GENERATION_MAX = 0.75
FLUX_DRIFT_MAX = 0.75  # class-prompt samples' distance to the class statistics, prior on vs off
CLASS_MAX = 1.10  # prior preservation: held-out class loss at most 10% above the untrained model's


# --- data ----------------------------------------------------------------------------------------------------------


def concept_image(g: torch.Generator) -> torch.Tensor:
    """An orange disk in a cyan ring on deep blue; position ±6 px, radius 11–17 px, tint jittered. [64, 64, 3]."""
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    cy, cx = (32 + torch.randint(-6, 7, (2,), generator=g)).float().tolist()
    r = 14 + float(torch.randint(-3, 4, (1,), generator=g))
    d = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
    image = torch.empty(64, 64, 3)
    image[:] = torch.tensor([0.05, 0.1, 0.55]) + 0.05 * torch.rand(3, generator=g)
    image[d < r] = torch.tensor([1.0, 0.45, 0.0]) + torch.tensor([0.0, 0.1, 0.0]) * torch.rand(1, generator=g)
    image[(d >= r) & (d < r + 4)] = torch.tensor([0.0, 0.9, 0.9])
    return image.clamp(0, 1)


def class_image(g: torch.Generator) -> torch.Tensor:
    """A darker grey noise-textured square (16–29 px) somewhere on a grey noise-textured ground. [64, 64, 3]."""
    image = (0.5 + 0.08 * torch.randn(64, 64, 1, generator=g)).expand(64, 64, 3).clone()
    y, x = torch.randint(4, 30, (2,), generator=g).tolist()
    s = int(torch.randint(16, 30, (1,), generator=g))
    image[y : y + s, x : x + s] = 0.25 + 0.1 * torch.randn(s, s, 1, generator=g)
    return image.clamp(0, 1)


def datasets(training, model, clip, vae, arch: str, seed: int) -> dict:
    """Training, held-out and class items (prepared by the engine: bucketed, VAE- and text-encoded once)."""
    g = torch.Generator().manual_seed(100 + seed)
    images = {
        "train": [concept_image(g) for _ in range(N_TRAIN)],
        "held": [concept_image(g) for _ in range(N_HELD)],
        "class": [class_image(g) for _ in range(N_CLASS)],
        "class_held": [class_image(g) for _ in range(N_CLASS_HELD)],
    }
    with torch.inference_mode(False):
        return {
            name: training.prepare(
                ims, [CLASS if name.startswith("class") else CONCEPT] * len(ims), model, clip, vae, 64, arch
            )
            for name, ims in images.items()
        }


# --- measuring -----------------------------------------------------------------------------------------------------


def with_lora(patcher, lora):
    """A clone of the patcher with the trained LoRA merged as ComfyUI core merges a LoRA file's factors."""
    out = patcher.clone()
    patches = {
        key: LoRAAdapter(set(), (up, down, lora.alpha, None, None, None)) for key, (down, up) in lora.modules.items()
    }
    assert len(out.add_patches(patches)) == len(patches)
    return out


@torch.no_grad()
def held_out_loss(training, patcher, items, prediction: str, min_snr_gamma: float | None) -> float:
    """Mean denoising loss over fixed noise × the fixed grid, weighted as the engine's objective weights it."""
    from lora_loom.lora_math.train.objective import denoising_loss

    mm.load_models_gpu([patcher], force_full_load=True)
    base = patcher.model
    sampling = base.model_sampling
    x0 = torch.cat([item.latent for item in items])
    extra = training.batch_conds([item.conds for item in items], torch.device("cpu"))
    g = torch.Generator().manual_seed(1234)
    losses = []
    for _ in range(NOISE_DRAWS):
        noise = torch.randn(x0.shape, generator=g)
        for t in GRID:
            sigma = float(sampling.percent_to_sigma(1.0 - t))
            sigma = torch.full((x0.shape[0],), sigma).clamp(float(sampling.sigma_min), float(sampling.sigma_max))
            x = sampling.noise_scaling(sigma.view(-1, 1, 1, 1), noise, x0)
            denoised = base.apply_model(x, sigma, **extra)
            losses.append(float(denoising_loss(denoised, x0, sigma, prediction, min_snr_gamma)))
    return sum(losses) / len(losses)


def generate(patcher, clip, prompt: str, channels: int, cfg: float, scheduler: str, steps: int, guidance=None):
    """4 samples at 64×64 through ComfyUI's sampler (euler, fixed seed); latents as the sampler returns them."""
    extra = {"guidance": guidance} if guidance is not None else {}
    (cond, cond_extra), *_ = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
    (empty, empty_extra), *_ = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    positive, negative = [[cond, dict(cond_extra) | extra]], [[empty, dict(empty_extra) | extra]]
    latent = torch.zeros(4, channels, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 7)
    return comfy.sample.sample(
        patcher, noise, steps, cfg, "euler", scheduler, positive, negative, latent, seed=7, disable_pbar=True
    )


def distance(samples: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over samples of ‖per-channel mean of the sample − target per-channel mean‖."""
    return float((samples.mean(dim=(2, 3)) - target).norm(dim=1).mean())


def mean_latent(base, items) -> torch.Tensor:
    """The items' per-channel mean latent, in the sampler's output space (VAE latents)."""
    return base.process_latent_out(torch.cat([item.latent for item in items])).mean(dim=(0, 2, 3))


def learn(training, model, clip, vae, settings, sample_kw: dict, all_generations: bool) -> dict:
    """Train without and with prior preservation; the measures of the trained and untrained model, and their ratios.

    all_generations: also sample the class prompt, and the prior-preservation run (else only the trigger, trained
    without prior: what the SD1.5 tests assert on, sampling being the costly part on the CPU).
    """
    arch, prediction = training.family(model.model)
    data = datasets(training, model, clip, vae, arch, settings.seed)
    gamma = settings.min_snr_gamma or None
    means = {CONCEPT: mean_latent(model.model, data["held"]), CLASS: mean_latent(model.model, data["class_held"])}
    prompts = {"generation": CONCEPT} | ({"class_generation": CLASS} if all_generations else {})

    def measure(patcher, generations: bool) -> dict:
        out = {
            "concept": held_out_loss(training, patcher, data["held"], prediction, gamma),
            "class": held_out_loss(training, patcher, data["class_held"], prediction, gamma),
        }
        for key, prompt in prompts.items() if generations else ():
            out[key] = distance(generate(patcher, clip, prompt, **sample_kw), means[prompt])
        return out

    results = {"untrained": measure(model, True)}
    for name, class_items in (("trained", []), ("prior", data["class"])):
        mm.load_models_gpu([model], force_full_load=True)  # train on the base weights, as the node does
        lora = training.train(training.Run(model, data["train"], class_items, settings, arch, prediction))
        assert lora.step == settings.steps and not lora.interrupted
        r = results[name] = measure(with_lora(model, lora), all_generations or name == "trained")
        r |= {f"{key}_ratio": r[key] / results["untrained"][key] for key in list(r)}
        r["train_loss"] = (sum(lora.loss_history[:5]) / 5, sum(lora.loss_history[-5:]) / 5)
    mm.unload_all_models()  # every clone's patches leave the shared weights
    print(f"\n{arch} seed {settings.seed}: " + "; ".join(f"{k}: {v}" for k, v in results.items()))
    return results


@pytest.fixture(scope="module")
def training(pack):
    return importlib.import_module("lora_loom.nodes.train.engine")


# --- SD1.5-class ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd15_learning(training, sd15):
    model, clip, vae = sd15
    settings = training.Settings(
        rank=4, alpha=4, steps=40, learning_rate=1e-3, batch_size=2, resolution=64, seed=SD15_SEED
    )
    return learn(training, model, clip, vae, settings, SD15_SAMPLING, all_generations=False)


@SD15_ONCE
def test_sd15_held_out_concept_loss_drops(sd15_learning):
    r = sd15_learning["trained"]
    assert r["train_loss"][1] < r["train_loss"][0]
    assert r["concept_ratio"] <= SD15_CONCEPT_MAX, r


@SD15_ONCE
def test_sd15_prior_preservation_keeps_class_loss_while_learning(sd15_learning):
    r = sd15_learning["prior"]
    assert r["class_ratio"] <= CLASS_MAX, r
    assert r["concept_ratio"] <= SD15_CONCEPT_MAX, r


@SD15_ONCE
def test_sd15_trigger_generations_move_toward_the_concept(sd15_learning):
    r = sd15_learning["trained"]
    assert r["generation_ratio"] <= SD15_GENERATION_MAX, (r, sd15_learning["untrained"])


# --- FLUX-class ----------------------------------------------------------------------------------------------------


class PoolingVAE:
    """Encoder stand-in (the DiT is the real ComfyUI class): 8×8 average pooling of the image in [-1, 1], then a fixed
    random 3 → 16 projection, plus FLUX's latent shift so a mid-grey image is latent zero for the model. Decode is the
    projection's pseudo-inverse, upsampled. Deterministic; ``first_stage_model`` is what the engine keys its cache on.
    """

    def __init__(self, seed: int = 0, gain: float = 2.5) -> None:
        self.first_stage_model = torch.nn.Module()
        self.projection = torch.randn(16, 3, generator=torch.Generator().manual_seed(seed)) * gain / 3**0.5
        self.shift = 0.1159  # comfy.latent_formats.Flux.shift_factor

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.avg_pool2d(pixels[..., :3].movedim(-1, 1) * 2 - 1, 8)
        return torch.einsum("oc,nchw->nohw", self.projection, x) + self.shift

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        x = torch.einsum("co,nohw->nchw", torch.linalg.pinv(self.projection), latent - self.shift)
        return ((torch.nn.functional.interpolate(x, scale_factor=8, mode="nearest") + 1) / 2).clamp(0, 1).movedim(1, -1)


class HashingCLIP:
    """Text encoder stand-in: one fixed random 64-vector per word (seeded by its CRC32), 8 token slots padded with a
    fixed vector, pooled output = mean of the word vectors. Deterministic per text; prompts that share words share
    embeddings, so "loomtok" is what tells the concept prompt from the class prompt."""

    def __init__(self, dim: int = 64, length: int = 8) -> None:
        self.cond_stage_model = torch.nn.Module()
        self.dim, self.length = dim, length

    def _vector(self, word: str) -> torch.Tensor:
        return torch.randn(self.dim, generator=torch.Generator().manual_seed(zlib.crc32(word.encode())))

    def tokenize(self, text: str) -> list[str]:
        return text.lower().split()[: self.length]

    def encode_from_tokens_scheduled(self, tokens: list[str]):
        words = [self._vector(w) for w in tokens]
        pad = self._vector("<pad>")
        cond = torch.stack(words + [pad] * (self.length - len(words)))[None]
        pooled = (torch.stack(words).mean(0) if words else pad)[None]
        return [[cond, {"pooled_output": pooled}]]


# One pair of encoder stand-ins for the module: the engine caches latents and embeddings by id() of these objects.
FLUX_VAE, FLUX_CLIP = PoolingVAE(), HashingCLIP()


@pytest.fixture(scope="module", params=[0, 1], ids=["seed0", "seed1"])
def flux_learning(training, request):
    seed = request.param
    settings = training.Settings(rank=4, alpha=4, steps=200, learning_rate=1e-3, batch_size=2, resolution=64, seed=seed)
    return learn(training, tiny_flux(seed), FLUX_CLIP, FLUX_VAE, settings, FLUX_SAMPLING, all_generations=True)


def test_flux_is_a_flow_model_to_the_trainer(training):
    assert training.family(tiny_flux(0).model) == ("flux", "flow")


def test_flux_held_out_concept_loss_drops(flux_learning):
    r = flux_learning["trained"]
    assert r["train_loss"][1] < r["train_loss"][0]
    assert r["concept_ratio"] <= FLUX_CONCEPT_MAX, r


def test_flux_prior_preservation_keeps_class_loss_while_learning(flux_learning):
    r = flux_learning["prior"]
    assert r["class_ratio"] <= CLASS_MAX, r
    assert r["concept_ratio"] <= FLUX_CONCEPT_MAX, r


def test_flux_trigger_generations_move_toward_the_concept(flux_learning):
    r = flux_learning["trained"]
    assert r["generation_ratio"] <= FLUX_GENERATION_MAX, (r, flux_learning["untrained"])


def test_flux_prior_preservation_keeps_class_prompt_generations(flux_learning):
    # Without prior preservation the class prompt's samples drift toward the concept (language drift); with it, they
    # stay markedly closer to the class images' statistics.
    with_prior, without = flux_learning["prior"]["class_generation"], flux_learning["trained"]["class_generation"]
    assert with_prior <= FLUX_DRIFT_MAX * without, flux_learning
