"""nodes.images.curves.loss_image: the trainer's loss-curve IMAGE (shape, range, where the curves are, empty history)."""

import math

import numpy as np
import pytest

pytestmark = pytest.mark.pinned_only  # image drawing, no ComfyUI version in it: runs once, on 0.3.75


@pytest.fixture(scope="module")
def chart(pack):
    return pack.nodes.images.curves


def pixels(tensor) -> np.ndarray:
    return (tensor[0].numpy() * 255).round().astype(np.uint8)


def near(image: np.ndarray, color, tolerance: int = 40) -> np.ndarray:
    return np.abs(image.astype(int) - np.array(color)).sum(axis=-1) < tolerance


def rows_of(image: np.ndarray, color, x: float) -> np.ndarray:
    return np.nonzero(near(image, color)[:, round(x)])[0]


def decaying(n: int, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(0.2 * np.exp(-np.arange(n) / (n / 3)) + 0.05 + rng.normal(0, 0.01, n))


@pytest.mark.parametrize(("history", "size"), [([], (512, 256)), ([0.1], (512, 256)), (decaying(300), (640, 200))])
def test_is_an_image_tensor(chart, history, size):
    import torch

    width, height = size
    image = chart.loss_image(history, width=width, height=height)
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32
    assert tuple(image.shape) == (1, height, width, 3)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0 and float(image.std()) > 0.02


def test_default_size(chart):
    assert tuple(chart.loss_image(decaying(10)).shape) == (1, 256, 512, 3)


def test_ema_is_bias_corrected_and_skips_non_finite(chart):
    assert chart.loss_ema([]) == []
    assert chart.loss_ema([0.3, 0.3, 0.3]) == pytest.approx([0.3, 0.3, 0.3])  # no pull toward 0 at the start
    beta = 1 - 2 / 3  # span 2 for short runs
    a, b = 0.4, 0.1
    want = (beta * (1 - beta) * a + (1 - beta) * b) / (beta * (1 - beta) + (1 - beta))
    assert chart.loss_ema([a, b]) == pytest.approx([a, want])
    held = chart.loss_ema([math.nan, 0.2, math.inf, 0.2])
    assert math.isnan(held[0]) and held[1:] == pytest.approx([0.2, 0.2, 0.2])


@pytest.mark.parametrize("level", [0.12, 0.3])
def test_flat_loss_is_drawn_at_its_row(chart, level):
    """A constant loss: the bold average line sits at the layout's row for it, across the plot."""
    history = [level] * 40
    image = pixels(chart.loss_image(history))
    layout = chart.loss_layout(history)
    for i in (5, 20, 35):
        rows = rows_of(image, chart.EMA_COLOR, layout.x_of(i / 39))
        assert rows.size >= 2 and abs(rows.mean() - layout.y_of(level)) < 1.5, (i, rows, layout.y_of(level))


def test_average_follows_a_decaying_loss(chart):
    history = decaying(200)
    image = pixels(chart.loss_image(history))
    layout = chart.loss_layout(history)
    ema = chart.loss_ema(history)
    for i in (20, 100, 180):
        rows = rows_of(image, chart.EMA_COLOR, layout.x_of(i / 199))
        assert rows.size and abs(np.median(rows) - layout.y_of(ema[i])) < 2.0, (i, rows, layout.y_of(ema[i]))
    assert layout.y_of(ema[180]) > layout.y_of(ema[20]) + 40  # lower loss, lower on the image


def test_raw_line_shows_spikes_the_average_smooths(chart):
    """A spike shows on the thin line; the bold average barely moves. Past 20 steps a lone spike above the 98th
    percentile is cut at the top edge rather than flattening the chart."""
    for spikes, clipped in (((50,), True), ((30, 50, 70), False)):
        history = [0.1] * 101
        for i in spikes:
            history[i] = 0.2
        image = pixels(chart.loss_image(history))
        layout = chart.loss_layout(history)
        assert (layout.high < 0.2) == clipped, layout
        x = layout.x_of(50 / 100)
        raw_rows = rows_of(image, chart.LOSS_COLOR, x)
        top = layout.top + 1 if clipped else layout.y_of(0.2) + 1.5
        assert raw_rows.size and raw_rows.min() <= top, (raw_rows, top)  # the thin line reaches the spike
        assert rows_of(image, chart.EMA_COLOR, x).min() > layout.y_of(0.16), layout  # the average does not


def test_different_histories_draw_different_curves(chart):
    a = pixels(chart.loss_image(decaying(100, seed=1)))
    b = pixels(chart.loss_image(decaying(100, seed=2)))
    c = pixels(chart.loss_image(list(reversed(decaying(100, seed=1)))))
    assert np.array_equal(a, pixels(chart.loss_image(decaying(100, seed=1))))  # deterministic
    for other in (b, c):
        changed = np.abs(a.astype(int) - other.astype(int)).sum(axis=-1) > 30
        assert changed.sum() > 500
    # a rising curve puts the average high on the right, a falling one low
    layout = chart.loss_layout(decaying(100, seed=1))
    right = layout.x_of(0.97)
    assert np.median(rows_of(c, chart.EMA_COLOR, right)) < np.median(rows_of(a, chart.EMA_COLOR, right)) - 40


def test_empty_history_draws_empty_axes(chart):
    empty = pixels(chart.loss_image([]))
    layout = chart.loss_layout([])
    assert not near(empty, chart.EMA_COLOR).any() and not near(empty, chart.LOSS_COLOR, 20).any()
    # the plot area is drawn, with the label 'no steps yet' in its middle and nothing below it
    mid_y, mid_x = round((layout.top + layout.bottom) / 2), round((layout.left + layout.right) / 2)
    label = empty[mid_y - 6 : mid_y + 7, mid_x - 40 : mid_x + 41]
    assert near(label, chart.TEXT, 60).sum() > 20
    assert near(empty[mid_y + 30, mid_x - 40 : mid_x + 41], chart.PLOT_BACKGROUND, 6).all()
    no_finite = pixels(chart.loss_image([math.nan, math.inf]))
    assert not near(no_finite, chart.EMA_COLOR).any()


def test_one_step_and_gaps(chart):
    one = pixels(chart.loss_image([0.1]))
    layout = chart.loss_layout([0.1])
    rows = rows_of(one, chart.EMA_COLOR, layout.x_of(0.5))
    assert rows.size and abs(rows.mean() - layout.y_of(0.1)) < 2.0
    gappy = [0.1] * 20 + [math.nan] + [0.1] * 20
    assert tuple(chart.loss_image(gappy).shape) == (1, 256, 512, 3)


@pytest.mark.parametrize(("kwargs", "message"), [({"width": 64}, "width"), ({"height": 5000}, "height")])
def test_bad_size(chart, kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}: must be a whole number of pixels in 128..4096"):
        chart.loss_image([0.1], **kwargs)
