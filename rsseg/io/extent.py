"""The grid covering several rasters: the union of their bounds on one raster's pixels."""

from __future__ import annotations

import math
from collections.abc import Sequence

from affine import Affine

Bounds = tuple[float, float, float, float]  # left, bottom, right, top


def covering_grid(pixels: Affine, boxes: Sequence[Bounds]) -> tuple[Affine, int, int]:
    """``(transform, width, height)`` of the smallest grid of ``pixels``' size and alignment
    (north-up) covering every box; bounds within 1e-6 pixel of a pixel edge snap to it."""
    xres, yres = pixels.a, -pixels.e
    left = pixels.c + math.floor(round((min(b[0] for b in boxes) - pixels.c) / xres, 6)) * xres
    top = pixels.f - math.floor(round((pixels.f - max(b[3] for b in boxes)) / yres, 6)) * yres
    width = math.ceil(round((max(b[2] for b in boxes) - left) / xres, 6))
    height = math.ceil(round((top - min(b[1] for b in boxes)) / yres, 6))
    return Affine(xres, 0.0, left, 0.0, -yres, top), width, height
