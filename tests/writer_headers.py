"""Safetensors headers (``__metadata__``) modelled on what the real LoRA writers put there, for every test tier.

Each header follows the writer's own save code (read in its public repository), with made-up values:

- ``SD_SCRIPTS``: kohya-ss/sd-scripts ``train_network.py`` (the ``ss_*`` dict, ``ss_tag_frequency`` /
  ``ss_dataset_dirs``, ``sshs_*`` hashes from ``train_util.precalculate_safetensors_hashes``) plus
  ``library/sai_model_spec.py`` (``modelspec.*``, ``implementation_version`` ``sd-scripts/<commit>``). Civitai's
  on-site trainer runs sd-scripts, so its files carry this set (no Civitai-only key could be confirmed).
- ``MUSUBI_TUNER``: kohya-ss/musubi-tuner ``hv_train_network.py`` (``ss_*`` without ``ss_sd_scripts_commit_hash``, a
  JSON list ``ss_datasets``, no tag frequency) and ``utils/sai_model_spec.py``.
- ``AI_TOOLKIT``: ostris/ai-toolkit ``toolkit/metadata.py`` ``get_meta_for_safetensors`` (the config's ``meta``
  ``name``/``version``, ``software`` from ``info.py``, non-strings as JSON, ``format: pt``) and
  ``BaseSDTrainProcess.update_training_metadata`` (``training_info``, ``ss_base_model_version``, ``ss_output_name``,
  the trigger word as ``ss_tag_frequency`` "so auto1111 will pick it up").
- ``ONETRAINER``: Nerogar/OneTrainer ``BaseModelSaver._create_safetensors_header`` (``ModelSpec.to_dict`` keys,
  ``ot_branch``, ``ot_revision``, ``ot_config`` = the training config JSON with its ``additional_embeddings``).
- ``SIMPLETUNER_PEFT``: bghira/SimpleTuner ``save_hooks._save_lora`` -> diffusers ``save_lora_weights`` with
  ``_collate_lora_metadata``: ``format: pt`` and ``lora_adapter_metadata`` = PEFT ``LoraConfig.to_dict()`` packed with
  the component prefix (``_pack_dict_with_prefix``), ``json.dumps(indent=2, sort_keys=True)``.
- ``SIMPLETUNER_LYCORIS``: SimpleTuner ``_save_lycoris``: ``lycoris_config`` (the LyCORIS JSON config) only.
- ``DIFFUSERS_MODEL``: diffusers ``ModelMixin.save_lora_adapter``: the same ``LoraConfig`` dict, no prefix.
- ``LOOM``: LoRA Loom's Save LoRA (``lora_math/save/``): kohya ``ss_*``, ``modelspec.*``, ``loom_*``.

The ``lora_adapter_metadata`` ones agree with the files they are paired with in the comfy tier (``lora_writers``:
``flux_diffusers`` r 4 / alpha 4, ``peft`` r 4 / alpha 8), so that Loom reads the same alpha from them.
"""

from __future__ import annotations

import json


def _peft_config(r: int, alpha: float, targets: list[str]) -> dict:
    """PEFT ``LoraConfig.to_dict()`` as PEFT 0.15 writes it (sets made lists, as diffusers does before saving)."""
    return {
        "alpha_pattern": {},
        "auto_mapping": None,
        "base_model_name_or_path": None,
        "bias": "none",
        "corda_config": None,
        "eva_config": None,
        "exclude_modules": None,
        "fan_in_fan_out": False,
        "inference_mode": False,
        "init_lora_weights": "gaussian",
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_alpha": alpha,
        "lora_bias": False,
        "lora_dropout": 0.0,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": r,
        "rank_pattern": {},
        "revision": None,
        "target_modules": targets,
        "task_type": None,
        "use_dora": False,
        "use_rslora": False,
    }


