"""Aspect-ratio buckets that never upscale: the training size of each image, and the resize + crop to reach it.

Sizes are ``(height, width)`` in pixels throughout.

The bucket of an image (:func:`bucket_size`)
--------------------------------------------
Rules, for an image ``h × w``, a ``resolution`` ``R`` and a ``multiple`` ``m``:

- both sides are multiples of ``m``, the area is at most ``R²``;
- never larger than the image in either side (each side at most the image's side rounded *down* to ``m``), so an
  image is only ever scaled down; an image with a side under ``m`` cannot be trained without upscaling and is refused;
- the *target* is the image scaled to area ``R²`` keeping its aspect (``s = min(1, R / sqrt(h * w))``, never above 1),
  and the *base* bucket is the target with both sides rounded down to ``m`` (at least ``m``; when that leaves the area
  above ``R²``, the longer side comes down to fit);
- the bucket is, among all buckets within those bounds whose area is at least the base's, the one whose aspect ratio is
  closest to the image's (measured as ``max(q, 1/q)`` for ``q = (bw / bh) / (w / h)``, the factor the crop removes);
  ties go to the larger area, then to the bucket longer along the image's longer side (so a transposed image gets the
  transposed bucket), then to the lower one.

Consequences: an image at most ``R²`` in area trains at its own size rounded down to ``m`` (``500 × 300`` at
``R = 512`` → ``448 × 256``); larger ones land on the usual SDXL-style buckets (``3000 × 2000`` at 1024 →
``1216 × 832``). For a target ``th × tw`` with both sides at least ``m``, the bucket's area is never below
``(th - m) * (tw - m)`` and its aspect error never above the base's, which is below ``max(th / (th - m),
tw / (tw - m))``.

Resize and crop (:func:`crop_box`)
----------------------------------
The image is resized by ``scale = max(bh / h, bw / w)`` (≤ 1) so it covers the bucket, then center-cropped.
:class:`CropBox` gives the resized size and the crop's top-left corner in the resized image; SDXL's size conditioning
is then ``original_size = (h, w)``, ``crop_coords_top_left = (top, left)``, ``target_size = (bh, bw)`` (as kohya's
sd-scripts reports it).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from fractions import Fraction
from typing import NamedTuple

__all__ = ["CropBox", "assign_buckets", "bucket_size", "crop_box"]


def _whole(value: object, name: str, low: int) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name}: must be a whole number of at least {low}, got {value!r}") from None
    if number < low:
        raise ValueError(f"{name}: must be a whole number of at least {low}, got {value!r}")
    return number


def _settings(resolution: int, multiple: int) -> tuple[int, int]:
    m = _whole(multiple, "multiple", 1)
    r = _whole(resolution, "resolution", 1)
    if r < m:
        raise ValueError(f"resolution: {r} is below the bucket multiple {m}; use at least {m}")
    return r, m


def _image(height: object, width: object, multiple: int, label: str = "an image") -> tuple[int, int]:
    try:
        if isinstance(height, bool) or isinstance(width, bool):
            raise TypeError
        h, w = operator.index(height), operator.index(width)
    except TypeError:
        raise ValueError(f"images: {label} has size {height!r}×{width!r} (height×width), not whole pixels") from None
    if h < multiple or w < multiple:
        raise ValueError(
            f"images: {label} is {h}×{w} (height×width); each side must be at least {multiple} px to train "
            "without upscaling; enlarge or drop it"
        )
    return h, w


def _down(value: float, m: int) -> int:
    return int(value // m) * m


def _bucket(h: int, w: int, r: int, m: int) -> tuple[int, int]:
    area_max = r * r
    cap_h, cap_w = _down(h, m), _down(w, m)
    scale = min(1.0, r / math.sqrt(h * w))
    base_h, base_w = max(m, _down(h * scale, m)), max(m, _down(w * scale, m))  # within the caps: scale <= 1
    if base_h * base_w > area_max:  # only when a side was raised to m: bring the other one down to fit
        if base_h >= base_w:
            base_h = _down(area_max / base_w, m)
        else:
            base_w = _down(area_max / base_h, m)
    area_min = base_h * base_w

    def key(bh: int, bw: int) -> tuple[Fraction, int, int, int]:
        q = Fraction(bw * h, bh * w)
        longer = bh if h > w else bw if w > h else -bh
        return max(q, 1 / q), -bh * bw, -longer, bh

    best: tuple[Fraction, int, int, int] | None = None
    chosen = (base_h, base_w)
    for bh in range(m, min(cap_h, _down(area_max / m, m)) + 1, m):
        lo = max(m, -(-area_min // (bh * m)) * m)  # the narrowest width with an area of at least area_min
        hi = min(cap_w, _down(area_max / bh, m))
        if lo > hi:
            continue
        ideal = bh * w / h
        for bw in {min(max(_down(ideal, m), lo), hi), min(max(_down(ideal, m) + m, lo), hi)}:
            k = key(bh, bw)
            if best is None or k < best:
                best, chosen = k, (bh, bw)
    return chosen


def bucket_size(height: int, width: int, resolution: int, multiple: int = 64) -> tuple[int, int]:
    """The training size ``(bucket_h, bucket_w)`` of a ``height × width`` image (rules in the module docstring).

    Raises ``ValueError`` naming ``images`` (a side under ``multiple``, which would need upscaling), ``resolution`` or
    ``multiple``.
    """
    r, m = _settings(resolution, multiple)
    h, w = _image(height, width, m)
    return _bucket(h, w, r, m)


def assign_buckets(
    sizes: Sequence[tuple[int, int]], resolution: int, multiple: int = 64
) -> dict[tuple[int, int], list[int]]:
    """Bucket ``(h, w)`` -> indices of the images ``sizes[i] = (height, width)`` in it.

    Buckets in ascending ``(h, w)`` order, indices ascending, so the result depends on the sizes only. Raises
    ``ValueError`` naming ``images`` (none given, or image ``i`` too small, numbered from 1), ``resolution`` or
    ``multiple``.
    """
    r, m = _settings(resolution, multiple)
    if len(sizes) == 0:
        raise ValueError("images: no images to train on; give at least one")
    found: dict[tuple[int, int], list[int]] = {}
    cache: dict[tuple[int, int], tuple[int, int]] = {}
    for index, size in enumerate(sizes):
        try:
            height, width = size
        except (TypeError, ValueError):
            raise ValueError(f"images: image {index + 1} has size {size!r}, not (height, width)") from None
        h, w = _image(height, width, m, f"image {index + 1}")
        if (h, w) not in cache:
            cache[h, w] = _bucket(h, w, r, m)
        found.setdefault(cache[h, w], []).append(index)
    return {bucket: found[bucket] for bucket in sorted(found)}


class CropBox(NamedTuple):
    """Resize the image to ``scaled_h × scaled_w``, then crop the bucket from ``(top, left)`` of the resized image."""

    top: int
    left: int
    scaled_h: int
    scaled_w: int


def crop_box(height: int, width: int, bucket_h: int, bucket_w: int) -> CropBox:
    """How to bring a ``height × width`` image to its bucket: resize to cover it (scale ≤ 1), crop the center.

    One resized side equals the bucket's, the other is the image's side times the same scale, rounded to the nearest
    pixel (never below the bucket's). The crop is centered, its odd pixel at the bottom/right. Raises ``ValueError``
    naming ``images`` for an empty image and ``bucket`` for a bucket larger than the image (that would upscale).
    """
    h, w = _image(height, width, 1)
    bh, bw = _whole(bucket_h, "bucket", 1), _whole(bucket_w, "bucket", 1)
    if bh > h or bw > w:
        raise ValueError(f"bucket: {bh}×{bw} is larger than the {h}×{w} image (height×width); that would upscale it")
    if bh * w >= bw * h:  # the height binds: scale = bh / h
        scaled_h, scaled_w = bh, max(bw, (2 * w * bh + h) // (2 * h))
    else:
        scaled_h, scaled_w = max(bh, (2 * h * bw + w) // (2 * w)), bw
    return CropBox((scaled_h - bh) // 2, (scaled_w - bw) // 2, scaled_h, scaled_w)
