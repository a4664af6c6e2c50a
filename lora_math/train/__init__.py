"""Training a LoRA, the pure-torch parts: trainable factors, the objective, LR schedules, buckets and the loop.

ComfyUI-specific work (the model, its conditioning, progress, previews) lives in ``nodes/train/engine.py``.
"""

from ..save.result import LoomLoRA
from .factors import LoraFactors

__all__ = ["LoraFactors", "LoomLoRA"]
