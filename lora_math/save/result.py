"""What a training run or a LoRA utility hands on: the factors, where they go, and everything needed to save, apply or
resume it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

OPERATIONS = ("train", "merge", "resize", "extract", "convert")


@dataclass
class LoomLoRA:
    """A trained (or partly trained) LoRA, or the result of a LoRA utility (merge, resize, extract, convert).

    modules: ComfyUI model key of the patched weight (``diffusion_model.….to_q.weight``, and for utilities also CLIP
        keys as ComfyUI's CLIP patcher names them, ``clip_l.transformer.text_model.….weight``) -> ``(down, up)``, fp32
        CPU tensors: linear ``down [r, in]``, ``up [out, r]``, or conv (LoCon, as kohya stores it) ``down [r, in, kh,
        kw]``, ``up [out, r, 1, 1]``; ``ΔW = alpha_of(key) / r · up @ down`` (flattened to matrices, reshaped to W).
        Training gives every module the same rank; utilities may give each module its own ``r = down.shape[0]``.
    alpha: the alpha of every module (one value, as trainers write it) unless ``module_alpha`` names the module.
    rank: the rank of every module (training); for utilities, whose modules may differ in rank, the largest one.
    arch: ``sd15`` | ``sd2`` | ``sdxl`` | ``flux`` | ``sd3`` (what the file's names and metadata are written for).
    settings: the training settings as plain JSON-able values (rank, lr, steps, optimizer, resolution …).
    dataset: ``num_images``, ``images_sha256`` (hash of the images and captions), ``tag_frequency``
        ({tag: count}), ``trigger``, ``class_prompt`` …; base: ``sha256`` of the base model weights, ``name``,
        ``model_keys`` (every weight key of the model; SD1.x/SD2 names need the UNet's).
    step: optimizer steps done; loss_history: the loss of each step (smoothed values are the reader's business).
    optimizer_state: ``torch.optim`` state dict to resume from (tensors on CPU), or None.
    interrupted: True when the run stopped early (the LoRA so far).
    module_alpha: per-module alpha (key -> alpha), or None when every module uses ``alpha``; keys it does not name
        use ``alpha`` too.
    operation: ``train`` (Loom Train LoRA) or the utility that made it: ``merge`` | ``resize`` | ``extract`` |
        ``convert``. Only ``train`` results get a resume file and training metadata.
    sources: utilities: each input LoRA or model as a plain JSON-able dict, e.g. ``{"name": "style.safetensors",
        "sha256": "…", "format": "kohya", "strength_model": 0.8, "strength_clip": 1.0, "blocks": "", "role":
        "lora"}`` (extract: ``role`` ``"tuned"`` | ``"base"``).
    notes: utilities: operation details (``{"rank_rule": "energy 0.9", "relative_error": 0.031, "modules": 140}``),
        JSON-able; saved as ``loom_operation_details``.
    diffs: utilities: full updates of weights a low-rank pair cannot hold, carried over as they are: ComfyUI model key
        of a bias (``….bias``) or a 1-D weight (a norm's ``….weight``) -> fp32 CPU ΔW of that shape, strength applied;
        saved as kohya/LyCORIS ``NAME.diff_b`` / ``NAME.diff`` (core ComfyUI and Loom read both).
    """

    modules: Mapping[str, tuple[Tensor, Tensor]]
    alpha: float
    rank: int
    arch: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    dataset: Mapping[str, Any] = field(default_factory=dict)
    base: Mapping[str, Any] = field(default_factory=dict)
    step: int = 0
    loss_history: list[float] = field(default_factory=list)
    optimizer_state: Mapping[str, Any] | None = None
    interrupted: bool = False
    module_alpha: Mapping[str, float] | None = None
    operation: str = "train"
    sources: tuple[Mapping[str, Any], ...] = ()
    notes: Mapping[str, Any] = field(default_factory=dict)
    diffs: Mapping[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.operation not in OPERATIONS:
            raise ValueError(f"operation: {self.operation!r} is not one of {', '.join(OPERATIONS)}")
        self.sources = tuple(self.sources)

    @property
    def scale(self) -> float:
        """``alpha / rank``: the scale of every module of a trained LoRA (one rank, one alpha); see :meth:`scale_of`."""
        return self.alpha / self.rank

    def alpha_of(self, key: str) -> float:
        """The alpha of module ``key``: ``module_alpha[key]`` when given, else ``alpha``."""
        if self.module_alpha is not None and key in self.module_alpha:
            return float(self.module_alpha[key])
        return float(self.alpha)

    def rank_of(self, key: str) -> int:
        """The rank of module ``key``: its ``down.shape[0]``."""
        return int(self.modules[key][0].shape[0])

    def scale_of(self, key: str) -> float:
        """``alpha_of(key) / rank_of(key)``, the factor ``up @ down`` of module ``key`` is multiplied by."""
        return self.alpha_of(key) / self.rank_of(key)
