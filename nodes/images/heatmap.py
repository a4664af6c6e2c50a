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
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from .curves import AXIS, BACKGROUND, GRID, PLOT_BACKGROUND, SUPERSAMPLE, TEXT, _font

Box = tuple[int, int, int, int]  # left, top, right, bottom in pixels of the final image; right and bottom exclusive

MAX_ROWS, MAX_COLUMNS = 96, 16
MAX_SIZE = 2400  # width and height never exceed it (for up to MAX_ROWS x MAX_COLUMNS)
MIN_WIDTH = 320
FLAG_COLOR = (0, 200, 255)  # the outline of flagged cells: cyan, clear of every colour of the map
DARK_TEXT, LIGHT_TEXT = BACKGROUND, (250, 250, 250)
# ColorBrewer YlOrRd, 9 classes: the colours of 0, 1/8, ..., 1 of a group's scale.
COLORMAP = (
    (255, 255, 204), (255, 237, 160), (254, 217, 118), (254, 178, 76), (253, 141, 60),
    (252, 78, 42), (227, 26, 28), (189, 0, 38), (128, 0, 38),
)  # fmt: skip

MARGIN = 12
CELL_HEIGHT = 20  # up to 64 rows; more rows get lower cells (down to 13 px)
CELL_MIN_WIDTH, CELL_MAX_WIDTH = 44, 150
LABEL_MAX = 180  # row labels and rotated column labels are shortened to this many pixels
WRAP_MAX = 96  # column labels wider than this wrap (up to 3 lines) or, failing that, turn upright
GROUP_GAP = 6  # between column groups
TITLE_SIZE, SMALL_SIZE = 11, 10
TITLE_LINE, LINE = 20, 14
LEGEND_ROW, BAR_WIDTH = 18, 120
FOOTER_LINES = 6

# Aileron (Pillow's built-in font) covers Latin only: other characters are drawn as their nearest ASCII.
_ASCII = {"‖": "||", "Δ": "d", "δ": "d", "×": "x", "−": "-", "–": "-", "—": "-", "≤": "<=", "≥": ">=", "→": "->",
          "≈": "~", "σ": "s", "‘": "'", "’": "'", "“": '"', "”": '"', "▲": "^", "▼": "v"}  # fmt: skip


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


@dataclass(frozen=True)
class HeatmapLayout:
    """What :func:`heatmap_image` draws where, in pixels of the final ``width`` x ``height`` image.

    ``cells[r][c]`` is the box of row ``r``, column ``c`` (its last pixel column and row are the gap to the next
    cell); ``groups`` are the column groups (one untitled group over all columns when none were given), ``scales``
    their full-colour values and ``bars`` their colour bars (0 at the left, the scale at the right).
    """

    width: int
    height: int
    cells: tuple[tuple[Box, ...], ...]
    groups: tuple[tuple[str, int, int], ...]
    scales: tuple[float, ...]
    bars: tuple[Box, ...]
    scale_labels: tuple[str, ...]  # written right of each bar
    rotated: bool  # column labels upright (read bottom to top) rather than horizontal
    # what is written, already fitted to its room
    title: str
    row_labels: tuple[str, ...]
    column_labels: tuple[tuple[str, ...], ...]  # lines of each column's label (one line when rotated)
    group_titles: tuple[str, ...]
    legend_titles: tuple[str, ...]
    footer: tuple[str, ...]  # lines
    texts: tuple[tuple[str, ...], ...]  # the text of each cell
    # where
    group_top: int
    header_bottom: int
    legend_top: int
    legend_title_left: int
    footer_top: int
    flag_legend: bool

    def center(self, row: int, column: int) -> tuple[float, float]:
        left, top, right, bottom = self.cells[row][column]
        return (left + right - 1) / 2, (top + bottom - 1) / 2


# --- validation -------------------------------------------------------------------------------------------------------


def _labels(name: str, labels: Sequence[str], most: int) -> list[str]:
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise ValueError(f"{name}: expected a sequence of strings, got {type(labels).__name__}")
    if not 1 <= len(labels) <= most:
        raise ValueError(f"{name}: expected 1..{most} labels, got {len(labels)}")
    for i, label in enumerate(labels):
        if not isinstance(label, str):
            raise ValueError(f"{name}[{i}]: expected a string, got {type(label).__name__}")
    return list(labels)


