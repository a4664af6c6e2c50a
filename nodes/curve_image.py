"""The preview IMAGE of strength schedules: curves over sampling progress, a dot per sampling step, a legend.

Pure numpy + Pillow (no ComfyUI). Drawn at twice the size and scaled down, so lines are smooth. :class:`Layout`
maps progress and strength to pixels of the final image (tests use it to find the curve).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..lora_math.schedule import Schedule

WIDTH, HEIGHT = 512, 256
SUPERSAMPLE = 2
BACKGROUND = (24, 29, 37)
PLOT_BACKGROUND = (31, 38, 48)
GRID = (52, 62, 76)
AXIS = (120, 132, 148)
TEXT = (205, 212, 222)
# The first curve's colour is the one tests look for; the others are for per-block curves.
COLORS = ((255, 170, 60), (90, 200, 250), (140, 220, 120), (240, 110, 150), (190, 150, 255), (250, 225, 90))


@dataclass(frozen=True)
class Layout:
    """Pixel geometry of the plot in the final ``WIDTH`` x ``HEIGHT`` image; strength ``low..high`` spans it."""

    low: float
    high: float
    left: float = 46.0
    right: float = WIDTH - 14.0
    top: float = 24.0
    bottom: float = HEIGHT - 26.0

    def x_of(self, progress: float) -> float:
        return self.left + progress * (self.right - self.left)

    def y_of(self, strength: float) -> float:
        return self.bottom - (strength - self.low) / (self.high - self.low) * (self.bottom - self.top)


def strength_range(schedules: list[Schedule]) -> tuple[float, float]:
    """0..1 widened to every keyframe (no mode overshoots its keyframes), with a little room."""
    strengths = [s for schedule in schedules for _, s in schedule.keyframes]
    low, high = min(0.0, *strengths), max(1.0, *strengths)
    pad = (high - low) * 0.06
    return low - pad, high + pad


def _ticks(low: float, high: float) -> list[float]:
    raw = (high - low) / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [round(first + i * step, 10) for i in range(int((high - first) / step) + 1)]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def render(curves: list[tuple[str, Schedule]], num_steps: int, title: str = "") -> np.ndarray:
    """``HEIGHT`` x ``WIDTH`` x 3 uint8: each (label, progress schedule) as a curve with dots at its ``num_steps``
    step strengths; a legend when there is more than one curve."""
    k = SUPERSAMPLE
    layout = Layout(*strength_range([s for _, s in curves]))
    image = Image.new("RGB", (WIDTH * k, HEIGHT * k), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font, small = _font(11 * k), _font(10 * k)

    def xy(progress: float, strength: float) -> tuple[float, float]:
        return layout.x_of(progress) * k, layout.y_of(strength) * k

    draw.rectangle((layout.left * k, layout.top * k, layout.right * k, layout.bottom * k), fill=PLOT_BACKGROUND)
    for tick in _ticks(layout.low, layout.high):
        y = layout.y_of(tick) * k
        draw.line((layout.left * k, y, layout.right * k, y), fill=AXIS if tick in (0, 1) else GRID, width=k)
        draw.text(((layout.left - 5) * k, y), f"{tick:g}", fill=TEXT, font=small, anchor="rm")
    for progress in (0, 0.25, 0.5, 0.75, 1):
        x = layout.x_of(progress) * k
        draw.line((x, layout.top * k, x, layout.bottom * k), fill=GRID, width=k)
        draw.text((x, (layout.bottom + 4) * k), f"{progress:g}", fill=TEXT, font=small, anchor="mt")
    draw.text((layout.right * k, (HEIGHT - 2) * k), "progress", fill=AXIS, font=small, anchor="rb")
    draw.text((4 * k, (HEIGHT - 2) * k), f"{num_steps} steps", fill=AXIS, font=small, anchor="lb")
    if len(title) > 80:
        title = title[:77] + "..."
    draw.text((layout.left * k, 6 * k), title, fill=TEXT, font=font, anchor="lt")

    columns = int((layout.right - layout.left) * k) + 1
    for index, (_, schedule) in reversed(list(enumerate(curves))):  # the first curve on top
        color = COLORS[index % len(COLORS)]
        points = [xy(c / (columns - 1), schedule.at(c / (columns - 1))) for c in range(columns)]
        draw.line(points, fill=color, width=2 * k, joint="curve")
        radius = (3 if len(curves) == 1 else 2) * k
        for i, strength in enumerate(schedule.values(num_steps)):
            x, y = xy(i / num_steps, strength)
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=color, outline=BACKGROUND)
        if len(curves) == 1 and len(schedule.keyframes) <= 8:
            for position, strength in schedule.keyframes:
                x, y = xy(position, strength)
                anchor = "lb" if position < 0.85 else "rb"
                draw.text((x + (4 if anchor == "lb" else -4) * k, y - 4 * k), f"{strength:g}", fill=color, font=small,
                          anchor=anchor)  # fmt: skip
    if len(curves) > 1:
        x, y = (layout.left + 8) * k, (layout.top + 6) * k
        for index, (label, _) in enumerate(curves):
            color = COLORS[index % len(COLORS)]
            draw.rectangle((x, y + 3 * k, x + 10 * k, y + 9 * k), fill=color)
            draw.text((x + 14 * k, y), label, fill=TEXT, font=small, anchor="lt")
            y += 13 * k
    image = image.resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)
