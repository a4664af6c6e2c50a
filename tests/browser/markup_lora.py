"""A LoRA whose metadata is HTML and script, for the info panel's escaping (written into a temporary `loras` folder)."""

import json

from comfy_env import MODELS

TINY_LORA = "loom-tiny-sd15-lora.safetensors"
XSS_LORA = "loom-xss-metadata.safetensors"
# Run in a page these would set window.__loom_xss; shown as text they do nothing.
XSS_COMMENT = '<img src=x onerror="window.__loom_xss=1">'
XSS_TRIGGER = "<script>window.__loom_xss=2</script>"
XSS_TITLE = "<b>not bold</b> & <i>not italic</i>"


def write_xss_lora(folder):
    """The tiny LoRA's tensors with markup in the metadata a LoRA info panel shows; returns the file's path."""
    from safetensors.torch import load_file, save_file

    metadata = {
        "ss_training_comment": XSS_COMMENT,
        "modelspec.trigger_phrase": f"{XSS_TRIGGER}, loomtok",
        "modelspec.title": XSS_TITLE,
        "ss_network_dim": "8",
        "ss_network_alpha": "4",
        "ss_tag_frequency": json.dumps({"set": {"<u>tag</u>": 3}}),
    }
    path = folder / XSS_LORA
    save_file(load_file(MODELS / "loras" / TINY_LORA), path, metadata=metadata)
    return path