def _grid(name: str, grid, n_rows: int, n_columns: int) -> list[list]:
    """``grid`` as a list of ``n_rows`` lists of ``n_columns`` entries, or ValueError naming ``name``."""
    try:
        rows = [list(row) for row in grid]
    except TypeError:
        raise ValueError(f"{name}: expected {n_rows} rows of {n_columns} entries, got {type(grid).__name__}") from None
    if len(rows) != n_rows:
        raise ValueError(f"{name}: expected {n_rows} rows (one per row label), got {len(rows)}")
    for i, row in enumerate(rows):
        if len(row) != n_columns:
            raise ValueError(f"{name}[{i}]: expected {n_columns} entries (one per column), got {len(row)}")
    return rows


def _value(name: str, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, str | bytes | bool):
        raise ValueError(f"{name}: expected a number or None, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number or None, got {value!r}") from None


def _groups(groups, n_columns: int) -> list[tuple[str, int, int]]:
    if not groups:
        return [("", 0, n_columns)]
    out, covered = [], [0] * n_columns
    for i, group in enumerate(groups):
        try:
            title, start, end = group
        except (TypeError, ValueError):
            raise ValueError(f"groups[{i}]: expected (title, first column, end column), got {group!r}") from None
        if not isinstance(title, str) or any(isinstance(v, bool) or not isinstance(v, int) for v in (start, end)):
            raise ValueError(f"groups[{i}]: expected (str, int, int), got {group!r}")
        if not 0 <= start < end <= n_columns:
            raise ValueError(f"groups[{i}]: columns {start}..{end} are not a range within 0..{n_columns}")
        for c in range(start, end):
            covered[c] += 1
        out.append((title, start, end))
    if any(n != 1 for n in covered):
        bad = [c for c, n in enumerate(covered) if n != 1]
        raise ValueError(f"groups: every column must be in exactly one group; columns {bad} are not")
    return out


def _check(rows, columns, values, groups, scales, flags, number_format):
    rows = _labels("rows", rows, MAX_ROWS)
    columns = _labels("columns", columns, MAX_COLUMNS)
    grid = _grid("values", values, len(rows), len(columns))
    grid = [[_value(f"values[{r}][{c}]", v) for c, v in enumerate(row)] for r, row in enumerate(grid)]
    groups = _groups(groups, len(columns))
    if flags is None:
        flag_grid = [[False] * len(columns) for _ in rows]
    else:
        flag_grid = [[bool(f) for f in row] for row in _grid("flags", flags, len(rows), len(columns))]
    if not isinstance(number_format, str):
        raise ValueError(f"number_format: expected a format string such as '{{:.2f}}', got {number_format!r}")
    try:
        number_format.format(0.5)
    except (ValueError, TypeError, IndexError, KeyError) as error:
        raise ValueError(f"number_format: {number_format!r} does not format a number ({error})") from None
    if scales is None:
        resolved = []
        for _, start, end in groups:
            finite = [v for row in grid for v in row[start:end] if v is not None and math.isfinite(v)]
            top = max(finite, default=0.0)
            resolved.append(top if top > 0 else 1.0)
    else:
        try:
            resolved = [float(s) for s in scales]
        except (TypeError, ValueError):
            raise ValueError(f"scales: expected {len(groups)} positive numbers, got {scales!r}") from None
        if len(resolved) != len(groups):
            raise ValueError(f"scales: expected one per group ({len(groups)}), got {len(resolved)}")
        for i, s in enumerate(resolved):
            if not (math.isfinite(s) and s > 0):
                raise ValueError(f"scales[{i}]: expected a finite number > 0, got {s!r}")
    return rows, columns, grid, groups, resolved, flag_grid


# --- text ----------------------------------------------------------------------------------------------------------


