"""Loom Train LoRA: train a LoRA on the MODEL already in the graph, from images and captions in the graph."""

from __future__ import annotations

import logging
import time
import weakref

import comfy.model_management
import torch
from comfy_api.latest import io

from ...lora_math import formats
from ...lora_math import save as lora_save
from ...lora_math.save import provenance
from ...lora_math.train import LoomLoRA
from ...lora_math.train.loop import Settings
from ...lora_math.train.lr import LR_SCHEDULES
from .. import comfy_bridge
from ..files import lora_files
from ..images import curves
from . import engine
from .progress import Progress

log = logging.getLogger("lora_loom")
OPTIMIZERS = ("adamw",)


def _first(value, default=None):
    """The node takes lists (images of any size arrive as a list); scalar inputs are their first item."""
    if isinstance(value, list):
        return value[0] if value else default
    return default if value is None else value


def _images(batches, name: str) -> list[torch.Tensor]:
    out = []
    for batch in batches or []:
        if batch is None:
            continue
        for image in batch if batch.ndim == 4 else [batch]:
            if image.shape[0] == 0 or image.shape[1] == 0:
                raise ValueError(f"{name}: image {len(out) + 1} has zero size ({tuple(image.shape[:2])})")
            out.append(image)
    return out


def captions_for(text: str, count: int, trigger: str, name: str = "captions") -> list[str]:
    """One caption per image: one line per image, or one line (a template) for all; ``{trigger}`` substituted."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        lines = ["{trigger}" if trigger else ""]
    if len(lines) == 1:
        lines = lines * count
    elif len(lines) != count:
        raise ValueError(
            f"{name}: {len(lines)} lines for {count} images; give one caption per image (one per line) or a single "
            "line used for all"
        )
    return [line.replace("{trigger}", trigger) for line in lines]


_base_hashes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # BaseModel -> sha256; dies with the model


def base_model_sha256(model) -> str:
    """sha256 of the diffusion model's weights as loaded, once per model object."""
    digest = _base_hashes.get(model.model)
    if digest is None:
        digest = _base_hashes[model.model] = provenance.weights_sha256(model.model.diffusion_model.state_dict())
    return digest


def apply_trained(model, lora: LoomLoRA):
    """The trained LoRA on the model through the loader's own patch path (same file as Save LoRA writes)."""
    keys = list(model.model.state_dict())
    names = lora_save.kohya_names(list(lora.modules), lora.arch, keys)
    state = lora_save.to_state_dict(lora, names, dtype=torch.float32)
    parsed = formats.parse(state, {})
    new_model, _, reports = comfy_bridge.apply_stack(
        model, None, [comfy_bridge.LoraSpec("trained LoRA", parsed, 1.0, 0.0)]
    )
    return new_model, reports[0]


SETTINGS = (
    "rank", "alpha", "target", "steps", "learning_rate", "lr_schedule", "warmup_steps", "optimizer", "batch_size",
    "resolution", "seed", "caption_dropout", "noise_offset", "min_snr_gamma", "gradient_checkpointing", "preview_every",
    "compile",
)  # fmt: skip


