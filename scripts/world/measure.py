"""Reading a world image back: which shape, colour, size, position, background and texture it shows.

Plain image statistics, no learned weights, so what a test concludes from it is easy to audit:
- the shape is the saturated pixels (the world's backgrounds and textures are grey); its colour the nearest named
  hue of their median hue; its position the grid cell of their centroid; its size their area;
- its kind from two numbers: how much of its bounding box it fills and how much of its convex hull (its solidity):
  square (1.0, 1.0), circle (0.79, 1.0), triangle (0.5, 1.0), cross (0.56, 0.72), star (0.36, 0.53);
- the background is the grey whose pair (itself and its texture's ink) most other pixels are nearest; the texture
  from the ink: none, or ~15% of the pixels in dots, or ~50% in stripes (the spectrum's energy on one axis) or checks.
Anything missing (no saturated pixels: no shape) reads as ``none``.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

try:
    from .draw import ALL_COLOURS, BACKGROUNDS, POSITIONS, SIZES, ink_level
except ImportError:  # run as a script's sibling module
    from draw import ALL_COLOURS, BACKGROUNDS, POSITIONS, SIZES, ink_level

# (fill of the bounding box, solidity) of each shape, the mean over small and large clean 64-px renders
# (anti-aliased edges make small shapes fuller than their polygons); solidity counts double (triangle vs cross)
PROTOTYPES = {
    "square": (1.0, 1.0),
    "circle": (0.78, 0.93),
    "triangle": (0.565, 0.885),
    "cross": (0.575, 0.73),
    "star": (0.44, 0.59),
}
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
    fill: float = 0.0
    solidity: float = 0.0

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


def _hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of pixel squares (their corners), by Andrew's monotone chain and the shoelace."""
    corners = np.concatenate([points + d for d in ((0, 0), (0, 1), (1, 0), (1, 1))])
    pts = sorted(set(map(tuple, corners.tolist())))
    if len(pts) < 3:
        return float(len(points))

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = lower[:-1] + upper[:-1]
    x, y = np.array(hull, dtype=float).T
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


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
    area = float(len(ys))
    box = float((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    fill, solidity = area / box, area / _hull_area(np.stack([ys, xs], axis=1))
    kind = min(PROTOTYPES, key=lambda s: (fill - PROTOTYPES[s][0]) ** 2 + 4 * (solidity - PROTOTYPES[s][1]) ** 2)
    col = min(int(xs.mean() * 3 / side), 2)
    row = min(int(ys.mean() * 3 / side), 2)
    extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / side
    size = min(SIZES, key=lambda s: abs(extent - SIZES[s]))
    colour = _colour(rgb[shape_mask])
    return Reading(kind, colour, size, POSITIONS[row * 3 + col], background, texture, fill, solidity)


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
