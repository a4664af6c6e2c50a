"""Training a LoRA, the pure-torch parts: trainable factors, the objective, LR schedules, buckets, export.

ComfyUI-specific work (the model, its conditioning, progress, previews) lives in ``nodes/training.py``.
"""

from .factors import LoraFactors
from .result import TrainedLoRA

__all__ = ["LoraFactors", "TrainedLoRA"]