SD_SCRIPTS = {
    "ss_session_id": "1402858211",
    "ss_training_started_at": "1716800000.51",
    "ss_output_name": "zxc_style",
    "ss_learning_rate": "0.0001",
    "ss_text_encoder_lr": "5e-05",
    "ss_unet_lr": "0.0001",
    "ss_num_train_images": "40",
    "ss_num_reg_images": "0",
    "ss_num_batches_per_epoch": "20",
    "ss_num_epochs": "10",
    "ss_gradient_checkpointing": "True",
    "ss_gradient_accumulation_steps": "1",
    "ss_max_train_steps": "200",
    "ss_lr_warmup_steps": "0",
    "ss_lr_scheduler": "cosine",
    "ss_network_module": "networks.lora",
    "ss_network_dim": "8",
    "ss_network_alpha": "4.0",
    "ss_network_dropout": "None",
    "ss_mixed_precision": "fp16",
    "ss_full_fp16": "False",
    "ss_v2": "False",
    "ss_base_model_version": "sd_v1",
    "ss_clip_skip": "None",
    "ss_max_token_length": "None",
    "ss_cache_latents": "True",
    "ss_seed": "42",
    "ss_lowram": "False",
    "ss_noise_offset": "None",
    "ss_training_comment": "trigger words: zxc style, glowing runes.",
    "ss_sd_scripts_commit_hash": "25f961bc779bc79aef440813e3e8e92244ac5739",
    "ss_optimizer": "bitsandbytes.optim.adamw.AdamW8bit",
    "ss_max_grad_norm": "1.0",
    "ss_min_snr_gamma": "5.0",
    "ss_resolution": "(512, 512)",
    "ss_batch_size_per_device": "2",
    "ss_total_batch_size": "2",
    "ss_dataset_dirs": json.dumps({"10_zxc style": {"n_repeats": 10, "img_count": 40}}),
    "ss_reg_dataset_dirs": json.dumps({}),
    "ss_tag_frequency": json.dumps({"10_zxc style": {"zxc style": 40, "1girl": 22, "glowing runes": 31, "night": 9}}),
    "ss_sd_model_name": "v1-5-pruned-emaonly.safetensors",
    "ss_new_sd_model_hash": "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
    "ss_training_finished_at": "1716803600.25",
    "ss_steps": "200",
    "ss_epoch": "10",
    "sshs_model_hash": "3d5a8e2c3a1f0c1e7f0f6d5b8b36bd8e7f0fa5a1bb63f3e3b3a0e9b2c9f1d0aa",
    "sshs_legacy_hash": "8a0e6c1d",
    "modelspec.sai_model_spec": "1.0.1",
    "modelspec.architecture": "stable-diffusion-v1/lora",
    "modelspec.implementation": "diffusers",
    "modelspec.implementation_version": "sd-scripts/25f961bc779bc79aef440813e3e8e92244ac5739",
    "modelspec.title": "zxc_style",
    "modelspec.resolution": "512x512",
    "modelspec.date": "2024-05-27T10:53:20",
    "modelspec.prediction_type": "epsilon",
}

