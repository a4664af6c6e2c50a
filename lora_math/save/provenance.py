"""Where a trained LoRA came from, next to the result type: the dataset and base-model records the metadata writer
saves (``ss_*``, ``loom_*``), and the one-line report the trainer prints."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .metadata import tag_frequency
from .result import LoomLoRA


def dataset_sha256(images: Sequence[Tensor], captions: Sequence[str]) -> str:
    """sha256 over each image's fp32 pixels and its caption, in order."""
    h = hashlib.sha256()
    for image, caption in zip(images, captions, strict=True):
        h.update(image.float().cpu().numpy().tobytes())
        h.update(caption.encode())
    return h.hexdigest()


def weights_sha256(state_dict: Mapping[str, Tensor]) -> str:
    """sha256 over a model's weights as loaded: names (sorted), shapes and raw bytes."""
    h = hashlib.sha256()
    for name, tensor in sorted(state_dict.items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def dataset_record(
    images: Sequence[Tensor],
    captions: Sequence[str],
    *,
    trigger: str,
    class_prompt: str,
    num_class_images: int,
    resolution: int,
) -> dict:
    """``LoomLoRA.dataset`` of a training run."""
    return {
        "num_images": len(images),
        "images_sha256": dataset_sha256(images, captions),
        "tag_frequency": tag_frequency(captions),
        "trigger": trigger,
        "class_prompt": class_prompt,
        "num_class_images": num_class_images,
        "resolution": resolution,
    }


def base_record(sha256: str, model_keys: Sequence[str], arch: str, prediction: str) -> dict:
    """``LoomLoRA.base``: the base model's hash, its weight keys (SD1.x/SD2 names need them), family, prediction
    (``modelspec.prediction_type`` for ε/v models; flow models have none)."""
    return {"sha256": sha256, "model_keys": list(model_keys), "arch": arch, "prediction": prediction}


def train_report(lora: LoomLoRA, resumed_at: int, layers: int, train_s: float, prep_s: float) -> str:
    """What a training run did, in one line (the node appends the patch report)."""
    done = lora.step - resumed_at
    state = "interrupted after" if lora.interrupted else "trained"
    final = f"final loss {lora.loss_history[-1]:.4f}" if lora.loss_history else "no loss yet"
    return (
        f"{state} {done} steps ({lora.step} in all), rank {lora.rank} on {layers} {lora.arch} layers, "
        f"{lora.dataset.get('num_images', 0)} images; {final}; {train_s / max(done, 1):.3f} s/step, "
        f"data {prep_s:.1f} s; "
    )
