"""nodes.images.heatmap: the per-block heatmap IMAGE (shape, bounds, cell colours by value and group scale, text
contrast, flag outlines, no-data cells, labels that do not collide, argument errors, determinism)."""

import importlib
import math

import numpy as np
import pytest

pytestmark = pytest.mark.pinned_only  # image drawing, no ComfyUI version in it: runs once, on 0.3.75

ROWS = ["IN04", "IN05", "MID", "OUT03", "TE"]
COLUMNS = ["lora_a.safetensors", "lora_b", "combined", "max overlap"]
GROUPS = [("relative update ‖sΔW‖/‖W‖", 0, 3), ("overlap |cos|", 3, 4)]


@pytest.fixture(scope="module")
def hm(pack):
    return importlib.import_module(f"{pack.__name__}.nodes.images.heatmap")


def pixels(tensor) -> np.ndarray:
    return (tensor[0].numpy() * 255).round().astype(np.uint8)


def near(image: np.ndarray, color, tolerance: int = 40) -> np.ndarray:
    return np.abs(image.astype(int) - np.array(color)).sum(axis=-1) < tolerance


def inside(image: np.ndarray, box, inset: int = 4) -> np.ndarray:
    left, top, right, bottom = box
    return image[top + inset : bottom - 1 - inset, left + inset : right - 1 - inset]


def fill_of(image: np.ndarray, box) -> np.ndarray:
    """The most common colour inside a cell (its fill: the number on top covers less of it)."""
    colors, counts = np.unique(inside(image, box).reshape(-1, 3), axis=0, return_counts=True)
    return colors[counts.argmax()].astype(int)


def lightness(color) -> np.ndarray | float:
    """Luma of a colour or of each pixel of an image."""
    return np.asarray(color, dtype=float) @ np.array([0.2126, 0.7152, 0.0722])


def written(region: np.ndarray) -> int:
    """How many pixels of a region on the dark background are text (small text is thin: after scaling down its
    strokes rarely reach the full text colour)."""
    return int((lightness(region) > 120).sum())


def saturation(color) -> float:
    return float(max(color) - min(color))


def sample(n_rows: int = 5, n_columns: int = 4, seed: int = 0) -> list[list[float]]:
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n_rows, n_columns)).round(3).tolist()


def draw(hm, values, rows=ROWS, columns=COLUMNS, **kwargs):
    image = hm.heatmap_image(rows, columns, values, **kwargs)
    return pixels(image), hm.heatmap_layout(rows, columns, values, **kwargs)


@pytest.mark.parametrize(
    ("n_rows", "n_columns", "kwargs"),
    [
        (1, 1, {}),
        (5, 4, {"groups": GROUPS, "title": "3 LoRAs", "footer": "flags: IN05 overlap 0.91 (A×B)"}),
        (60, 12, {"groups": [("update", 0, 10), ("overlap", 10, 12)]}),
    ],
)
def test_is_an_image_tensor(hm, n_rows, n_columns, kwargs):
    import torch

    rows = [f"B{i:02d}" for i in range(n_rows)]
    columns = [f"L{i}" for i in range(n_columns)]
    image = hm.heatmap_image(rows, columns, sample(n_rows, n_columns), **kwargs)
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32
    assert image.ndim == 4 and image.shape[0] == 1 and image.shape[3] == 3
    _, height, width, _ = image.shape
    assert height % 8 == 0 and width % 8 == 0
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0 and float(image.std()) > 0.05
    layout = hm.heatmap_layout(rows, columns, sample(n_rows, n_columns), **kwargs)
    assert (layout.height, layout.width) == (height, width)


def test_cells_tile_the_grid_inside_the_image(hm):
    _, layout = draw(hm, sample(), groups=GROUPS)
    for r, row in enumerate(layout.cells):
        for c, (left, top, right, bottom) in enumerate(row):
            assert 0 <= left < right <= layout.width and 0 <= top < bottom <= layout.height
            if c:
                assert left >= row[c - 1][2]  # left to right, no overlap
            if r:
                assert top == layout.cells[r - 1][c][3]  # top to bottom, touching
    # a gap between the groups, none inside one
    assert layout.cells[0][3][0] > layout.cells[0][2][2] and layout.cells[0][2][0] == layout.cells[0][1][2]