class _Text:
    """Measuring and fitting text in final pixels, for the fonts drawn at ``SUPERSAMPLE`` times the size."""

    def __init__(self) -> None:
        self.title, self.small = _font(TITLE_SIZE * SUPERSAMPLE), _font(SMALL_SIZE * SUPERSAMPLE)
        self._missing = bytes(self.small.getmask("\U000f0000"))  # the font's box for characters it lacks
        self._known: dict[str, str] = {}

    def clean(self, text: str) -> str:
        """``text`` with characters the font lacks replaced (:data:`_ASCII`, else '?'), and no line breaks."""
        out = []
        for ch in " ".join(text.split()):
            if ch not in self._known:
                ok = ch == " " or bytes(self.small.getmask(ch)) != self._missing
                self._known[ch] = ch if ok else _ASCII.get(ch, "?")
            out.append(self._known[ch])
        return "".join(out)

    def width(self, text: str, title: bool = False) -> int:
        return math.ceil((self.title if title else self.small).getlength(text) / SUPERSAMPLE)

    def fit(self, text: str, room: float, middle: bool = False, title: bool = False) -> str:
        """``text`` shortened with an ellipsis (in the middle or at the end) to at most ``room`` pixels wide."""
        if self.width(text, title) <= room:
            return text
        low, high = 0, len(text)  # the most characters kept that fit
        while low < high:
            keep = (low + high + 1) // 2
            if self.width(self._cut(text, keep, middle), title) <= room:
                low = keep
            else:
                high = keep - 1
        return self._cut(text, low, middle) if low else ""

    @staticmethod
    def _cut(text: str, keep: int, middle: bool) -> str:
        if not middle:
            return text[:keep].rstrip() + "…"
        head = (keep + 1) // 2
        return text[:head] + "…" + text[len(text) - (keep - head) :]

    def wrap(self, text: str, room: float, most: int) -> list[str] | None:
        """``text`` broken after spaces, underscores, hyphens, dots or slashes into at most ``most`` lines that fit
        ``room`` pixels, or None when it cannot be."""
        lines: list[str] = []
        for token in re.findall(r"[^\s_\-./]+[_\-./]*\s*|[_\-./]+\s*|\s+", text):
            if lines and self.width((lines[-1] + token).rstrip()) <= room:
                lines[-1] += token
            elif self.width(token.rstrip()) <= room:
                lines.append(token)
            else:
                return None
        lines = [line.strip() for line in lines if line.strip()]
        return lines if len(lines) <= most else None

    def wrap_footer(self, text: str, room: float) -> list[str]:
        lines: list[str] = []
        for word in text.split(" "):
            if lines and self.width(f"{lines[-1]} {word}") <= room:
                lines[-1] += f" {word}"
            else:
                lines.append(self.fit(word, room))
        if len(lines) > FOOTER_LINES:
            lines = [*lines[: FOOTER_LINES - 1], self.fit(" ".join(lines[FOOTER_LINES - 1 :]), room)]
        return lines


def _number(value: float | None, number_format: str) -> str:
    if value is None:
        return ""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return number_format.format(value)


def _round8(n: float) -> int:
    return int(math.ceil(n / 8) * 8)


# --- layout ---------------------------------------------------------------------------------------------------------


def heatmap_layout(
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
) -> HeatmapLayout:
    """The geometry of :func:`heatmap_image` for the same arguments (validated the same way)."""
    row_names, column_names, grid, group_list, scale_list, flag_grid = _check(
        rows, columns, values, groups, scales, flags, number_format
    )
    layout, _ = _plan(row_names, column_names, grid, group_list, scale_list, flag_grid, title, footer, number_format)
    return layout


