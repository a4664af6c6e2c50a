"""lora_math.train.buckets: never upscale, area and multiple bounds, aspect error bounds, a brute-force check of the
choice rule, determinism, the resize + crop, errors naming the input."""

from __future__ import annotations

import math
import random
import re
from fractions import Fraction

import pytest

from lora_math.train.buckets import CropBox, assign_buckets, bucket_size, crop_box

pytestmark = pytest.mark.unit


def random_sizes(count: int, seed: int, low: int = 64, high: int = 3000) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    sizes = []
    for _ in range(count):
        if rng.random() < 0.3:  # extreme aspect ratios too
            sizes.append((rng.randint(low, low + 100), rng.randint(low, high)))
        else:
            sizes.append((rng.randint(low, high), rng.randint(low, high)))
    return sizes


def aspect_error(bucket: tuple[int, int], h: int, w: int) -> float:
    """The factor the crop removes: max(q, 1/q) for q = bucket aspect / image aspect."""
    q = (bucket[1] / bucket[0]) / (w / h)
    return max(q, 1 / q)


def target(h: int, w: int, resolution: int) -> tuple[float, float]:
    scale = min(1.0, resolution / math.sqrt(h * w))
    return h * scale, w * scale


SETTINGS = [(512, 64), (1024, 64), (768, 32), (256, 8)]


@pytest.mark.parametrize(("resolution", "multiple"), SETTINGS)
def test_never_upscales_stays_in_area_and_on_the_grid(resolution, multiple):
    for h, w in random_sizes(400, resolution + multiple):
        bh, bw = bucket_size(h, w, resolution, multiple)
        assert multiple <= bh <= h and multiple <= bw <= w, (h, w, bh, bw)
        assert bh % multiple == 0 and bw % multiple == 0, (h, w, bh, bw)
        assert bh * bw <= resolution**2, (h, w, bh, bw)


@pytest.mark.parametrize(("resolution", "multiple"), SETTINGS)
def test_aspect_error_and_area_bounds(resolution, multiple):
    """For a target th × tw (both ≥ 2m here): aspect error < max(th/(th-m), tw/(tw-m)), area ≥ (th-m)(tw-m)."""
    checked = 0
    for h, w in random_sizes(400, resolution * 7 + multiple):
        th, tw = target(h, w, resolution)
        if min(th, tw) < 2 * multiple:
            continue
        checked += 1
        bucket = bucket_size(h, w, resolution, multiple)
        bound = max(th / (th - multiple), tw / (tw - multiple))
        assert aspect_error(bucket, h, w) < bound, (h, w, bucket, bound)
        assert bucket[0] * bucket[1] >= (th - multiple) * (tw - multiple) - 1e-6, (h, w, bucket)
    assert checked > 100


