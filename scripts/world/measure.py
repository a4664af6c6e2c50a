"""Reading a world image back: which shape, colour, size, position, background and texture it shows.

Plain image statistics, no learned weights, so what a test concludes from it is easy to audit:
- the shape is the saturated pixels (the world's backgrounds and textures are grey); its colour the nearest named
  hue of their median hue; its position the grid cell of their centroid; its size their area;
- its kind by template: each shape drawn (as the world draws it, anti-aliased) over the saturated pixels' bounding
  box at a few scales and offsets, the best soft overlap (intersection over union of coverage in [0, 1]) wins;
  coverage, not a hard mask, so a VAE's soft edges read as what they are;
- the background is the grey whose pair (itself and its texture's ink) most other pixels are nearest; the texture
  from the ink: none, or ~15% of the pixels in dots, or ~50% in stripes (the spectrum's energy on one axis) or checks.
Anything missing (no saturated pixels: no shape) reads as ``none``.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

try:
    from .draw import ALL_COLOURS, ALL_SHAPES, BACKGROUNDS, POSITIONS, SIZES, ink_level, shape_points
except ImportError:  # run as a script's sibling module
    from draw import ALL_COLOURS, ALL_SHAPES, BACKGROUNDS, POSITIONS, SIZES, ink_level, shape_points

HUES = {name: colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] * 360 for name, rgb in ALL_COLOURS.items()}
MIN_CHROMA = 70  # max - min of a pixel's RGB for it to be the shape's (the world's greys are at 0)


@dataclass(frozen=True)
class Reading:
    shape: str
    colour: str
    size: str
    position: str
    background: str
    texture: str
    overlap: float = 0.0  # the winning template's soft intersection over union with the shape's coverage

    def attributes(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in ("shape", "colour", "size", "position", "background", "texture")}


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (a flood fill; images here are tiny)."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    best, best_size, current = 0, 0, 0
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if labels[y0, x0]:
            continue
        current += 1
        stack, size = [(y0, x0)], 0
        labels[y0, x0] = current
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    stack.append((ny, nx))
        if size > best_size:
            best, best_size = current, size
    return labels == best


def _colour(pixels: np.ndarray) -> str:
    hsv = np.array([colorsys.rgb_to_hsv(*(p / 255)) for p in pixels])
    angles = hsv[:, 0] * 2 * np.pi  # circular mean: red sits at both ends of the hue circle
    hue = (np.degrees(np.arctan2(np.sin(angles).mean(), np.cos(angles).mean())) + 360) % 360
    return min(HUES, key=lambda name: min(abs(hue - HUES[name]), 360 - abs(hue - HUES[name])))


def _texture(grey: np.ndarray, known: np.ndarray, background: str) -> str:
    """Stripes, dots, checks or plain: how much of the grey is ink (dots ~15%, stripes and checks ~50%) and where
    the spectrum of the ink puts its energy (stripes: one axis)."""
    side = grey.shape[0]
    level, ink_value = BACKGROUNDS[background], ink_level(background)
    ink = np.where(known, np.abs(grey - ink_value) < np.abs(grey - level), False)
    fraction = float(ink[known].mean()) if known.any() else 0.0
    if fraction < 0.05:
        return "plain"
    centred = np.where(known, ink - fraction, 0.0)
    power = np.abs(np.fft.fft2(centred)) ** 2
    k = np.arange(side)
    near = np.minimum(k, side - k)  # |frequency| per index
    fy, fx = np.meshgrid(near, near, indexing="ij")
    low = (fy <= side // 4) & (fx <= side // 4) & ((fy > 1) | (fx > 1))
    y_axis = power[low & (fx <= 1)].sum()  # horizontal stripes vary along y
    x_axis = power[low & (fy <= 1)].sum()
    if min(x_axis, y_axis) < 0.25 * max(x_axis, y_axis):
        return "striped"
    return "dotted" if fraction < 0.32 else "checkered"


def read(image: np.ndarray) -> Reading:
    """What a world image (``uint8`` or float in [0, 1], ``[H, W, 3]``, square) shows."""
    rgb = np.asarray(image, dtype=float)
    if rgb.max() <= 1.0:
        rgb = rgb * 255
    side = rgb.shape[0]
    chroma = rgb.max(axis=2) - rgb.min(axis=2)
    grey = rgb.mean(axis=2)
    mask = chroma > MIN_CHROMA
    # the background: the world's grey whose pair (itself and its texture's ink) most unsaturated pixels are nearest
    pairs = {name: (level, ink_level(name)) for name, level in BACKGROUNDS.items()}
    values = np.array([v for pair in pairs.values() for v in pair], dtype=float)
    flat = grey[~mask]
    nearest = np.abs(flat[:, None] - values[None, :]).argmin(axis=1) if flat.size else np.zeros(0, int)
    counts = np.bincount(nearest, minlength=len(values)).reshape(len(pairs), 2).sum(axis=1)
    background = list(pairs)[int(counts.argmax())]
    known = ~_grow(mask)  # around the shape, anti-aliased edges are neither shape nor background
    texture = _texture(grey, known, background)
    if mask.sum() < 4:
        return Reading("none", "none", "none", "none", background, texture)
    shape_mask = _largest_component(mask)
    ys, xs = np.nonzero(shape_mask)
    coverage = np.clip((chroma - 20) / (MIN_CHROMA * 2 - 20), 0, 1) * _grow(shape_mask, 3)
    kind, overlap = _kind(coverage, ys, xs)
    col = min(int(xs.mean() * 3 / side), 2)
    row = min(int(ys.mean() * 3 / side), 2)
    extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / side
    size = min(SIZES, key=lambda s: abs(extent - SIZES[s]))
    colour = _colour(rgb[shape_mask])
    return Reading(kind, colour, size, POSITIONS[row * 3 + col], background, texture, overlap)


def _template(shape: str, side: int, box: tuple[float, float, float, float]) -> np.ndarray:
    """Coverage in [0, 1] of ``shape`` drawn to fill the bounding box ``(y0, x0, y1, x1)`` (pixel edges) at its
    own aspect: the longer side of its outline matches the box's longer side."""
    unit = np.array(shape_points(shape, 0.0, 0.0, 1.0))
    lo, hi = unit.min(axis=0), unit.max(axis=0)
    y0, x0, y1, x1 = box
    scale = max(x1 - x0, y1 - y0) / float((hi - lo).max())
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2]) - (lo + hi) / 2 * scale
    k = 4  # supersampled, as the world draws
    image = Image.new("L", (side * k, side * k), 0)
    ImageDraw.Draw(image).polygon([tuple(p) for p in (unit * scale + centre) * k], fill=255)
    return np.asarray(image.resize((side, side), Image.Resampling.BOX), dtype=float) / 255