def test_colormap_runs_light_to_dark(hm):
    ramp = [hm.colormap(t) for t in np.linspace(0, 1, 33)]
    assert ramp[0] == hm.COLORMAP[0] and ramp[-1] == hm.COLORMAP[-1]
    assert all(lightness(a) > lightness(b) for a, b in zip(ramp, ramp[1:], strict=False))
    assert hm.colormap(-1.0) == hm.colormap(0.0) and hm.colormap(7.0) == hm.colormap(1.0)


def test_higher_value_gives_darker_more_saturated_cell(hm):
    values = [
        [0.0, 0.1, 0.5, 0.2],
        [0.3, 0.4, 0.5, 0.6],
        [0.6, 0.7, 0.5, 1.0],
        [0.9, 1.0, 0.5, 0.1],
        [1.0, 0.0, 0.5, 0.0],
    ]
    image, layout = draw(hm, values, groups=GROUPS, scales=[1.0, 1.0])
    fills = [fill_of(image, layout.cells[r][0]) for r in range(5)]  # 0, 0.3, 0.6, 0.9, 1.0 in one column
    for r, fill in enumerate(fills):
        assert np.abs(fill - hm.colormap(values[r][0])).sum() < 12, (r, fill)
    assert all(lightness(a) > lightness(b) + 5 for a, b in zip(fills, fills[1:], strict=False)), fills
    assert saturation(fills[-1]) > saturation(fills[0])
    # across columns of the same group the same scale holds
    assert np.abs(fill_of(image, layout.cells[3][1]) - fill_of(image, layout.cells[4][0])).sum() < 12  # both 1.0


def test_each_group_has_its_own_scale(hm):
    values = [[0.5, 0.5, 0.5, 0.5]] * 5
    image, layout = draw(hm, values, groups=GROUPS, scales=[1.0, 0.5])
    assert layout.scales == (1.0, 0.5)
    assert np.abs(fill_of(image, layout.cells[0][0]) - hm.colormap(0.5)).sum() < 12
    assert np.abs(fill_of(image, layout.cells[0][3]) - hm.colormap(1.0)).sum() < 12
    # the default scale is each group's largest finite value
    values = [[0.1, 0.2, 0.4, 0.05], [0.2, 0.1, 0.3, 0.1], [None, math.inf, 0.1, 0.2], *[[0.0] * 4] * 2]
    assert draw(hm, values, groups=GROUPS)[1].scales == (0.4, 0.2)
    assert draw(hm, [[0.0] * 4] * 5)[1].scales == (1.0,)  # nothing above 0: 0..1


def test_colour_bars_state_each_scale(hm):
    image, layout = draw(hm, sample(), groups=GROUPS, scales=[0.5, 0.9])
    assert len(layout.bars) == 2 and layout.legend_titles == ("relative update ||sdW||/||W||", "overlap |cos|")
    for left, top, right, bottom in layout.bars:
        middle = (top + bottom) // 2
        assert np.abs(image[middle, left + 1].astype(int) - hm.colormap(0.0)).sum() < 20
        assert np.abs(image[middle, right - 2].astype(int) - hm.colormap(1.0)).sum() < 20
        scale_label = image[top - 2 : bottom + 2, right + 3 : right + 30]  # the scale written right of the bar
        assert written(scale_label) > 10