def brute_force(h: int, w: int, resolution: int, m: int) -> tuple[int, int]:
    """The documented rule, by enumerating every bucket."""
    th, tw = target(h, w, resolution)
    base_h, base_w = max(m, int(th // m) * m), max(m, int(tw // m) * m)
    if base_h * base_w > resolution**2:
        if base_h >= base_w:
            base_h = resolution**2 // base_w // m * m
        else:
            base_w = resolution**2 // base_h // m * m
    best = None
    for bh in range(m, h // m * m + 1, m):
        for bw in range(m, w // m * m + 1, m):
            if bh * bw > resolution**2 or bh * bw < base_h * base_w:
                continue
            q = Fraction(bw * h, bh * w)
            longer = bh if h > w else bw if w > h else -bh
            key = (max(q, 1 / q), -bh * bw, -longer, bh)
            if best is None or key < best[0]:
                best = (key, (bh, bw))
    return best[1]


@pytest.mark.parametrize(("resolution", "multiple"), [(512, 64), (384, 32)])
def test_choice_matches_brute_force(resolution, multiple):
    for h, w in random_sizes(150, 11 * resolution, high=1600):
        assert bucket_size(h, w, resolution, multiple) == brute_force(h, w, resolution, multiple), (h, w)


@pytest.mark.parametrize(
    ("size", "resolution", "bucket"),
    [
        ((3000, 2000), 1024, (1216, 832)),  # the usual SDXL buckets for large images
        ((2000, 3000), 1024, (832, 1216)),
        ((4000, 4000), 1024, (1024, 1024)),
        ((1000, 1000), 512, (512, 512)),
        ((1000, 700), 512, (576, 384)),
        ((500, 300), 512, (448, 256)),  # within the area: its own size, rounded down
        ((500, 300), 1024, (448, 256)),
        ((1000, 1000), 1024, (960, 960)),
        ((64, 64), 512, (64, 64)),
        ((130, 1000), 512, (128, 960)),
        ((70, 10000), 512, (64, 4096)),  # a side raised to the multiple: the other one shrinks into the area
    ],
)
def test_known_buckets(size, resolution, bucket):
    assert bucket_size(*size, resolution) == bucket


def test_images_within_the_area_keep_their_size_rounded_down():
    for h, w in random_sizes(300, 5, high=1000):
        if h * w <= 512 * 512:
            assert bucket_size(h, w, 512, 64) == (h // 64 * 64, w // 64 * 64), (h, w)


def test_transposed_image_gets_the_transposed_bucket():
    for h, w in random_sizes(300, 9):
        assert bucket_size(w, h, 1024, 64) == bucket_size(h, w, 1024, 64)[::-1], (h, w)


def test_assign_buckets_is_deterministic_and_complete():
    sizes = random_sizes(120, 3)
    buckets = assign_buckets(sizes, 768)
    assert list(buckets) == sorted(buckets)
    assert sorted(i for indices in buckets.values() for i in indices) == list(range(len(sizes)))
    for bucket, indices in buckets.items():
        assert indices == sorted(indices)
        assert all(bucket_size(*sizes[i], 768) == bucket for i in indices)
    assert assign_buckets(sizes, 768) == buckets
    assert assign_buckets(list(reversed(sizes)), 768).keys() == buckets.keys()
    assert assign_buckets([(1000, 700), (500, 300), (1000, 700), (64, 64)], 512) == {
        (64, 64): [3],
        (448, 256): [1],
        (576, 384): [0, 2],
    }


@pytest.mark.parametrize(("h", "w"), [(1000, 700), (700, 1000), (500, 300), (130, 1000), (1024, 1024), (3000, 2000)])
def test_crop_box_covers_the_bucket_without_upscaling(h, w):
    bh, bw = bucket_size(h, w, 512)
    box = crop_box(h, w, bh, bw)
    assert isinstance(box, CropBox) and tuple(box) == (box.top, box.left, box.scaled_h, box.scaled_w)
    assert bh <= box.scaled_h <= h and bw <= box.scaled_w <= w
    scale = max(bh / h, bw / w)
    assert box.scaled_h == bh or box.scaled_w == bw
    assert abs(box.scaled_h - h * scale) <= 0.5 and abs(box.scaled_w - w * scale) <= 0.5
    assert box.top == (box.scaled_h - bh) // 2 and box.left == (box.scaled_w - bw) // 2
    assert box.top + bh <= box.scaled_h and box.left + bw <= box.scaled_w


def test_crop_box_by_hand():
    assert crop_box(1000, 700, 576, 384) == (0, 9, 576, 403)  # 700 * 0.576 = 403.2
    assert crop_box(700, 1000, 384, 576) == (9, 0, 403, 576)
    assert crop_box(512, 512, 512, 512) == (0, 0, 512, 512)
    assert crop_box(500, 300, 448, 256) == (0, 6, 448, 269)  # 300 * 0.896 = 268.8
    assert crop_box(101, 100, 64, 64) == (0, 0, 65, 64)  # 101 * 0.64 = 64.64


def test_crop_box_over_random_images():
    for h, w in random_sizes(300, 21):
        bh, bw = bucket_size(h, w, 1024, 64)
        top, left, sh, sw = crop_box(h, w, bh, bw)
        assert bh <= sh <= h and bw <= sw <= w and (sh == bh or sw == bw), (h, w)
        assert 0 <= top and 0 <= left and top + bh <= sh and left + bw <= sw, (h, w)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: bucket_size(40, 500, 512),
            "images: an image is 40×500 (height×width); each side must be at least 64 px",
        ),
        (lambda: bucket_size(500, 63, 512), "images: an image is 500×63"),
        (lambda: bucket_size(0, 0, 512), "images: an image is 0×0"),
        (lambda: bucket_size(10.5, 100, 512), "images: an image has size 10.5×100 (height×width), not whole pixels"),
        (lambda: bucket_size(500, 500, 32), "resolution: 32 is below the bucket multiple 64; use at least 64"),
        (lambda: bucket_size(500, 500, 512, 0), "multiple: must be a whole number of at least 1, got 0"),
        (lambda: bucket_size(500, 500, 512.0), "resolution: must be a whole number"),
        (lambda: assign_buckets([], 512), "images: no images to train on"),
        (lambda: assign_buckets([(500, 500), (20, 500)], 512), "images: image 2 is 20×500 (height×width)"),
        (lambda: assign_buckets([(500, 500), (500,)], 512), "images: image 2 has size (500,), not (height, width)"),
        (lambda: crop_box(500, 300, 512, 256), "bucket: 512×256 is larger than the 500×300 image"),
        (lambda: crop_box(0, 300, 64, 64), "images: an image is 0×300"),
        (lambda: crop_box(500, 300, 0, 64), "bucket: must be a whole number of at least 1, got 0"),
    ],
)
def test_errors_name_the_input(call, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        call()
