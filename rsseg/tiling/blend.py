"""Pure maths of sliding-window prediction: window layout and the blending weight window.

Layout: windows of ``tile`` × ``tile`` on a ``tile - overlap`` step, the last row and column shifted
back inside the scene (see :func:`rsseg.tiling.windows.grid_offsets`). Along an axis shorter than
``tile`` there is one window at offset 0 whose side is the axis length rounded up to the model's
required multiple; the part outside the scene is padded by the reader and cropped afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rsseg.tiling.windows import grid_offsets

WEIGHT_FLOOR = 1e-3


def hann_weights(length: int, floor: float = WEIGHT_FLOOR) -> np.ndarray:
    """``(length,)`` float64 Hann window lifted to ``floor + (1 - floor) * sin²(π(i + ½)/n)``.

    Symmetric, in ``[floor, 1]``, never zero: every pixel of a window keeps some weight.
    """
    if not 0 < floor <= 1:
        raise ValueError(f"floor must be in (0, 1], got {floor}")
    centres = (np.arange(length) + 0.5) / length
    return floor + (1.0 - floor) * np.sin(np.pi * centres) ** 2


def weight_window(height: int, width: int, floor: float = WEIGHT_FLOOR) -> np.ndarray:
    """``(height, width)`` float32 separable Hann weights, ``>= floor**2`` everywhere."""
    return np.outer(hann_weights(height, floor), hann_weights(width, floor)).astype(np.float32)


@dataclass(frozen=True)
class Layout:
    """Sliding windows over a ``height`` × ``width`` scene, in row-major order.

    Every window is ``win_h`` × ``win_w``; ``rows``/``cols`` are their offsets. Windows extend
    past the scene only along an axis shorter than the tile.
    """

    height: int
    width: int
    win_h: int
    win_w: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)

    def finished_rows(self, i: int) -> int:
        """Rows that no later window touches once window row ``i`` is done.

        They start at ``rows[i]``: ``rows[i + 1] - rows[i]`` of them, or all the scene's remaining
        rows after the last window row.
        """
        end = self.rows[i + 1] if i + 1 < len(self.rows) else self.height
        return end - self.rows[i]


def _side(length: int, tile: int, multiple: int) -> int:
    return tile if length >= tile else -(-length // multiple) * multiple


def layout(height: int, width: int, tile: int, overlap: int, multiple: int = 1) -> Layout:
    """Windows covering the scene; ``tile`` a multiple of ``multiple``, ``0 <= overlap < tile``."""
    if height < 1 or width < 1:
        raise ValueError(f"scene must be at least 1x1, got {width}x{height}")
    if tile < 1 or multiple < 1 or tile % multiple:
        raise ValueError(f"tile {tile} must be a positive multiple of {multiple}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in 0..{tile - 1}, got {overlap}")
    win_h, win_w = _side(height, tile, multiple), _side(width, tile, multiple)
    step = tile - overlap
    return Layout(height, width, win_h, win_w,
                  tuple(grid_offsets(height, win_h, min(step, win_h))),
                  tuple(grid_offsets(width, win_w, min(step, win_w))))
