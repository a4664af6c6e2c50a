"""Make LoRA Loom's tiny world model: draw the world, train its VAE, UNet and text embeddings on the CPU, write the
thin weights (committed) and their sidecar, then the full-size SD1.5 checkpoint ComfyUI loads.

  .venv/bin/python scripts/make_world.py            # the committed model: scripts/world/loom-world.thin.safetensors
  .venv/bin/python scripts/make_world.py --expand   # only the full checkpoint from the committed thin file

The world: one shape (circle, square, triangle, cross) in one colour (red, green, blue, yellow), small or large, on a
3×3 grid, on a white, grey or black background that is plain, striped or dotted, 64×64 px, captioned
``a large red circle at the top left on a striped white background`` (scripts/world/draw.py). Seeded throughout.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from comfy_env import MODELS, import_comfy  # noqa: E402

THIN = HERE / "world" / "loom-world.thin.safetensors"
SIDECAR = THIN.with_suffix("").with_suffix(".json")
CHECKPOINT = MODELS / "checkpoints" / "loom-world-sd15.safetensors"
HELD_OUT = 90210


def make(plan, out: Path) -> dict:
    import torch
    from world import draw, files, measure, models, train

    torch.set_num_threads(max(1, torch.get_num_threads()))
    train.seed_everything(plan.seed)
    started = time.perf_counter()
    images, captions, _ = train.dataset(plan.images, plan.seed, plan.side)
    ids, empty = models.tokenize(captions), models.tokenize([""])[0]
    vae, unet, text = models.thin_vae(), models.thin_unet(), models.TextEmbedding(seed=plan.seed)
    vae_losses = train.train_vae(vae, images, plan)
    vae_s = time.perf_counter() - started
    latents = train.normalise_latents(vae, train.encode(vae, images))
    unet_losses = train.train_unet(unet, text, latents, ids, empty, plan)
    train_s = time.perf_counter() - started

    held, _, held_scenes = train.dataset(300, HELD_OUT, plan.side)
    with torch.no_grad():
        z = train.encode(vae, held)
        recon = torch.cat([vae.decoder(vae.post_quant_conv(z[i : i + 50])) for i in range(0, len(z), 50)])
    recon = ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    prompts = draw.sample_scenes(64, HELD_OUT + 1)
    generated = train.sample(unet, text, vae, models.tokenize([draw.caption(s) for s in prompts]), empty)
    about = {
        "made_by": "scripts/make_world.py",
        "plan": asdict(plan),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "seconds": {"vae": round(vae_s, 1), "total_training": round(train_s, 1)},
        "loss_last_100": {"vae": sum(vae_losses[-100:]) / 100, "unet": sum(unet_losses[-100:]) / 100},
        "vae_reconstruction_accuracy": measure.accuracy(held_scenes, list(recon)),
        "generation_accuracy_ddim20_cfg5": measure.accuracy(prompts, list(generated)),
        "thin_widths": {"vae_ratio": models.VAE_RATIO, "unet_ratio": models.UNET_RATIO},
    }
    used = set(ids.flatten().tolist()) | set(empty.tolist())
    files.save_thin(out, vae, unet, text, used, plan.seed, about)
    return about


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--expand", action="store_true", help="only write the full checkpoint from the thin file")
    ap.add_argument("--out", type=Path, default=THIN)
    ap.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    ap.add_argument("--vae-steps", type=int, default=None)
    ap.add_argument("--unet-steps", type=int, default=None)
    args = ap.parse_args(argv)
    import_comfy(cpu=True)
    from world import files, train

    if not args.expand:
        plan = train.Plan()
        plan.vae_steps = args.vae_steps or plan.vae_steps
        plan.unet_steps = args.unet_steps or plan.unet_steps
        about = make(plan, args.out)
        sidecar = args.out.with_suffix("").with_suffix(".json")
        sidecar.write_text(json.dumps(about, indent=2) + "\n")
        print(json.dumps(about, indent=2))
    if not args.out.exists():
        raise SystemExit(f"{args.out} is missing: run `make world` to train the world model")
    files.write_checkpoint(args.out, args.checkpoint)
    print(f"[world] {args.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