def settings_from(kw: dict) -> Settings:
    """The run's settings from the node's inputs (lists or scalars); ValueError names a bad one."""
    settings = Settings(
        **{k: _first(kw[k]) for k in SETTINGS if k in kw}, prior_weight=_first(kw.get("prior_weight"), 1.0)
    )
    if settings.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: {settings.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    comfy_bridge.compiled.check_mode(settings.compile)
    return settings


def _class_images(kw: dict) -> tuple[list[torch.Tensor], str]:
    class_images = _images(kw.get("class_images"), "class_images")
    class_prompt = _first(kw.get("class_prompt"), "") or ""
    if class_images and not class_prompt.strip():
        raise ValueError("class_prompt: class images need a caption (e.g. 'a photo of a dog')")
    return class_images, class_prompt


def _prepare(model, clip, vae, images, captions, class_images, class_prompt: str, settings: Settings, arch: str):
    """(items, class_items): every image encoded once, on the model's device, outside inference mode."""
    with torch.inference_mode(False):
        comfy.model_management.load_models_gpu([model], force_full_load=True)
        items = engine.prepare(images, captions, model, clip, vae, settings.resolution, arch)
        class_captions = [class_prompt] * len(class_images)
        class_items = engine.prepare(class_images, class_captions, model, clip, vae, settings.resolution, arch)
        if settings.caption_dropout > 0:
            engine.caption_variants(items, model.model, clip, True)
    return items, class_items


def _train(run: engine.Run) -> LoomLoRA:
    """The engine's run, with its wall-clock times in the settings; running out of memory names what to lower."""
    started_at = time.time()
    try:
        lora = engine.train(run)
    except torch.OutOfMemoryError as e:
        raise ValueError(
            "batch_size/resolution: out of GPU memory while training; lower batch_size or resolution, or turn on "
            f"gradient_checkpointing ({e})"
        ) from None
    lora.settings = {**lora.settings, "started_at": started_at, "finished_at": time.time()}
    return lora


class LoomTrainLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoomTrainLora",
            display_name="Loom Train LoRA",
            category="loom/train",
            is_input_list=True,
            description=(
                "Train a LoRA on the attention layers of the MODEL in the graph, from images and captions, on the GPU. "
                "Outputs the model with the LoRA applied, the LoRA (save it with Loom Save LoRA) and the loss curve. "
                "Interrupting keeps the LoRA so far."
            ),
            inputs=[
                io.Model.Input("model"),
                io.Clip.Input("clip"),
                io.Vae.Input("vae"),
                io.Image.Input("images", tooltip="Training images, any sizes (a list of images, or batches)."),
                io.String.Input(
                    "captions",
                    multiline=True,
                    default="a photo of {trigger}",
                    tooltip="One caption per image (one per line), or one line for all; {trigger} becomes the trigger.",
                ),
                io.String.Input("trigger", default="loomtok", tooltip="The trigger word the LoRA learns."),
                io.Int.Input("rank", default=16, min=1, max=256),
                io.Float.Input("alpha", default=16.0, min=0.01, max=1024.0, step=0.01),
                io.Combo.Input("target", options=list(engine.TARGETS), default="attention"),
                io.Int.Input("steps", default=500, min=1, max=100000),
                io.Float.Input("learning_rate", default=1e-4, min=1e-7, max=1.0, step=1e-6),
                io.Combo.Input("lr_schedule", options=list(LR_SCHEDULES), default="constant"),
                io.Int.Input("warmup_steps", default=0, min=0, max=100000),
                io.Combo.Input("optimizer", options=list(OPTIMIZERS), default="adamw"),
                io.Int.Input("batch_size", default=1, min=1, max=64),
                io.Int.Input("resolution", default=512, min=64, max=4096, step=64),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, control_after_generate=True),
                io.Float.Input("caption_dropout", default=0.0, min=0.0, max=1.0, step=0.01),
                io.Float.Input("noise_offset", default=0.0, min=0.0, max=1.0, step=0.01),
                io.Float.Input("min_snr_gamma", default=5.0, min=0.0, max=100.0, step=0.1, tooltip="0 turns it off."),
                io.Boolean.Input("gradient_checkpointing", default=False),
                io.Int.Input("preview_every", default=0, min=0, max=100000, tooltip="0: no previews."),
                io.Image.Input("class_images", optional=True, tooltip="Prior preservation (DreamBooth) images."),
                io.String.Input("class_prompt", optional=True, default="", tooltip="Caption of the class images."),
                io.Float.Input("prior_weight", optional=True, default=1.0, min=0.0, max=10.0, step=0.05),
                io.Combo.Input(
                    "resume_from",
                    optional=True,
                    options=["none", *lora_files.lora_names()],
                    default="none",
                    tooltip="Continue a LoRA saved by Loom Save LoRA (with its optimizer state).",
                ),
                # last: saved workflows map widget values by position, so a new input goes after the old ones
                io.Combo.Input(
                    "compile",
                    options=list(comfy_bridge.compiled.COMPILE_MODES),
                    default="off",
                    optional=True,
                    tooltip="torch.compile the model for the run: fewer, fused kernels on a GPU (max-autotune adds "
                    "CUDA graphs). Each image size compiles once (a minute or more), so it pays on long runs.",
                ),
            ],
            outputs=[
                io.Model.Output(tooltip="The model with the trained LoRA applied."),
                io.Custom("LOOM_LORA").Output("lora", display_name="lora", tooltip="Save it with Loom Save LoRA."),
                io.Image.Output("loss_curve", display_name="loss_curve"),
                io.String.Output("report", display_name="report"),
            ],
        )

    @classmethod
    def validate_inputs(cls, resume_from: list | str | None = None) -> bool | str:
        name = _first(resume_from, "none")
        return True if name in (None, "none") else lora_files.validate(name, "resume_from")

    @classmethod
    def execute(cls, **kw) -> io.NodeOutput:
        model, clip, vae = _first(kw["model"]), _first(kw["clip"]), _first(kw["vae"])
        images = _images(kw.get("images"), "images")
        if not images:
            raise ValueError("images: no images connected; give the trainer at least one image")
        trigger = _first(kw.get("trigger"), "")
        captions = captions_for(_first(kw.get("captions"), ""), len(images), trigger)
        settings = settings_from(kw)
        arch, prediction = engine.family(model.model)
        class_images, class_prompt = _class_images(kw)
        resume = _resume(_first(kw.get("resume_from"), "none"))
        t0 = time.perf_counter()
        items, class_items = _prepare(model, clip, vae, images, captions, class_images, class_prompt, settings, arch)
        prep_s, t1 = time.perf_counter() - t0, time.perf_counter()
        progress = Progress(settings, model, clip, vae, items[0], captions[0])
        lora = _train(engine.Run(model, items, class_items, settings, arch, prediction, resume, on_step=progress.step))
        train_s = time.perf_counter() - t1
        lora.dataset = provenance.dataset_record(
            images, captions, trigger=trigger, class_prompt=class_prompt, num_class_images=len(class_images),
            resolution=settings.resolution,
        )  # fmt: skip
        lora.base = provenance.base_record(base_model_sha256(model), model.model.state_dict(), arch, prediction)
        new_model, report = apply_trained(model, lora)
        layers = len(engine.target_modules(model.model, arch, settings.target))
        text = provenance.train_report(lora, resume.step if resume else 0, layers, train_s, prep_s) + report.summary()
        log.info("[LoRA Loom] %s", text)
        return io.NodeOutput(new_model, lora, curves.loss_image(lora.loss_history), text)


def _resume(name: str) -> LoomLoRA | None:
    if not name or name == "none":
        return None
    path = lora_files.resolve(name, "resume_from")
    try:
        return lora_save.load_trained(path)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(
            f"resume_from: cannot resume {name!r}: {e}; only LoRAs saved by Loom Save LoRA (with the "
            f"{lora_save.STATE_SUFFIX} file beside them) can be resumed"
        ) from None