MUSUBI_TUNER = {
    "ss_session_id": "771820399",
    "ss_training_started_at": "1740000000.0",
    "ss_output_name": "hv_dance",
    "ss_learning_rate": "0.0002",
    "ss_num_train_items": "48",
    "ss_num_batches_per_epoch": "48",
    "ss_num_epochs": "16",
    "ss_gradient_checkpointing": "True",
    "ss_gradient_accumulation_steps": "1",
    "ss_max_train_steps": "768",
    "ss_lr_warmup_steps": "0",
    "ss_lr_scheduler": "constant",
    "ss_base_model_version": "hunyuan_video",
    "ss_network_module": "networks.lora",
    "ss_network_dim": "32",
    "ss_network_alpha": "1.0",
    "ss_network_dropout": "None",
    "ss_mixed_precision": "bf16",
    "ss_seed": "42",
    "ss_training_comment": "None",
    "ss_optimizer": "torch.optim.adamw.AdamW8bit",
    "ss_max_grad_norm": "1.0",
    "ss_fp8_base": "True",
    "ss_full_fp16": "False",
    "ss_full_bf16": "False",
    "ss_weighting_scheme": "none",
    "ss_logit_mean": "0.0",
    "ss_logit_std": "1.0",
    "ss_mode_scale": "1.29",
    "ss_guidance_scale": "1.0",
    "ss_timestep_sampling": "shift",
    "ss_sigmoid_scale": "1.0",
    "ss_discrete_flow_shift": "7.0",
    "ss_datasets": json.dumps(
        [
            {
                "resolution": [960, 544],
                "enable_bucket": True,
                "batch_size": 1,
                "num_repeats": 1,
                "caption_extension": ".txt",
            }
        ]
    ),
    "ss_sd_model_name": "mp_rank_00_model_states.pt",
    "ss_vae_name": "pytorch_model.pt",
    "ss_training_finished_at": "1740007200.0",
    "ss_steps": "768",
    "ss_epoch": "16",
    "modelspec.sai_model_spec": "1.0.0",
    "modelspec.architecture": "hunyuan-video/lora",
    "modelspec.implementation": "https://github.com/Tencent/HunyuanVideo",
    "modelspec.title": "hv_dance",
    "modelspec.resolution": "1280x720",
    "modelspec.date": "2025-02-19T21:20:00",
}

AI_TOOLKIT = {
    "name": "p3r5on_flux",
    "version": "1.0",
    "training_info": json.dumps({"step": 2000, "epoch": 3}),
    "ss_base_model_version": "flux.1",
    "ss_output_name": "p3r5on_flux",
    "ss_tag_frequency": json.dumps({"1_p3r5on": {"p3r5on": 1}}),
    "software": json.dumps({"name": "ai-toolkit", "repo": "https://github.com/ostris/ai-toolkit", "version": "0.1.0"}),
    "format": "pt",
}

ONETRAINER = {
    "modelspec.sai_model_spec": "1.0.0",
    "modelspec.architecture": "stable-diffusion-v1/lora",
    "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
    "modelspec.title": "mychar",
    "modelspec.date": "2024-11-02",
    "modelspec.hash_sha256": "0x8f3c2e9a0d5b4f6e1a7c3b9d2e8f4a6c5b1d7e3f9a2c4b6d8e0f1a3c5e7b9d2f",
    "modelspec.license": "CreativeML Open RAIL++-M License",
    "modelspec.resolution": "512",
    "modelspec.prediction_type": "epsilon",
    "ot_branch": "master",
    "ot_revision": "4822e8e5493e871e5b503eae7b9db61105ba546c",
    "ot_config": json.dumps(
        {
            "training_method": "LORA",
            "model_type": "STABLE_DIFFUSION_15",
            "learning_rate": 0.0003,
            "epochs": 100,
            "lora_rank": 16,
            "lora_alpha": 1.0,
            "additional_embeddings": [{"placeholder": "<mychar>", "train": True, "token_count": 2}],
            "concepts": [{"name": "mychar", "path": "/data/mychar", "enabled": True}],
        }
    ),
}

_FLUX_TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "add_k_proj", "add_q_proj", "add_v_proj", "to_add_out"]
SIMPLETUNER_PEFT = {
    "format": "pt",
    "lora_adapter_metadata": json.dumps(
        {f"transformer.{k}": v for k, v in _peft_config(4, 4.0, _FLUX_TARGETS).items()}, indent=2, sort_keys=True
    ),
}

SIMPLETUNER_LYCORIS = {
    "lycoris_config": json.dumps(
        {
            "algo": "lokr",
            "multiplier": 1.0,
            "linear_dim": 10000,
            "linear_alpha": 1,
            "factor": 16,
            "apply_preset": {"target_module": ["Attention", "FeedForward"]},
        }
    ),
}

