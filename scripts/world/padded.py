"""Training a full-size architecture at a fraction of its width: thin models that compute exactly what the full one
computes when every extra channel is zero.

ComfyUI detects SD1.5 by its widths (``model_channels`` 320; the SD VAE's 128·[1, 2, 4, 4]) and builds the
full-size modules whatever the file holds, so a checkpoint it loads as SD1.5 must have full-size tensors. A full-size
network whose every hidden space carries real values in one channel of each ``r`` (the rest zero) computes exactly
what a network ``r`` times thinner computes, if that thin network normalises as the padded one does: a
GroupNorm/LayerNorm over a group of which only ``1/r`` is real sees a mean and a mean square ``r`` times smaller.
So the world model trains thin (:class:`PaddedGroupNorm`, :class:`PaddedLayerNorm` stand in for the norms) and
:func:`embed` writes the full-size tensors: thin channel ``i`` of a hidden space goes to full channel ``i · r``.

That placement keeps every structure the layers rely on: a norm group of the full model holds exactly the real
channels of the thin group (``r`` times the group size), an attention head holds its thin head's channels, GEGLU's
two halves stay halves, and the UNet's skip concatenations ``[h, skip]`` place each part as it is placed alone.
Attention divides by √(head dim), which is ``r`` times larger in full, so queries are scaled by √r on export.
Zero channels stay zero: their weights, biases and norm gains are zero and SiLU/GELU map 0 to 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PaddedGroupNorm(nn.Module):
    """GroupNorm over ``channels`` real channels that sit among ``ratio - 1`` zero channels each, in groups."""

    def __init__(self, num_groups: int, channels: int, ratio: int, eps: float) -> None:
        super().__init__()
        self.num_groups, self.ratio, self.eps = num_groups, ratio, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        g = x.reshape(b, self.num_groups, -1)
        mean = g.mean(dim=2, keepdim=True) / self.ratio
        var = (g * g).mean(dim=2, keepdim=True) / self.ratio - mean * mean
        g = (g - mean) * torch.rsqrt(var + self.eps)
        shape = (1, c) + (1,) * (x.ndim - 2)
        return g.reshape(x.shape) * self.weight.reshape(shape) + self.bias.reshape(shape)


class PaddedLayerNorm(nn.Module):
    """LayerNorm over the last dim, of which the real part is ``1 / ratio`` (the rest zero)."""

    def __init__(self, dim: int, ratio: int, eps: float, affine: bool = True) -> None:
        super().__init__()
        self.ratio, self.eps = ratio, eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=-1, keepdim=True) / self.ratio
        var = (x * x).mean(dim=-1, keepdim=True) / self.ratio - mean * mean
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x if self.weight is None else x * self.weight + self.bias


def pad_norms(module: nn.Module, ratio: int) -> nn.Module:
    """Replace every GroupNorm and LayerNorm in ``module`` (in place) by its padded form; fresh gains of 1, biases 0."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.GroupNorm):
            setattr(module, name, PaddedGroupNorm(child.num_groups, child.num_channels, ratio, child.eps))
        elif isinstance(child, nn.LayerNorm):
            affine = child.weight is not None
            setattr(module, name, PaddedLayerNorm(child.normalized_shape[0], ratio, child.eps, affine))
        else:
            pad_norms(child, ratio)
    return module


def init_weights(module: nn.Module) -> nn.Module:
    """torch's default initialisation for every conv and linear (ComfyUI's op classes skip it: they expect a file)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.Conv2d.reset_parameters(m) if isinstance(m, nn.Conv2d) else nn.Linear.reset_parameters(m)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
    return module


def _placed(thin: Tensor, shape: tuple[int, ...], ratio: int, key: str) -> Tensor:
    out = torch.zeros(shape, dtype=thin.dtype)
    index = []
    for t, f in zip(thin.shape, shape, strict=True):
        if t == f:
            index.append(slice(None))
        elif f == t * ratio:
            index.append(slice(0, f, ratio))
        else:
            raise ValueError(f"{key}: thin size {t} does not embed in full size {f} at ratio {ratio}")
    out[tuple(index)] = thin
    return out


def embed(thin: dict[str, Tensor], full_shapes: dict[str, tuple[int, ...]], ratio: int, queries=()) -> dict:
    """The full-size state dict of a thin one (same keys): each hidden channel ``i`` at ``i · ratio``, zeros
    elsewhere; keys ending in one of ``queries`` (attention query weights and biases) scaled by √ratio."""
    missing = sorted(set(full_shapes) - set(thin))
    if missing:
        raise ValueError(f"the thin model lacks {missing[0]} (and {len(missing) - 1} more)")
    out = {}
    for key, shape in full_shapes.items():
        value = _placed(thin[key].detach().float(), tuple(shape), ratio, key)
        if any(key.endswith(q) for q in queries):
            value = value * math.sqrt(ratio)
        out[key] = value
    return out
