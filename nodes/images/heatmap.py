"""Heatmap IMAGEs: a table of numbers per block (rows) and column (LoRAs, combined, overlap), each cell coloured on
its column group's scale, with its number on top, outlines on flagged cells, a colour bar per group and a footer.

numpy + Pillow (+ torch for the IMAGE tensor; no ComfyUI, no matplotlib), in the style of :mod:`.curve_image` (its
fonts and colours; drawn at twice the size and scaled down). :func:`heatmap_layout` is the geometry that
:func:`heatmap_image` draws (tests use it to find the cells).

The colour map is ColorBrewer's YlOrRd (pale yellow -> orange -> dark red, lightness falling monotonically),
interpolated from a small table: :func:`colormap`. Each group maps ``0..scale`` onto it; values outside are clipped
and get a corner mark. ``None`` cells are hatched grey; non-finite values are hatched with their text (nan, inf).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .canvas import AXIS, BACKGROUND, GRID, PLOT_BACKGROUND, SUPERSAMPLE, TEXT
from .heatmap_layout import (
    LEGEND_ROW,
    LINE,
    MARGIN,
    MAX_COLUMNS,
    MAX_ROWS,
    MAX_SIZE,
    Box,
    HeatmapLayout,
    check_inputs,
    heatmap_layout,
    plan,
)

__all__ = [
    "BACKGROUND", "COLORMAP", "DARK_TEXT", "FLAG_COLOR", "GRID", "LIGHT_TEXT", "MAX_COLUMNS", "MAX_ROWS", "MAX_SIZE",
    "PLOT_BACKGROUND", "HeatmapLayout", "colormap", "heatmap_image", "heatmap_layout", "text_color",
]  # fmt: skip

FLAG_COLOR = (0, 200, 255)  # the outline of flagged cells: cyan, clear of every colour of the map
DARK_TEXT, LIGHT_TEXT = BACKGROUND, (250, 250, 250)
# ColorBrewer YlOrRd, 9 classes: the colours of 0, 1/8, ..., 1 of a group's scale.
COLORMAP = (
    (255, 255, 204), (255, 237, 160), (254, 217, 118), (254, 178, 76), (253, 141, 60),
    (252, 78, 42), (227, 26, 28), (189, 0, 38), (128, 0, 38),
)  # fmt: skip


def colormap(t: float) -> tuple[int, int, int]:
    """The colour of ``t`` in 0..1 (clipped) on :data:`COLORMAP`, interpolated linearly between its entries."""
    t = min(max(float(t), 0.0), 1.0) * (len(COLORMAP) - 1)
    i = min(int(t), len(COLORMAP) - 2)
    f = t - i
    a, b = COLORMAP[i], COLORMAP[i + 1]
    return tuple(round(a[c] + (b[c] - a[c]) * f) for c in range(3))  # type: ignore[return-value]


def _luminance(color: Sequence[int]) -> float:
    linear = [(c / 255) / 12.92 if c <= 10 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in color]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def text_color(fill: Sequence[int]) -> tuple[int, int, int]:
    """Dark or light text, whichever contrasts more with ``fill`` (WCAG contrast ratio)."""
    lum = _luminance(fill)
    dark = (lum + 0.05) / (_luminance(DARK_TEXT) + 0.05)
    light = (_luminance(LIGHT_TEXT) + 0.05) / (lum + 0.05)
    return DARK_TEXT if dark >= light else LIGHT_TEXT


# --- drawing --------------------------------------------------------------------------------------------------------


def _hatch(width: int, height: int) -> Image.Image:
    k = SUPERSAMPLE
    tile = Image.new("RGB", (width, height), PLOT_BACKGROUND)
    draw = ImageDraw.Draw(tile)
    for x in range(0, width + height, 6 * k):
        draw.line((x, 0, x - height, height), fill=GRID, width=k)
    return tile


def _corner(draw: ImageDraw.ImageDraw, box: Box, color, up: bool) -> None:
    """A small triangle in the top-right (``up``: above the scale) or bottom-left corner (below 0) of ``box``."""
    k, size = SUPERSAMPLE, 6
    left, top, right, bottom = (v * k for v in box)
    right, bottom = right - 2 * k, bottom - 2 * k  # inside the gap and the flag outline
    left, top = left + 2 * k, top + 2 * k
    if up:
        draw.polygon([(right - size * k, top), (right, top), (right, top + size * k)], fill=color)
    else:
        draw.polygon([(left, bottom - size * k), (left, bottom), (left + size * k, bottom)], fill=color)


def heatmap_image(
    rows: Sequence[str],
    columns: Sequence[str],
    values: Sequence[Sequence[float | None]],
    *,
    groups: Sequence[tuple[str, int, int]] = (),
    scales: Sequence[float] | None = None,
    flags: Sequence[Sequence[bool]] | None = None,
    title: str = "",
    footer: str = "",
    number_format: str = "{:.2f}",
) -> torch.Tensor:
    """An IMAGE ``[1, H, W, 3]`` (float 0..1) of ``values[row][column]`` as a table of coloured cells.

    ``rows`` label the rows (left), ``columns`` the columns (top; wrapped, or upright when they do not wrap; long
    ones shortened with an ellipsis). ``groups`` split the columns into ranges ``(title, first, end)`` that together
    cover every column once, each with its own colour scale from 0 to ``scales[i]`` (default: the group's largest
    finite value) and its colour bar; values outside it are clipped and marked in a corner. ``None`` is no data (a
    grey hatch), non-finite values are hatched with 'nan' or 'inf'. ``flags[row][column]`` outlines a cell in
    :data:`FLAG_COLOR`. ``title`` goes above, ``footer`` below (wrapped). Each cell shows its value formatted with
    ``number_format``, in dark or light text by its colour.

    Up to :data:`MAX_ROWS` rows and :data:`MAX_COLUMNS` columns; H and W are multiples of 8, at most
    :data:`MAX_SIZE`. Bad arguments raise ValueError naming the argument. Geometry: :func:`heatmap_layout`.
    """
    row_names, column_names, grid, group_list, scale_list, flag_grid = check_inputs(
        rows, columns, values, groups, scales, flags, number_format
    )
    layout, text = plan(row_names, column_names, grid, group_list, scale_list, flag_grid, title, footer, number_format)
    k = SUPERSAMPLE
    image = Image.new("RGB", (layout.width * k, layout.height * k), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font, small = text.title, text.small

    if layout.title:
        draw.text((MARGIN * k, MARGIN * k), layout.title, fill=TEXT, font=font, anchor="lt")

    group_of = [0] * len(column_names)
    for g, (_, start, end) in enumerate(layout.groups):
        for c in range(start, end):
            group_of[c] = g
        if len(layout.groups) > 1 or layout.group_titles[g]:
            left, right = layout.cells[0][start][0], layout.cells[0][end - 1][2] - 1
            y = layout.group_top + LEGEND_ROW - 4
            draw.line((left * k, y * k, right * k, y * k), fill=AXIS, width=k)
            draw.text(((left + right) / 2 * k, (y - 2) * k), layout.group_titles[g], fill=TEXT, font=small,
                      anchor="mb")  # fmt: skip

    for c, lines in enumerate(layout.column_labels):
        left, _, right, _ = layout.cells[0][c]
        middle = (left + right - 1) / 2 * k
        if layout.rotated:
            label = lines[0]
            strip = Image.new("L", (max(1, text.width(label) * k + 2 * k), LINE * k), 0)
            ImageDraw.Draw(strip).text((0, LINE * k / 2), label, fill=255, font=small, anchor="lm")
            strip = strip.rotate(90, expand=True)
            x, y = round(middle - strip.width / 2), (layout.header_bottom - 2) * k - strip.height
            image.paste(TEXT, (x, y, x + strip.width, y + strip.height), strip)
        else:
            for i, line in enumerate(lines):
                y = (layout.header_bottom - (len(lines) - 1 - i) * LINE) * k
                draw.text((middle, y), line, fill=TEXT, font=small, anchor="mb")

    hatch: Image.Image | None = None
    for r, label in enumerate(layout.row_labels):
        left, top, _, bottom = layout.cells[r][0]
        draw.text(((left - 6) * k, (top + bottom - 1) / 2 * k), label, fill=TEXT, font=small, anchor="rm")
        for c, value in enumerate(grid[r]):
            left, top, right, bottom = layout.cells[r][c]
            inner = (left * k, top * k, (right - 1) * k - 1, (bottom - 1) * k - 1)
            if value is None or not math.isfinite(value):
                if hatch is None:
                    hatch = _hatch(inner[2] - inner[0] + 1, inner[3] - inner[1] + 1)
                image.paste(hatch, inner[:2])
                ink = TEXT
            else:
                scale = layout.scales[group_of[c]]
                fill = colormap(value / scale)
                draw.rectangle(inner, fill=fill)
                ink = text_color(fill)
                if value > scale or value < 0:
                    _corner(draw, layout.cells[r][c], ink, up=value > scale)
            if flag_grid[r][c]:
                draw.rectangle(inner, outline=FLAG_COLOR, width=3 * k)
            if layout.texts[r][c]:
                center = ((left + right - 1) / 2 * k, (top + bottom - 1) / 2 * k)
                draw.text(center, layout.texts[r][c], fill=ink, font=small, anchor="mm")

    for g, (left, top, right, bottom) in enumerate(layout.bars):
        span = (right - left) * k
        for i in range(span):
            draw.line((left * k + i, top * k, left * k + i, bottom * k - 1), fill=colormap(i / (span - 1)))
        middle = (top + bottom) / 2 * k
        draw.text(((left - 4) * k, middle), "0", fill=TEXT, font=small, anchor="rm")
        draw.text(((right + 4) * k, middle), layout.scale_labels[g], fill=TEXT, font=small, anchor="lm")
        title_left = layout.legend_title_left
        draw.text((title_left * k, middle), layout.legend_titles[g], fill=TEXT, font=small, anchor="lm")
        _, start, end = layout.groups[g]
        scale = layout.scales[g]
        clipped = any(
            v is not None and math.isfinite(v) and (v > scale or v < 0) for row in grid for v in row[start:end]
        )
        if clipped:
            x = title_left + text.width(layout.legend_titles[g]) + 10
            _corner(draw, (x, top - 4, x + 10, top + 6), TEXT, up=True)
            draw.text(((x + 12) * k, middle), "clipped", fill=AXIS, font=small, anchor="lm")
    if layout.flag_legend:
        top = layout.legend_top + len(layout.bars) * LEGEND_ROW + 2
        left = layout.bars[0][0] if layout.bars else MARGIN
        draw.rectangle((left * k, top * k, (left + 20) * k, (top + 12) * k), outline=FLAG_COLOR, width=2 * k)
        draw.text(((left + 26) * k, (top + 6) * k), "flagged", fill=TEXT, font=small, anchor="lm")

    for i, line in enumerate(layout.footer):
        draw.text((MARGIN * k, (layout.footer_top + i * LINE) * k), line, fill=TEXT, font=small, anchor="lt")

    image = image.resize((layout.width, layout.height), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).clamp_(0.0, 1.0).unsqueeze(0)
