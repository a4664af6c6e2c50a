"""The denoising objective for ε-, v- and flow-prediction models, written once in x0 space.

Every ComfyUI model returns its denoised estimate x̂0 (``apply_model``), so the loss is computed against the clean
latent x0 and weighted back to what each model family is trained on natively:

- ε-prediction: ``‖ε̂ − ε‖² = ‖x̂0 − x0‖² / σ²`` (sigma-space, x = x0 + σ ε);
- v-prediction: ``‖v̂ − v‖² = ‖x̂0 − x0‖² · (σ² + 1) / σ²``;
- flow matching (FLUX, SD3; x = (1 − σ) x0 + σ ε, v = ε − x0): ``‖v̂ − v‖² = ‖x̂0 − x0‖² / σ²``.

Min-SNR-γ (Hang et al. 2023) weights ε by ``min(SNR, γ) / SNR`` and v by ``min(SNR, γ) / (SNR + 1)`` with
SNR = 1/σ²; in x0 space both become the same weight ``min(1/σ², γ)``. It is not used for flow models.
Timesteps: uniform over the schedule for ε/v; logit-normal for flow models (as SD3 and FLUX trainers do), mapped
through the model's own sigma function, so each model's timestep shift applies.
"""

from __future__ import annotations

import torch
from torch import Tensor

PREDICTIONS = ("eps", "v", "flow")


def loss_weight(sigma: Tensor, prediction: str, min_snr_gamma: float | None = None) -> Tensor:
    """Per-sample weight on the x0-space MSE (``sigma [B]``, fp32)."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    inv_sq = 1.0 / sigma.float().clamp_min(1e-4).square()
    if prediction == "flow":
        return inv_sq
    if min_snr_gamma:
        return inv_sq.clamp_max(float(min_snr_gamma))
    return inv_sq if prediction == "eps" else inv_sq + 1.0


def sample_progress(batch: int, prediction: str, generator: torch.Generator) -> Tensor:
    """Where in the schedule each sample is: ``t`` in (0, 1), 0 = clean end, 1 = pure noise."""
    if prediction == "flow":
        return torch.sigmoid(torch.randn(batch, generator=generator))
    return torch.rand(batch, generator=generator)


def denoising_loss(
    denoised: Tensor, x0: Tensor, sigma: Tensor, prediction: str, min_snr_gamma: float | None = None
) -> Tensor:
    """Mean over the batch of the per-sample weighted MSE (fp32)."""
    mse = (denoised.float() - x0.float()).square().flatten(1).mean(dim=1)
    return (mse * loss_weight(sigma, prediction, min_snr_gamma).to(mse.device)).mean()
