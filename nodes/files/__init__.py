"""LoRA files in ComfyUI's folders: finding and reading them, and Loom Save LoRA writing them."""
