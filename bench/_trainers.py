"""The two trainers bench/train.py compares, given the same latents and conditioning: Loom's engine items, and
core's `TrainLoraNode` called as ComfyUI calls it."""

from __future__ import annotations


def loom_items(training, model, latents, conds, size: int):
    base = model.model
    items = []
    for i, (latent, (cross, extra)) in enumerate(zip(latents, conds, strict=True)):
        x0 = base.process_latent_in(latent)
        params = {
            **extra,
            "cross_attn": cross,
            "crop_w": 0,
            "crop_h": 0,
            "target_width": size,
            "target_height": size,
            "device": "cpu",
            "noise": x0,
            "prompt_type": "positive",
        }
        params.setdefault("width", size)
        params.setdefault("height", size)
        params.setdefault("guidance", 1.0)
        items.append(training.Item(x0, base.extra_conds(**params), f"image {i}", (size, size)))
    return items


def core_call(model, latents, conds, args, steps: int, checkpointing: bool, training_dtype: str, lora_dtype: str):
    from comfy_extras.nodes_train import TrainLoraNode

    def call():
        return TrainLoraNode.execute(
            model=[model],
            latents=[{"samples": latent} for latent in latents],  # a list: one batched LATENT trips multi_res
            positive=[conds],
            batch_size=[1],
            steps=[steps],
            grad_accumulation_steps=[1],
            learning_rate=[args.lr],
            rank=[args.rank],
            optimizer=["AdamW"],
            loss_function=["MSE"],
            seed=[args.seed],
            training_dtype=[training_dtype],
            lora_dtype=[lora_dtype],
            algorithm=["LoRA"],
            gradient_checkpointing=[checkpointing],
            existing_lora=["[None]"],
        )

    return call


def core_what(lora_sd: dict) -> dict:
    lora_layers = [k for k in lora_sd if k.endswith(".lora_up.weight")]
    diffs = [k for k in lora_sd if k.endswith(".diff")]
    bias = [k for k in lora_sd if k.endswith(".diff_b")]
    return {
        "trains": "every weight: a LoRA (alpha 1) on each Linear/Conv weight, full diffs on each 1-D weight "
        "(norms) and on each bias",
        "lora_layers": len(lora_layers),
        "weight_diffs": len(diffs),
        "bias_diffs": len(bias),
        "params": int(sum(v.numel() for k, v in lora_sd.items() if not k.endswith(".alpha"))),
    }