def _plan(rows, columns, grid, groups, scales, flag_grid, title, footer, number_format):
    text = _Text()
    n_rows, n_columns = len(rows), len(columns)
    cell_height = CELL_HEIGHT if n_rows <= 64 else max(13, 1280 // n_rows)
    widest = min(CELL_MAX_WIDTH, (MAX_SIZE - 600) // n_columns)

    numbers = [[text.clean(_number(v, number_format)) for v in row] for row in grid]
    number_width = max(text.width(s) for row in numbers for s in row) + 10
    names = [text.clean(c) for c in columns]
    label_width = min(max(text.width(n) for n in names) + 8, WRAP_MAX)
    cell_width = min(max(number_width, label_width, CELL_MIN_WIDTH), widest)
    texts = tuple(tuple(text.fit(s, cell_width - 4) for s in row) for row in numbers)

    wrapped = [text.wrap(n, cell_width - 4, 3) for n in names]
    rotated = any(lines is None for lines in wrapped)
    if rotated:
        column_labels = tuple((text.fit(n, LABEL_MAX, middle=True),) for n in names)
        header = max(text.width(lines[0]) for lines in column_labels) + 6
    else:
        column_labels = tuple(tuple(lines or ("",)) for lines in wrapped)
        header = max(len(lines) for lines in column_labels) * LINE + 2

    row_labels = tuple(text.fit(text.clean(r), LABEL_MAX, middle=True) for r in rows)
    grid_left = MARGIN + max(text.width(r) for r in row_labels) + 8
    starts = sorted(start for _, start, _ in groups)
    titled = len(groups) > 1 or bool(groups[0][0])

    y = MARGIN
    title = text.clean(title)
    title_width = text.width(title, title=True)
    y += TITLE_LINE if title else 0
    group_top = y
    y += LEGEND_ROW if titled else 0
    header_bottom = y + header
    grid_top = header_bottom + 4

    def x_of(column: int) -> int:
        gaps = sum(1 for s in starts if 0 < s <= column)
        return grid_left + column * cell_width + gaps * GROUP_GAP

    cells = tuple(
        tuple(
            (x_of(c), grid_top + r * cell_height, x_of(c) + cell_width, grid_top + (r + 1) * cell_height)
            for c in range(n_columns)
        )
        for r in range(n_rows)
    )
    grid_right = x_of(n_columns - 1) + cell_width

    # the legend: a colour bar per group with 0 and its scale, then the group's title
    legend_top = grid_top + n_rows * cell_height + 10
    bar_left = MARGIN + text.width("0") + 4
    scale_labels = [text.fit(text.clean(number_format.format(s)), 100) for s in scales]
    title_left = bar_left + BAR_WIDTH + 4 + max(text.width(s) for s in scale_labels) + 10
    legend_titles = tuple(text.fit(text.clean(t), 400) for t, _, _ in groups)
    clip_note = 60  # room for the note on clipped values
    legend_right = title_left + max(text.width(t) for t in legend_titles) + clip_note
    bars = tuple(
        (bar_left, legend_top + i * LEGEND_ROW + 4, bar_left + BAR_WIDTH, legend_top + i * LEGEND_ROW + 14)
        for i in range(len(groups))
    )
    flag_legend = any(any(row) for row in flag_grid)
    footer_top = legend_top + (len(groups) + flag_legend) * LEGEND_ROW + 4

    footer = text.clean(footer)
    content = max(grid_right, legend_right, MIN_WIDTH - MARGIN)
    content = max(content, min(title_width, 800 - 2 * MARGIN) + MARGIN, min(text.width(footer), 800) + MARGIN)
    width = _round8(content + MARGIN)
    title = text.fit(title, width - 2 * MARGIN, title=True)
    footer_lines = tuple(text.wrap_footer(footer, width - 2 * MARGIN)) if footer else ()
    height = _round8(footer_top + len(footer_lines) * LINE + MARGIN)

    group_titles = tuple(
        text.fit(text.clean(t), x_of(end - 1) + cell_width - x_of(start) - 4) for t, start, end in groups
    )
    layout = HeatmapLayout(
        width=width, height=height, cells=cells, groups=tuple(groups), scales=tuple(scales), bars=bars,
        scale_labels=tuple(scale_labels), rotated=rotated, title=title, row_labels=row_labels,
        column_labels=column_labels, group_titles=group_titles, legend_titles=legend_titles, footer=footer_lines,
        texts=texts, group_top=group_top, header_bottom=header_bottom, legend_top=legend_top,
        legend_title_left=title_left, footer_top=footer_top, flag_legend=flag_legend,
    )  # fmt: skip
    assert width <= MAX_SIZE and height <= MAX_SIZE, (width, height)
    return layout, text


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
    row_names, column_names, grid, group_list, scale_list, flag_grid = _check(
        rows, columns, values, groups, scales, flags, number_format
    )
    layout, text = _plan(row_names, column_names, grid, group_list, scale_list, flag_grid, title, footer, number_format)
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