def test_clipped_values_are_full_colour_and_marked(hm):
    values = [[0.5, 2.0, 0.5, 0.5]] + [[0.5] * 4] * 4
    image, layout = draw(hm, values, groups=GROUPS, scales=[1.0, 1.0])
    clipped, plain = layout.cells[0][1], layout.cells[0][0]
    assert np.abs(fill_of(image, clipped) - hm.colormap(1.0)).sum() < 12
    # the corner mark: light (the text colour on a dark cell) in the top-right corner
    left, top, right, bottom = clipped
    assert near(image[top + 2 : top + 6, right - 7 : right - 3], hm.LIGHT_TEXT, 120).sum() >= 4
    left, top, right, bottom = plain
    assert not near(image[top + 2 : top + 6, right - 7 : right - 3], hm.DARK_TEXT, 120).any()


def test_text_contrasts_with_its_cell(hm):
    values = [[0.0, 1.0, 0.0, 1.0]] * 5
    image, layout = draw(hm, values, groups=GROUPS, scales=[1.0, 1.0])
    light_cell, dark_cell = inside(image, layout.cells[0][0], 2), inside(image, layout.cells[0][1], 2)
    assert lightness(hm.colormap(0.0)) > 240 and lightness(hm.colormap(1.0)) < 40
    assert (lightness(light_cell) < 120).sum() > 10  # dark digits on the pale cell
    assert (lightness(dark_cell) > 150).sum() > 10  # light digits on the dark one
    assert hm.text_color(hm.colormap(0.0)) == hm.DARK_TEXT and hm.text_color(hm.colormap(1.0)) == hm.LIGHT_TEXT


def test_the_number_is_written_in_the_cell(hm):
    values = [[0.5] * 4] * 5
    values[2] = [0.5, 0.5, 0.123456, 0.5]
    _, layout = draw(hm, values, groups=GROUPS, number_format="{:.3f}")
    assert layout.texts[2][2] == "0.123" and layout.texts[0][0] == "0.500"
    a, _ = draw(hm, values, groups=GROUPS, number_format="{:.3f}")
    b, _ = draw(hm, values, groups=GROUPS, number_format="{:.1f}")
    changed = np.abs(a.astype(int) - b.astype(int)).sum(axis=-1) > 60
    box = layout.cells[2][2]
    assert changed[box[1] : box[3], box[0] : box[2]].sum() > 10  # the digits differ, inside the cell


def test_flagged_cells_are_outlined(hm):
    flags = [[False] * 4 for _ in ROWS]
    flags[1][3] = flags[3][2] = True
    values = sample()
    values[4][0] = None
    flags[4][0] = True  # an outline on a no-data cell too
    image, layout = draw(hm, values, groups=GROUPS, flags=flags)
    for r, c in ((1, 3), (3, 2), (4, 0)):
        left, top, right, bottom = layout.cells[r][c]
        middle_y, middle_x = (top + bottom) // 2, (left + right) // 2
        for y, x in ((middle_y, left + 1), (middle_y, right - 3), (top + 1, middle_x), (bottom - 3, middle_x)):
            assert near(image[y, x], hm.FLAG_COLOR, 60), (r, c, y, x, image[y, x])
    for r, row in enumerate(layout.cells):
        for c, (left, top, right, bottom) in enumerate(row):
            if not flags[r][c]:
                assert not near(image[top:bottom, left:right], hm.FLAG_COLOR, 60).any(), (r, c)
    plain, _ = draw(hm, values, groups=GROUPS)
    assert not near(plain, hm.FLAG_COLOR, 60).any()
    assert near(image, hm.FLAG_COLOR, 60).sum() > near(plain, hm.FLAG_COLOR, 60).sum() + 200  # and the legend


