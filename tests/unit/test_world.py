"""The tiny world's drawer and measurer (scripts/world): captions say what is drawn, and the measurer reads held-out
renders back at ≥ 95% per attribute (measured 2026-12-04 with the template-matching shape reader: 100% every attribute
on 300 held-out renders, still 100% after a Gaussian blur of radius 1.0 px, 87% shape at 1.5 px; with the unseen star,
magenta and checkerboard mixed in 100% shape, 99.7% texture, on 300)."""

from __future__ import annotations

import random
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from world import draw, measure  # noqa: E402

HELD_OUT_SEED = 90210  # no training set is drawn from this seed


def test_caption_words_the_scene():
    scene = draw.Scene("triangle", "blue", "small", "top left", "gray", "striped")
    assert draw.caption(scene) == "a small blue triangle at the top left on a striped gray background"
    assert draw.caption(replace(scene, position="center", texture="plain"), "loomtok") == (
        "loomtok a small blue triangle in the center on a gray background"
    )


def test_render_is_deterministic_and_sized():
    scene = draw.sample_scenes(1, seed=1)[0]
    a, b = draw.render(scene, 64), draw.render(scene, 64)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert draw.render(scene, 96).shape == (96, 96, 3)


def test_bad_attribute_names_it():
    with pytest.raises(ValueError, match=r"^shape: 'hexagon' is not one of"):
        draw.render(draw.Scene(shape="hexagon"))
    with pytest.raises(ValueError, match=r"^texture: 'wavy' is not one of"):
        draw.render(draw.Scene(texture="wavy"))


def test_measurer_reads_held_out_base_renders():
    scenes = draw.sample_scenes(300, seed=HELD_OUT_SEED)
    accuracy = measure.accuracy(scenes, [draw.render(s) for s in scenes])
    assert min(accuracy.values()) >= 0.95, accuracy
    assert accuracy["colour"] == accuracy["position"] == accuracy["background"] == 1.0, accuracy


def test_measurer_reads_the_unseen_concepts():
    rng = random.Random(HELD_OUT_SEED + 1)
    scenes = [
        replace(
            s,
            shape=rng.choice(draw.ALL_SHAPES),
            colour=rng.choice(list(draw.ALL_COLOURS)),
            texture=rng.choice(draw.ALL_TEXTURES),
        )
        for s in draw.sample_scenes(300, seed=HELD_OUT_SEED + 2)
    ]
    accuracy = measure.accuracy(scenes, [draw.render(s) for s in scenes])
    assert min(accuracy.values()) >= 0.95, accuracy


def test_an_empty_image_has_no_shape():
    grey = np.full((64, 64, 3), 128, dtype=np.uint8)
    reading = measure.read(grey)
    assert reading.shape == "none" and reading.background == "gray" and reading.texture == "plain"
