"""The trainer's progress in the UI: ComfyUI's progress bar, the loss as text, and a preview image every N steps."""

from __future__ import annotations

import comfy.sample
import comfy.utils
import torch

from ...lora_math.train.loop import Settings
from .dataset import encode_text
from .targets import distilled_guidance


class Progress:
    """ComfyUI's progress bar with the loss as text, and a preview image every N steps through the sampler."""

    def __init__(self, settings: Settings, model, clip, vae, item, caption: str) -> None:
        self.settings, self.model, self.clip, self.vae, self.item, self.caption = (
            settings,
            model,
            clip,
            vae,
            item,
            caption,
        )
        self.bar = comfy.utils.ProgressBar(settings.steps)
        self.node_id = None
        try:
            from comfy_execution.utils import get_executing_context

            context = get_executing_context()
            self.node_id = context.node_id if context is not None else None
        except ImportError:  # older ComfyUI: progress bar only
            pass

    def step(self, step: int, loss: float, factors) -> None:
        preview = None
        every = self.settings.preview_every
        if every and (step % every == 0 or step == self.settings.steps):
            preview = self._preview()
        self.bar.update_absolute(step, self.settings.steps, preview)
        if self.node_id is not None:
            try:
                from server import PromptServer

                PromptServer.instance.send_progress_text(
                    f"step {step}/{self.settings.steps}  loss {loss:.4f}", self.node_id
                )
            except (ImportError, AttributeError):
                pass

    @torch.no_grad()
    def _preview(self):
        """One image from the current LoRA (still attached to the layers), with the first caption."""
        latent = torch.zeros_like(self.item.latent)
        cross, extra = encode_text(self.clip, self.caption)
        empty, empty_extra = encode_text(self.clip, "")
        cfg = 1.0 if distilled_guidance(self.model.model) else 4.0  # distilled guidance: no CFG
        noise = comfy.sample.prepare_noise(latent, self.settings.seed)
        out = comfy.sample.sample(
            self.model,
            noise,
            12,
            cfg,
            "euler",
            "simple",
            [[cross, dict(extra)]],
            [[empty, dict(empty_extra)]],
            latent,
            disable_pbar=True,
            seed=self.settings.seed,
        )
        image = self.vae.decode(out)[0].clamp(0, 1)
        from PIL import Image

        return ("JPEG", Image.fromarray((image.cpu().numpy() * 255).astype("uint8")), 512)
