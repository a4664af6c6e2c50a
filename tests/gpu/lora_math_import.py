"""The pack's own lora_math as ComfyUI loads it (the gpu tier runs with ComfyUI importable)."""


def merge_module():
    from comfy_env import load_pack

    pack = load_pack()
    return pack.lora_math.weights.inplace, pack.lora_math.adapters.LoRA
