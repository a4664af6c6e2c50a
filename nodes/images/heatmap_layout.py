"""The geometry of a heatmap IMAGE: what :func:`heatmap.heatmap_image` draws where, and the checks of its inputs."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .canvas import SUPERSAMPLE, font

Box = tuple[int, int, int, int]  # left, top, right, bottom in pixels of the final image; right and bottom exclusive

MAX_ROWS, MAX_COLUMNS = 96, 16
MAX_SIZE = 2400  # width and height never exceed it (for up to MAX_ROWS x MAX_COLUMNS)
MIN_WIDTH = 320
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


def check_inputs(rows, columns, values, groups, scales, flags, number_format):
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
        self.title, self.small = font(TITLE_SIZE * SUPERSAMPLE), font(SMALL_SIZE * SUPERSAMPLE)
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
    row_names, column_names, grid, group_list, scale_list, flag_grid = check_inputs(
        rows, columns, values, groups, scales, flags, number_format
    )
    layout, _ = plan(row_names, column_names, grid, group_list, scale_list, flag_grid, title, footer, number_format)
    return layout


def plan(rows, columns, grid, groups, scales, flag_grid, title, footer, number_format):
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
