"""Which layers read one input (``names.shared_inputs``): self-attention q/k/v, cross-attention k/v, Qwen's text q/k/v."""

from lora_math.names.shared_inputs import shared_inputs

BLOCK = "diffusion_model.input_blocks.4.1.transformer_blocks.0"
QWEN = "diffusion_model.transformer_blocks.3.attn"


def test_unet_attention_groups():
    keys = [f"{BLOCK}.attn{n}.{p}.weight" for n in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out.0")]
    groups = sorted(shared_inputs(keys), key=len)
    assert groups == [
        [f"{BLOCK}.attn2.to_k.weight", f"{BLOCK}.attn2.to_v.weight"],  # the text: q reads the image
        [f"{BLOCK}.attn1.to_q.weight", f"{BLOCK}.attn1.to_k.weight", f"{BLOCK}.attn1.to_v.weight"],
    ]


def test_qwen_image_streams_and_fused_layers():
    keys = [f"{QWEN}.{p}.weight" for p in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")]
    assert sorted(map(len, shared_inputs(keys))) == [3, 3]
    # FLUX / SD3 / Z-Image fuse q/k/v into one layer: nothing to share
    assert (
        shared_inputs(
            ["diffusion_model.double_blocks.0.img_attn.qkv.weight", "diffusion_model.layers.0.attention.qkv.weight"]
        )
        == []
    )
