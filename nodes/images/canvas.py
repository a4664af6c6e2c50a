"""The look every Loom IMAGE shares (curves, loss curve, heatmap): colours, supersampling and the font."""

from __future__ import annotations

from PIL import ImageFont

SUPERSAMPLE = 2  # drawn at twice the size, then scaled down: smooth lines without anti-aliasing support
BACKGROUND = (24, 29, 37)
PLOT_BACKGROUND = (31, 38, 48)
GRID = (52, 62, 76)
AXIS = (120, 132, 148)
TEXT = (205, 212, 222)


def font(size: int):
    """Pillow's built-in font at ``size`` px, or its fixed bitmap font where Pillow has no FreeType."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()
