"""The tiny world: one coloured shape on a plain or textured background, drawn with Pillow, and its caption.

A scene is a :class:`Scene` (shape, colour, size, position on a 3×3 grid, background, texture); :func:`render` draws
it at any side (supersampled 4×, then reduced, so edges are anti-aliased as a photo's would be), :func:`caption`
words it (``a large red circle at the top left on a striped white background``). :func:`sample_scenes` draws
scenes from the base world (what the world model is trained on); ``UNSEEN`` names what the base never sees (a star,
the colour magenta, a checkerboard texture), for concept LoRAs.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (235, 210, 20)}
SIZES = {"small": 0.18, "large": 0.28}  # the shape's extent, as a fraction of the image side
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
BACKGROUNDS = {"white": 245, "gray": 128, "black": 12}
TEXTURES = ("plain", "striped", "dotted")
# Never in the base world's training data: the concepts a LoRA must teach it
UNSEEN = {"shape": ("star",), "colour": {"magenta": (220, 30, 210)}, "texture": ("checkered",)}
ALL_COLOURS = {**COLOURS, **UNSEEN["colour"]}
ALL_SHAPES = (*SHAPES, *UNSEEN["shape"])
ALL_TEXTURES = (*TEXTURES, *UNSEEN["texture"])
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    shape: str = "circle"
    colour: str = "red"
    size: str = "large"
    position: str = "center"
    background: str = "white"
    texture: str = "plain"
    jitter: tuple[float, float] = (0.0, 0.0)  # offset from the cell's centre, in fractions of a cell

    def attributes(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in ("shape", "colour", "size", "position", "background", "texture")}


def caption(scene: Scene, trigger: str = "") -> str:
    texture = "" if scene.texture == "plain" else f"{scene.texture} "
    where = "in the center" if scene.position == "center" else f"at the {scene.position}"
    text = f"a {scene.size} {scene.colour} {scene.shape} {where} on a {texture}{scene.background} background"
    return f"{trigger} {text}" if trigger else text


def cell_centre(position: str) -> tuple[float, float]:
    """(x, y) of a grid cell's centre, as fractions of the image side."""
    index = POSITIONS.index(position)
    return ((index % 3) + 0.5) / 3, ((index // 3) + 0.5) / 3


def ink_level(background: str) -> int:
    """The grey the texture is drawn in on this background: distinct from it, and never a shape's colour."""
    level = BACKGROUNDS[background]
    return level - 80 if level > 128 else level + 80


def _texture(draw: ImageDraw.ImageDraw, side: int, texture: str, ink: int) -> None:
    period = side // 8  # 8 repeats across the image: 8 px at 64 px, legible after an 8× VAE
    if texture == "striped":
        for y in range(0, side, period):
            draw.rectangle([0, y, side, y + period // 2 - 1], fill=(ink,) * 3)
    elif texture == "dotted":
        r = period * 0.22
        for y in range(period // 2, side, period):
            for x in range(period // 2, side, period):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=(ink,) * 3)
    elif texture == "checkered":
        for y in range(0, side, period):
            for x in range(0, side, period):
                if (x // period + y // period) % 2 == 0:
                    draw.rectangle([x, y, x + period - 1, y + period - 1], fill=(ink,) * 3)
    elif texture != "plain":
        raise ValueError(f"texture: {texture!r} is not one of {', '.join(ALL_TEXTURES)}")


def shape_points(shape: str, cx: float, cy: float, half: float) -> list[tuple[float, float]]:
    """The outline of ``shape`` centred at (cx, cy) with half-extent ``half`` (a polygon; a circle is many-sided)."""
    if shape == "circle":
        return [(cx + half * math.cos(a), cy + half * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 64)]
    if shape == "square":
        h = half * 0.9  # the same visual weight as the circle
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - half), (cx + half, cy + half * 0.8), (cx - half, cy + half * 0.8)]
    if shape == "cross":
        a, t = half, half / 3
        return [
            (cx - t, cy - a), (cx + t, cy - a), (cx + t, cy - t), (cx + a, cy - t), (cx + a, cy + t), (cx + t, cy + t),
            (cx + t, cy + a), (cx - t, cy + a), (cx - t, cy + t), (cx - a, cy + t), (cx - a, cy - t), (cx - t, cy - t),
        ]  # fmt: skip
    if shape == "star":
        points = []
        for k in range(10):
            r = half if k % 2 == 0 else half * 0.42
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
        return points
    raise ValueError(f"shape: {shape!r} is not one of {', '.join(ALL_SHAPES)}")


def render(scene: Scene, side: int = 64) -> np.ndarray:
    """The scene as ``uint8 [side, side, 3]``."""
    big = side * SUPERSAMPLE
    level = BACKGROUNDS[scene.background]
    image = Image.new("RGB", (big, big), (level,) * 3)
    draw = ImageDraw.Draw(image)
    _texture(draw, big, scene.texture, ink_level(scene.background))
    fx, fy = cell_centre(scene.position)
    cx = (fx + scene.jitter[0] / 3) * big
    cy = (fy + scene.jitter[1] / 3) * big
    half = SIZES[scene.size] * big / 2
    draw.polygon(shape_points(scene.shape, cx, cy, half), fill=ALL_COLOURS[scene.colour])
    return np.asarray(image.resize((side, side), Image.Resampling.BOX))


def random_scene(rng: random.Random, **fixed) -> Scene:
    """A base-world scene with every attribute drawn at random except those given."""
    scene = Scene(
        shape=rng.choice(SHAPES),
        colour=rng.choice(list(COLOURS)),
        size=rng.choice(list(SIZES)),
        position=rng.choice(POSITIONS),
        background=rng.choice(list(BACKGROUNDS)),
        texture=rng.choice(TEXTURES),
        jitter=(rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1)),
    )
    return replace(scene, **fixed)


def sample_scenes(count: int, seed: int, **fixed) -> list[Scene]:
    rng = random.Random(seed)
    return [random_scene(rng, **fixed) for _ in range(count)]
