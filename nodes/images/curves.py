"""Chart IMAGEs: strength schedules (curves over sampling progress, a dot per sampling step, a legend) and a training
run's loss curve (:func:`loss_image`).

numpy + Pillow (+ torch for the IMAGE tensor; no ComfyUI). Drawn at twice the size and scaled down, so lines are
smooth. :class:`Layout` maps progress and strength (or loss) to pixels of the final image (tests use it to find the
curve).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from ...lora_math.schedule import Schedule
from . import canvas
from .canvas import AXIS, BACKGROUND, GRID, PLOT_BACKGROUND, SUPERSAMPLE, TEXT

WIDTH, HEIGHT = 512, 256
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


def render(curves: list[tuple[str, Schedule]], num_steps: int, title: str = "") -> np.ndarray:
    """``HEIGHT`` x ``WIDTH`` x 3 uint8: each (label, progress schedule) as a curve with dots at its ``num_steps``
    step strengths; a legend when there is more than one curve."""
    k = SUPERSAMPLE
    layout = Layout(*strength_range([s for _, s in curves]))
    image = Image.new("RGB", (WIDTH * k, HEIGHT * k), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font, small = canvas.font(11 * k), canvas.font(10 * k)

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


# --- the loss curve of a training run -------------------------------------------------------------------------------

LOSS_COLOR = (74, 132, 178)  # the raw loss per step: a thin, muted line
EMA_COLOR = COLORS[0]  # its exponential moving average: a bold line
MIN_SIZE, MAX_SIZE = 128, 4096


def loss_ema(history: Sequence[float]) -> list[float]:
    """The bias-corrected exponential moving average of ``history`` (as TensorBoard's smoothing).

    The span grows with the run: ``span = clamp(round(n / 10), 2, 100)`` steps, ``beta = 1 - 2 / (span + 1)``.
    Non-finite values are skipped (the average holds); before the first finite value it is NaN.
    """
    values = [float(v) for v in history]
    span = min(100, max(2, round(len(values) / 10)))
    beta = 1.0 - 2.0 / (span + 1)
    average, weight, out = 0.0, 0.0, []
    for value in values:
        if math.isfinite(value):
            average = beta * average + (1.0 - beta) * value
            weight = beta * weight + (1.0 - beta)
        out.append(average / weight if weight > 0 else math.nan)
    return out


def _check_size(width: int, height: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or not MIN_SIZE <= value <= MAX_SIZE:
            raise ValueError(f"{name}: must be a whole number of pixels in {MIN_SIZE}..{MAX_SIZE}, got {value!r}")


def loss_layout(history: Sequence[float], width: int = WIDTH, height: int = HEIGHT) -> Layout:
    """The plot geometry of :func:`loss_image`: ``y_of(loss)`` is a loss's row; step ``i`` (0-based, of ``n``) is at
    ``x_of(i / (n - 1))`` (one step: ``x_of(0.5)``).

    The loss range spans every finite loss and the moving average, with a little room (±5% around a constant loss);
    past 20 steps its top is the
    98th percentile of the losses or the average's maximum, whichever is higher, so that a few spikes do not flatten
    the curve (they are cut at the top edge).
    """
    _check_size(width, height)
    raw = np.array([float(v) for v in history], dtype=np.float64)
    raw = raw[np.isfinite(raw)]
    if raw.size == 0:
        low, high = 0.0, 1.0
    else:
        ema = np.array(loss_ema(history))
        ema = ema[np.isfinite(ema)]
        top = float(raw.max()) if raw.size <= 20 else float(np.quantile(raw, 0.98))
        low, high = float(min(raw.min(), ema.min())), max(top, float(ema.max()))
        flat = high - low <= 1e-9 * max(abs(low), abs(high))  # one value (up to the average's rounding)
        pad = max(abs(high) * 0.05, 1e-3) if flat else (high - low) * 0.06
        low, high = low - pad, high + pad
    return Layout(low, high, left=52.0, right=width - 14.0, top=24.0, bottom=height - 26.0)


def _step_ticks(n: int, plot_width: float) -> list[int]:
    """Step numbers (1-based) for the x axis of an ``n``-step run: 1, ``n`` and round numbers about 80 px apart."""
    if n <= 1:
        return [1]
    raw = (n - 1) / max(1.0, plot_width / 80)
    magnitude = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    step = next(int(m * magnitude) for m in (1, 2, 5, 10) if m * magnitude >= raw)
    gap = (n - 1) * 36 / plot_width  # keep round ticks 36 px clear of the end ticks' labels
    return [1, *(t for t in range(step, n, step) if t - 1 >= gap and n - t >= gap), n]


def loss_image(history: Sequence[float], width: int = WIDTH, height: int = HEIGHT) -> torch.Tensor:
    """An IMAGE ``[1, height, width, 3]`` (float 0..1) of a training run's loss per step.

    The loss of each step as a thin line (:data:`LOSS_COLOR`), its moving average (:func:`loss_ema`) as a bold one
    (:data:`EMA_COLOR`), step numbers (from 1) on the x axis, loss values on the y axis, the last values in the title.
    Non-finite losses leave gaps and are counted in the title; an empty history draws the empty axes with 'no steps
    yet'. Geometry: :func:`loss_layout`.
    """
    layout = loss_layout(history, width, height)
    values = [float(v) for v in history]
    n = len(values)
    k = SUPERSAMPLE
    image = Image.new("RGB", (width * k, height * k), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font, small = canvas.font(11 * k), canvas.font(10 * k)

    def x_at(i: int) -> float:
        return layout.x_of(i / (n - 1) if n > 1 else 0.5) * k

    def y_at(loss: float) -> float:
        return min(max(layout.y_of(loss), layout.top), layout.bottom) * k

    draw.rectangle((layout.left * k, layout.top * k, layout.right * k, layout.bottom * k), fill=PLOT_BACKGROUND)
    for tick in _ticks(layout.low, layout.high):
        y = layout.y_of(tick) * k
        draw.line((layout.left * k, y, layout.right * k, y), fill=GRID, width=k)
        draw.text(((layout.left - 5) * k, y), f"{tick:g}", fill=TEXT, font=small, anchor="rm")
    for step in _step_ticks(n, layout.right - layout.left) if n else []:
        x = x_at(step - 1)
        draw.line((x, layout.top * k, x, layout.bottom * k), fill=GRID, width=k)
        draw.text((x, (layout.bottom + 4) * k), str(step), fill=TEXT, font=small, anchor="mt")
    draw.text((layout.right * k, (height - 2) * k), "step", fill=AXIS, font=small, anchor="rb")
    draw.text((4 * k, 6 * k), "loss", fill=AXIS, font=small, anchor="lt")

    finite = [i for i, v in enumerate(values) if math.isfinite(v)]
    if not finite:
        draw.text(
            ((layout.left + layout.right) / 2 * k, (layout.top + layout.bottom) / 2 * k),
            "no steps yet" if n == 0 else f"no finite loss in {n} steps",
            fill=TEXT, font=font, anchor="mm",
        )  # fmt: skip
    else:
        ema = loss_ema(values)
        for series, color, line in ((values, LOSS_COLOR, k), (ema, EMA_COLOR, 3 * k)):
            run: list[tuple[float, float]] = []
            for i, v in enumerate([*series, math.nan]):  # a NaN at the end flushes the last run
                if math.isfinite(v):
                    run.append((x_at(i), y_at(v)))
                    continue
                if len(run) > 1:
                    draw.line(run, fill=color, width=line, joint="curve")
                elif run:
                    (x, y), radius = run[0], line
                    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=color)
                run = []
        bad = n - len(finite)
        if width >= 400:  # room for the whole title and a legend
            title = f"{n} step{'s' if n > 1 else ''}   loss {values[finite[-1]]:.4g}   avg {ema[-1]:.4g}"
            title += f"   {bad} not finite" if bad else ""
            x, y = (layout.right - 120) * k, 7 * k
            for label, color, line in (("loss", LOSS_COLOR, k), ("average", EMA_COLOR, 3 * k)):
                draw.line((x, y + 5 * k, x + 14 * k, y + 5 * k), fill=color, width=line)
                draw.text((x + 18 * k, y), label, fill=TEXT, font=small, anchor="lt")
                x += 56 * k
        else:
            title = f"avg {ema[-1]:.3g}"
        draw.text((layout.left * k, 6 * k), title, fill=TEXT, font=font, anchor="lt")
    image = image.resize((width, height), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).clamp_(0.0, 1.0).unsqueeze(0)
