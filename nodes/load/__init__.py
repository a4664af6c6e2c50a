"""Nodes that put LoRAs on a model: Loom LoRA Loader, Loom LoRA Stack, and Loom LoRA Info."""