def test_no_data_and_non_finite_cells(hm):
    values = [[0.0, 0.0, 0.0, 0.0], [None, None, 0.0, 0.0], [math.nan, math.inf, -math.inf, 0.0], *[[0.5] * 4] * 2]
    image, layout = draw(hm, values, groups=GROUPS, scales=[1.0, 1.0])
    zero, none = fill_of(image, layout.cells[0][0]), fill_of(image, layout.cells[1][0])
    assert np.abs(zero - hm.colormap(0.0)).sum() < 12
    assert np.abs(none - zero).sum() > 200 and lightness(none) < 80  # dark grey, not the pale 0
    assert layout.texts[1][0] == "" and layout.texts[2][:3] == ("nan", "inf", "-inf")
    hatch = inside(image, layout.cells[1][0])
    assert near(hatch, hm.GRID, 20).sum() > 20 and near(hatch, hm.PLOT_BACKGROUND, 12).sum() > 20  # hatched
    assert written(hatch) == 0  # no text in a None cell
    for c in range(3):
        cell = inside(image, layout.cells[2][c])
        assert near(cell, hm.GRID, 20).sum() > 20 and near(cell, hm.PLOT_BACKGROUND, 12).sum() > 20  # hatched
        assert written(cell) > 5  # with its text


def test_sixty_rows_by_twelve_columns_stays_in_bounds(hm):
    rows = [f"double_blocks.{i}" for i in range(19)] + [f"single_blocks.{i}" for i in range(38)] + ["TE", "a", "b"]
    columns = [f"my_character_lora_number_{i}_trained_on_faces_final_v3.safetensors" for i in range(10)]
    columns += ["combined", "max overlap"]
    kwargs = {"groups": [("relative update ‖sΔW‖/‖W‖", 0, 11), ("overlap |cos|", 11, 12)], "title": "T" * 300}
    kwargs["footer"] = "; ".join(f"IN{i:02d} overlap 0.91 (A×B)" for i in range(200))
    image = hm.heatmap_image(rows, columns, sample(60, 12), **kwargs)
    _, height, width, _ = image.shape
    assert height <= 2400 and width <= 2400 and height % 8 == 0 and width % 8 == 0
    layout = hm.heatmap_layout(rows, columns, sample(60, 12), **kwargs)
    assert layout.cells[-1][-1][3] <= layout.legend_top and layout.title.endswith("…")
    assert len(layout.footer) == 6 and layout.footer[-1].endswith("…")
    assert all(len(label) < len(columns[0]) and "…" in label for (label,) in layout.column_labels[:10])
    assert layout.rotated  # names without room to wrap stand upright


def test_largest_table_stays_in_bounds(hm):
    rows = ["a_very_long_block_name_" * 4 + str(i) for i in range(hm.MAX_ROWS)]
    columns = ["c" * 80 + str(i) for i in range(hm.MAX_COLUMNS)]
    groups = [("g" * 200, i, i + 1) for i in range(hm.MAX_COLUMNS)]
    values = (np.arange(hm.MAX_ROWS * hm.MAX_COLUMNS).reshape(hm.MAX_ROWS, hm.MAX_COLUMNS) * 1e6).tolist()
    flags = [[True] * hm.MAX_COLUMNS] * hm.MAX_ROWS
    kwargs = {"groups": groups, "flags": flags, "number_format": "{:.12e}", "title": "x" * 999, "footer": "y " * 2000}
    image = hm.heatmap_image(rows, columns, values, **kwargs)
    assert image.shape[1] <= hm.MAX_SIZE and image.shape[2] <= hm.MAX_SIZE


def test_column_labels_never_overlap(hm):
    for columns in (
        ["lora_a", "lora_b", "combined", "max overlap"],  # fit or wrap
        ["detail tweaker xl", "another_style_lora_v2", "combined", "max overlap"],  # wrap at spaces and underscores
        ["Averyveryverylongloranamewithoutbreaks", "b", "combined", "max overlap"],  # upright
    ):
        image, layout = draw(hm, sample(), columns=columns, groups=GROUPS)
        top = layout.group_top + 18 if layout.groups else 0
        band = image[top : layout.header_bottom]
        assert written(band) > 20  # the labels are there
        for c in range(1, len(columns)):  # nothing written across the boundary between two columns
            boundary = layout.cells[0][c][0] - 1
            assert near(band[:, boundary - 1 : boundary + 1], hm.BACKGROUND, 30).all(), (columns, c)
        for lines in layout.column_labels:
            assert 1 <= len(lines) <= 3
    assert not draw(hm, sample(), groups=GROUPS)[1].rotated


