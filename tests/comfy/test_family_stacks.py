"""Stacks, block weights and scheduled strengths on each newer family's stand-in (FLUX.2 dev / klein, Chroma,
Z-Image, Qwen-Image, SD3.5 Medium / Large), through the nodes a user wires.

- Loom LoRA Stack: two files in two trainers' spellings (core's own names with block weights, diffusers names
  at a negative strength) on the same weights; every weight equals the hand reference, where each file's ΔW is
  scaled by its strength times the block multiplier of the weight's block. The blocks each family has, and the
  multiplier each weight gets, are written here from the model's key names, not taken from ``lora_math.names.blocks``.
- A scheduled strength (a ramp from 0 to 1) through ComfyUI's sampler: the output equals re-merging the weights at
  every step with that step's strength (``test_schedule_sampling.reference``), and differs from the static LoRA by
  far more than that tolerance.
"""

from __future__ import annotations

import dataclasses
import json
import re

import comfy.sample
import families
import family_writers as fw
import patched_weights as pw
import pytest
import torch
from test_schedule_sampling import assert_matches, reference

FAMILIES = ["flux2", "flux2_klein", "chroma", "z_image", "qwen_image", "sd35_medium", "sd35_large"]
STYLE = {s.id: s for s in fw.STYLES}

# family -> (the blocks text a user writes, {numbered block (kind, index): multiplier}, multiplier of the rest)
_BLOCK = re.compile(r"^diffusion_model\.(double_blocks|single_blocks|joint_blocks|layers|transformer_blocks)\.(\d+)\.")
_FLUX_LIKE = ("D00:0, S:0.5, BASE:1.25", {("double_blocks", 0): 0.0, ("single_blocks", 0): 0.5,
                                          ("single_blocks", 1): 0.5}, 1.25)  # fmt: skip
BLOCKS = {
    "flux2": _FLUX_LIKE,
    "flux2_klein": _FLUX_LIKE,
    "chroma": _FLUX_LIKE,
    "z_image": ("L00:0, L01:0.5, BASE:1.25", {("layers", 0): 0.0, ("layers", 1): 0.5}, 1.25),
    "qwen_image": ("B00:0, B01:0.5, BASE:1.25", {("transformer_blocks", 0): 0.0, ("transformer_blocks", 1): 0.5},
                   1.25),
    "sd35_medium": ("J00:0, J01:0.5, BASE:1.25", {("joint_blocks", 0): 0.0, ("joint_blocks", 1): 0.5}, 1.25),
    "sd35_large": ("J00:0, J01:0.5, BASE:1.25", {("joint_blocks", 0): 0.0, ("joint_blocks", 1): 0.5}, 1.25),
}  # fmt: skip
UNNAMED = 1.0  # a numbered block the text does not name (FLUX's D01) keeps weight 1


def _multiplier(family: str, key: str) -> float:
    _, numbered, base = BLOCKS[family]
    m = _BLOCK.match(key)
    if m is None:  # embedders, final layer, shared modulations, Z-Image's refiners, Chroma's approximator
        return base
    return numbered.get((m.group(1), int(m.group(2))), UNNAMED)


def _weighted(written, family: str):
    """``written`` with each expected ΔW times its block multiplier (weights at multiplier 0 left out)."""
    kept = []
    for e in written.expected:
        m = _multiplier(family, e.key)
        if m != 0:
            kept.append(dataclasses.replace(e, delta=lambda e=e, m=m: e.delta() * m))
    return dataclasses.replace(written, expected=tuple(kept))


@pytest.mark.parametrize("family", FAMILIES)
def test_stack_with_block_weights_matches_the_reference(family, pack, loras):
    base = pw.Base.of(families.tiny(family, dtype=torch.bfloat16), None)
    own = fw.write(family, STYLE["core"], base.model, loras, seed=40)
    dif = fw.write(family, STYLE["diffusers"], base.model, loras, seed=41)
    blocks = BLOCKS[family][0]
    rows = json.dumps([{"name": own.name, "model": 0.9, "blocks": blocks}, {"name": dif.name, "model": -0.5}])
    model, _, stack, report = pack.nodes.load.stack.LoomLoraStack.execute(
        model=base.model, clip=None, rows=rows, lora_stack=None
    ).result
    assert "warning" not in report, report
    assert [s.blocks for s in stack] == [blocks, ""]
    weighted = _weighted(own, family)
    assert len(weighted.expected) < len(own.expected), "the blocks text must zero some weights"
    applied = [(weighted, 0.9, 0.0), (dif, -0.5, 0.0)]
    pw.check(pw.states(base, model, None), pw.reference(base, applied), base, applied, "reference")


def _sample(family: str):
    latent, positive, negative = families.sampling_inputs(family)

    def run(model, steps: int = 4, seed: int = 3):
        noise = comfy.sample.prepare_noise(latent, seed)
        return comfy.sample.sample(
            model, noise, steps, 2.0, "euler", "simple", positive, negative, latent, seed=seed, disable_pbar=True
        )

    return run


@pytest.mark.parametrize("family", FAMILIES)
def test_scheduled_strength_equals_per_step_remerge(family, pack, loras):
    from lora_loom.lora_math.schedule import parse_schedule

    model = families.tiny(family)  # fp32: bypass and merge then differ only by summation order
    written = fw.write(family, STYLE["diffusers"], model, loras, seed=42)
    ramp = "0:0, 1:1.5"
    parsed = pack.nodes.files.lora_files.load(written.name, "lora_name")
    spec = pack.nodes.comfy_bridge.LoraSpec(written.name, parsed, 1.0, 0.0, schedule=parse_schedule(ramp))
    static = pack.nodes.comfy_bridge.LoraSpec(written.name, parsed, 1.0, 0.0)
    run = _sample(family)
    out = run(pack.nodes.comfy_bridge.apply_stack(model, None, [spec])[0])
    want = reference(pack, model, scheduled=[(written.name, parse_schedule(ramp), 1.0)], run_sampler=run)()
    tolerance = assert_matches(out, want, msg=family)
    plain = run(pack.nodes.comfy_bridge.apply_stack(model, None, [static])[0])
    assert (out - plain).abs().max() > 100 * tolerance
