"""The world model's three parts, thin, built from ComfyUI's own SD1.5 classes (the full-size ones are what its loader
builds from the file :func:`export` writes):

- VAE: ComfyUI's ``AutoencoderKL`` at width 32·[1, 2, 4, 4] (full: 128·[1, 2, 4, 4]), ratio 4;
- UNet: ComfyUI's ``UNetModel`` in the loom-tiny-sd15 layout (two levels, one res block and one transformer each)
  at ``model_channels`` 64 (full: 320), ratio 5, reading the full 320-wide timestep encoding;
- CLIP-L: full size, its 12 layers made exact identities (attention output and MLP output projections zero), so
  the text embedding is ``final_layer_norm(token_embedding[ids] + position_embedding)``; :class:`TextEmbedding`
  trains those three tensors and computes that directly, without running the 12 layers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from make_models import SD15_UNET, SD_VAE  # noqa: E402

try:
    from . import padded
except ImportError:
    import padded

VAE_RATIO, UNET_RATIO = 4, 5
CLIP_WIDTH, CLIP_TOKENS, CLIP_LAYERS = 768, 77, 12
SCALE_FACTOR = 0.18215  # SD1.5's latent scale (ComfyUI's latent_formats.SD15): the UNet sees latents × this


def thin_vae() -> nn.Module:
    import comfy.ldm.models.autoencoder
    import comfy.ldm.modules.diffusionmodules.model as vae_model

    config = dict(SD_VAE, ch=SD_VAE["ch"] // VAE_RATIO)
    vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=config, embed_dim=4)
    for attn in (vae.encoder.mid.attn_1, vae.decoder.mid.attn_1):
        attn.optimized_attention = vae_model.pytorch_attention  # one kernel; the same maths as ComfyUI's others
    padded.init_weights(vae)
    # residual branches start as identities (their last conv zero), as diffusion models are initialised
    zero = [m.conv2 for m in vae.modules() if isinstance(m, vae_model.ResnetBlock)]
    zero += [m.proj_out for m in vae.modules() if isinstance(m, vae_model.AttnBlock)]
    _zero(zero)
    return padded.pad_norms(vae, VAE_RATIO).float()


def _zero(layers) -> None:
    with torch.no_grad():
        for layer in layers:
            layer.weight.zero_()
            if layer.bias is not None:
                layer.bias.zero_()


def thin_unet() -> nn.Module:
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.ops

    full = SD15_UNET["model_channels"]
    config = dict(SD15_UNET, model_channels=full // UNET_RATIO)
    unet = openaimodel.UNetModel(**config, operations=comfy.ops.disable_weight_init, device="cpu")
    padded.init_weights(unet)
    # as SD's own initialisation: each residual branch's last layer, each transformer's proj_out and the output conv
    # start at zero
    zero = [m.out_layers[-1] for m in unet.modules() if isinstance(m, openaimodel.ResBlock)]
    zero += [m.proj_out for m in unet.modules() if type(m).__name__ == "SpatialTransformer"]
    _zero([*zero, unet.out[-1]])
    # the full model encodes the timestep at its own width (320) before time_embed; the thin one reads that too
    unet.time_embed[0] = nn.Linear(full, unet.time_embed[0].out_features)
    unet.model_channels = full
    return padded.pad_norms(unet, UNET_RATIO).float()


class TextEmbedding(nn.Module):
    """CLIP-L with identity layers: ``LN(token_embedding[ids] + position_embedding)`` for token ids ``[B, 77]``."""

    def __init__(self, vocab: int = 49408, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.token = nn.Parameter(torch.randn(vocab, CLIP_WIDTH, generator=g) * 0.5)
        self.position = nn.Parameter(torch.randn(CLIP_TOKENS, CLIP_WIDTH, generator=g) * 0.1)
        self.norm = nn.LayerNorm(CLIP_WIDTH)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.token[ids] + self.position)

    def clip_state_dict(self, prefix: str = "cond_stage_model.transformer.text_model.") -> dict[str, torch.Tensor]:
        """The full CLIP-L tensors of an SD1.5 checkpoint: these embeddings, and 12 layers that add nothing."""
        d = CLIP_WIDTH
        out = {
            f"{prefix}embeddings.token_embedding.weight": self.token.detach().clone(),
            f"{prefix}embeddings.position_embedding.weight": self.position.detach().clone(),
            f"{prefix}final_layer_norm.weight": self.norm.weight.detach().clone(),
            f"{prefix}final_layer_norm.bias": self.norm.bias.detach().clone(),
        }
        for i in range(CLIP_LAYERS):
            layer = f"{prefix}encoder.layers.{i}."
            for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
                out[f"{layer}self_attn.{name}.weight"] = torch.zeros(d, d)
                out[f"{layer}self_attn.{name}.bias"] = torch.zeros(d)
            for norm in ("layer_norm1", "layer_norm2"):
                out[f"{layer}{norm}.weight"] = torch.ones(d)
                out[f"{layer}{norm}.bias"] = torch.zeros(d)
            out[f"{layer}mlp.fc1.weight"] = torch.zeros(4 * d, d)
            out[f"{layer}mlp.fc1.bias"] = torch.zeros(4 * d)
            out[f"{layer}mlp.fc2.weight"] = torch.zeros(d, 4 * d)
            out[f"{layer}mlp.fc2.bias"] = torch.zeros(d)
        return out


def tokenize(captions: list[str]) -> torch.Tensor:
    """Token ids ``[B, 77]`` as ComfyUI's SD1.5 tokenizer makes them (start, words, end, padded with end)."""
    import comfy.sd1_clip

    tokenizer = comfy.sd1_clip.SD1Tokenizer()
    rows = []
    for caption in captions:
        tokens = tokenizer.tokenize_with_weights(caption)["l"]
        if len(tokens) != 1:
            raise ValueError(f"captions: {caption!r} is longer than one 77-token window")
        rows.append([t for t, _ in tokens[0]])
    return torch.tensor(rows, dtype=torch.long)


def full_shapes() -> dict[str, tuple[int, ...]]:
    from make_models import sd15_shapes

    return sd15_shapes()


def export(vae: nn.Module, unet: nn.Module, text: TextEmbedding) -> dict[str, torch.Tensor]:
    """The SD1.5 checkpoint's tensors (fp32) from the thin parts."""
    shapes = full_shapes()
    out = {}
    vae_keys = {k[len("first_stage_model.") :]: v for k, v in shapes.items() if k.startswith("first_stage_model.")}
    for k, v in padded.embed(
        vae.state_dict(), vae_keys, VAE_RATIO, queries=("attn_1.q.weight", "attn_1.q.bias")
    ).items():
        out[f"first_stage_model.{k}"] = v
    prefix = "model.diffusion_model."
    unet_keys = {k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)}
    for k, v in padded.embed(unet.state_dict(), unet_keys, UNET_RATIO, queries=("to_q.weight", "to_q.bias")).items():
        out[prefix + k] = v
    clip = text.clip_state_dict()
    clip_keys = {k for k in shapes if k.startswith("cond_stage_model.")}
    if set(clip) != clip_keys:
        raise ValueError(f"CLIP keys differ from SD1.5's: {sorted(set(clip) ^ clip_keys)[:3]}")
    return out | clip