def test_text_the_font_lacks_is_replaced(hm):
    _, layout = draw(hm, sample(), groups=GROUPS, title="A×B → Δ", footer="σ ≤ 0.5")
    assert layout.title == "AxB -> d" and layout.footer == ("s <= 0.5",)
    assert layout.group_titles[1] == "overlap |cos|"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rows": []}, r"rows: expected 1\.\.96 labels, got 0"),
        ({"rows": "IN04"}, "rows: expected a sequence of strings"),
        ({"rows": ["IN04", 5, "MID", "OUT03", "TE"]}, r"rows\[1\]: expected a string"),
        ({"columns": [f"c{i}" for i in range(17)]}, r"columns: expected 1\.\.16 labels, got 17"),
        ({"values": sample(4, 4)}, r"values: expected 5 rows \(one per row label\), got 4"),
        ({"values": [*sample(4, 4), [0.1, 0.2]]}, r"values\[4\]: expected 4 entries \(one per column\), got 2"),
        ({"values": 0.5}, "values: expected 5 rows of 4 entries"),
        ({"values": [["x", 0, 0, 0], *sample(4, 4)]}, r"values\[0\]\[0\]: expected a number or None, got 'x'"),
        ({"flags": [[True] * 4] * 3}, r"flags: expected 5 rows"),
        ({"flags": [[True] * 3] * 5}, r"flags\[0\]: expected 4 entries"),
        ({"groups": [("a", 0, 3), ("b", 2, 4)]}, r"groups: every column must be in exactly one group; columns \[2\]"),
        ({"groups": [("a", 0, 3)]}, r"groups: every column must be in exactly one group; columns \[3\]"),
        ({"groups": [("a", 0, 5)]}, r"groups\[0\]: columns 0\.\.5 are not a range within 0\.\.4"),
        ({"groups": [("a", 0)]}, r"groups\[0\]: expected \(title, first column, end column\)"),
        ({"groups": GROUPS, "scales": [1.0]}, r"scales: expected one per group \(2\), got 1"),
        ({"scales": [0.0]}, r"scales\[0\]: expected a finite number > 0"),
        ({"scales": [math.nan]}, r"scales\[0\]: expected a finite number > 0"),
        ({"number_format": "{:d}"}, "number_format: '{:d}' does not format a number"),
        ({"number_format": "{0} {1}"}, "number_format: "),
    ],
)
def test_bad_arguments_name_the_argument(hm, kwargs, message):
    arguments = {"rows": ROWS, "columns": COLUMNS, "values": sample()} | kwargs
    rows, columns, values = arguments.pop("rows"), arguments.pop("columns"), arguments.pop("values")
    for function in (hm.heatmap_image, hm.heatmap_layout):
        with pytest.raises(ValueError, match=f"^{message}"):
            function(rows, columns, values, **arguments)


def test_accepts_arrays(hm):
    values = np.asarray(sample(), dtype=np.float32)
    a = pixels(hm.heatmap_image(ROWS, COLUMNS, values, flags=values > 0.5))
    b = pixels(hm.heatmap_image(ROWS, COLUMNS, values.tolist(), flags=(values > 0.5).tolist()))
    assert np.array_equal(a, b)


def test_deterministic(hm):
    kwargs = {"groups": GROUPS, "title": "t", "footer": "f", "flags": [[r == c for c in range(4)] for r in range(5)]}
    a = hm.heatmap_image(ROWS, COLUMNS, sample(seed=1), **kwargs)
    assert np.array_equal(a.numpy(), hm.heatmap_image(ROWS, COLUMNS, sample(seed=1), **kwargs).numpy())
    b = hm.heatmap_image(ROWS, COLUMNS, sample(seed=2), **kwargs)
    assert a.shape == b.shape and (np.abs(pixels(a).astype(int) - pixels(b).astype(int)).sum(axis=-1) > 30).sum() > 500
