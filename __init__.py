"""LoRA Loom: a ComfyUI node pack for image LoRAs.

Importing this package imports nothing heavy: ComfyUI calls `comfy_entrypoint` when it loads the
pack, and only then are the node modules (which import ComfyUI) loaded. `lora_math` is pure torch
and can be used without ComfyUI.
"""

WEB_DIRECTORY = "./web"
__version__ = "0.1.0"


async def comfy_entrypoint():
    from .nodes import LoomExtension

    return LoomExtension()
