"""Pure window maths for tiling: grid and random windows. No file I/O.

Windows are :class:`rasterio.windows.Window` in pixel units (``col_off, row_off, width, height``)
of a scene ``width`` columns by ``height`` rows.

Edge rule: along an axis at least ``size`` long, the last window is shifted back inside the scene
(it overlaps its neighbour more than ``stride`` asks), so every window lies fully inside. Along an
axis shorter than ``size`` there is one window at offset 0 that extends past the scene; readers
fill the part outside with nodata (a padded tile, so all tiles share one shape).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rasterio.windows import Window


def grid_offsets(length: int, size: int, stride: int) -> list[int]:
    """Start offsets along one axis: ``0, stride, 2*stride, ...`` with the last shifted inside.

    Covers ``[0, length)`` completely. ``length < size`` gives ``[0]`` (a padded window).
    """
    _check_size_stride(size, stride)
    if length <= size:
        return [0]
    last = length - size
    offsets = list(range(0, last, stride))
    offsets.append(last)
    return offsets


def grid_windows(width: int, height: int, size: int, stride: int) -> list[Window]:
    """Square ``size`` windows on a ``stride`` grid covering the scene, in row-major order."""
    cols = grid_offsets(width, size, stride)
    return [Window(c, r, size, size) for r in grid_offsets(height, size, stride) for c in cols]


def random_windows(width: int, height: int, size: int, n: int,
                   seed: int | Sequence[int]) -> list[Window]:
    """``n`` square windows at uniform random offsets, reproducible from ``seed``.

    Windows lie inside the scene (offset 0 along an axis shorter than ``size``) and are sorted
    row-major so a reader can stream them top to bottom. Duplicates are possible.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _check_size_stride(size, size)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, max(height - size, 0) + 1, size=n)
    cols = rng.integers(0, max(width - size, 0) + 1, size=n)
    return [Window(int(c), int(r), size, size) for r, c in sorted(zip(rows, cols, strict=True))]


def _check_size_stride(size: int, stride: int) -> None:
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if not 1 <= stride <= size:
        raise ValueError(f"stride must be in 1..{size}, got {stride}")
