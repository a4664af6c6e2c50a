"""The in-graph trainer: Loom Load Training Images, Loom Train LoRA and the ComfyUI side of its engine."""