DIFFUSERS_MODEL = {
    "format": "pt",
    "lora_adapter_metadata": json.dumps(
        _peft_config(4, 8.0, ["to_k", "to_q", "to_v", "to_out.0"]), indent=2, sort_keys=True
    ),
}

LOOM = {
    "ss_base_model_version": "sd_v1",
    "ss_network_module": "networks.lora",
    "ss_network_dim": "4",
    "ss_network_alpha": "2.0",
    "ss_resolution": "(512, 512)",
    "ss_num_train_images": "12",
    "ss_steps": "30",
    "ss_max_train_steps": "30",
    "ss_tag_frequency": json.dumps({"dataset": {"zxq cube": 12, "red": 7}}),
    "ss_training_comment": "a red cube, for product shots",
    "ss_learning_rate": "0.0001",
    "ss_optimizer": "torch.optim.adamw.AdamW",
    "ss_output_name": "cube_v1",
    "modelspec.sai_model_spec": "1.0.0",
    "modelspec.architecture": "stable-diffusion-v1/lora",
    "modelspec.implementation": "diffusers",
    "modelspec.title": "cube_v1",
    "modelspec.date": "2025-06-01T12:00:00",
    "modelspec.resolution": "512x512",
    "modelspec.trigger_phrase": "zxq cube",
    "modelspec.usage_hint": "put 'zxq cube' in the prompt",
    "loom_version": "0.1.0",
    "loom_arch": "sd15",
    "loom_trigger_words": "zxq cube",
    "loom_scope": "a red cube, for product shots",
    "loom_settings": json.dumps({"learning_rate": 0.0001, "steps": 30, "rank": 4}),
    "loom_interrupted": "false",
}

WRITERS = {
    "sd-scripts": SD_SCRIPTS,
    "musubi-tuner": MUSUBI_TUNER,
    "ai-toolkit": AI_TOOLKIT,
    "onetrainer": ONETRAINER,
    "simpletuner-peft": SIMPLETUNER_PEFT,
    "simpletuner-lycoris": SIMPLETUNER_LYCORIS,
    "diffusers-model": DIFFUSERS_MODEL,
    "loom": LOOM,
}


# --- a diffusers / PEFT file built without a model (server and browser tiers) ---------------------------------------

PEFT_TRIGGER = "p3ft style"
PEFT_FILE_HEADER = {
    "format": "pt",
    "lora_adapter_metadata": json.dumps(
        {
            **{f"unet.{k}": v for k, v in _peft_config(4, 8.0, ["to_q", "to_k", "to_v", "to_out.0"]).items()},
            "text_encoder.r": 4,
            "text_encoder.lora_alpha": 2.0,
            "text_encoder.target_modules": ["q_proj", "v_proj"],
        },
        indent=2,
        sort_keys=True,
    ),
    "modelspec.trigger_phrase": PEFT_TRIGGER,
    "modelspec.title": "<i>peft</i> & co",
}


def write_peft_sd15(path, seed: int = 0) -> None:
    """A small diffusers-PEFT SD1.5 LoRA (UNet attention + CLIP-L q/v of the first blocks, r 4), seeded, fp16, with
    :data:`PEFT_FILE_HEADER`: what diffusers' ``save_lora_weights`` writes, at a fraction of the size."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    modules = {
        f"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.{p}": (320, 320)
        for p in ("to_q", "to_k", "to_v", "to_out.0")
    }
    modules |= {f"text_encoder.text_model.encoder.layers.0.self_attn.{p}": (768, 768) for p in ("q_proj", "v_proj")}
    tensors = {}
    for name, (out, inp) in modules.items():
        tensors[f"{name}.lora_A.weight"] = (0.02 * torch.randn(4, inp, generator=gen)).half()
        tensors[f"{name}.lora_B.weight"] = (0.02 * torch.randn(out, 4, generator=gen)).half()
    save_file(tensors, str(path), metadata=PEFT_FILE_HEADER)