def _kind(coverage: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> tuple[str, float]:
    """The shape whose template best overlaps ``coverage``, over the box's scale ±12% and offsets of ±1 px."""
    side = coverage.shape[0]
    box = (float(ys.min()), float(xs.min()), float(ys.max() + 1), float(xs.max() + 1))
    cy, cx = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    best, best_score = "none", -1.0
    for shape in ALL_SHAPES:
        for scale in (0.88, 1.0, 1.12):
            for dy, dx in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)):
                y0, y1 = cy + dy + (box[0] - cy) * scale, cy + dy + (box[2] - cy) * scale
                x0, x1 = cx + dx + (box[1] - cx) * scale, cx + dx + (box[3] - cx) * scale
                t = _template(shape, side, (y0, x0, y1, x1))
                score = float(np.minimum(t, coverage).sum() / max(np.maximum(t, coverage).sum(), 1e-6))
                if score > best_score:
                    best, best_score = shape, score
    return best, best_score


def _grow(mask: np.ndarray, steps: int = 2) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def accuracy(scenes, images) -> dict[str, float]:
    """Per attribute, the fraction of images read as their scene says."""
    readings = [read(image) for image in images]
    keys = ("shape", "colour", "size", "position", "background", "texture")
    return {
        k: sum(getattr(r, k) == getattr(s, k) for r, s in zip(readings, scenes, strict=True)) / len(scenes)
        for k in keys
    }
