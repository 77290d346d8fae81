"""Weighted blending of overlapping window predictions inside one band of rows."""

from __future__ import annotations

import numpy as np

from rsseg.tiling.blend import Layout, weight_window


class RowBandAccumulator:
    """Sums ``weight * probs`` of the windows of one window row and the rows still shared with it.

    Holds ``(K, win_h, W')`` float32 sums plus ``(win_h, W')`` weight sums (``W'`` is the scene
    width, or the window width when the scene is narrower): one band of rows, never the scene.
    Row 0 of the buffers is the first scene row not yet popped.
    """

    def __init__(self, lay: Layout, channels: int) -> None:
        width = max(lay.width, lay.cols[-1] + lay.win_w)
        self.layout = lay
        self.weight = weight_window(lay.win_h, lay.win_w)
        self.sums = np.zeros((channels, lay.win_h, width), dtype=np.float32)
        self.weights = np.zeros((lay.win_h, width), dtype=np.float32)
        self._popped = 0

    def add(self, col: int, probs: np.ndarray, weighted: bool = False) -> None:
        """Blend one window's ``(K, win_h, win_w)`` probabilities in at column ``col``.

        ``probs`` is scaled by the weight window in place, unless ``weighted`` says the caller
        already did.
        """
        self._shift()
        cols = slice(col, col + self.layout.win_w)
        self.sums[:, :, cols] += probs if weighted else np.multiply(probs, self.weight, out=probs)
        self.weights[:, cols] += self.weight

    def pop_rows(self, n: int) -> np.ndarray:
        """The first ``n`` rows, normalised by their summed weights: a new ``(K, n, W)`` float32
        array (the division writes it, so handing it to another thread costs no copy)."""
        self._shift()
        width = self.layout.width
        out = np.divide(self.sums[:, :n, :width], self.weights[:n, :width])
        self._popped = n
        return out

    def pop_sums(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n`` rows' weighted sums ``(K, n, W)`` and weights ``(n, W)``, not
        normalised (copies): rows that windows of another strip also touch."""
        self._shift()
        width = self.layout.width
        sums, weights = self.sums[:, :n, :width].copy(), self.weights[:n, :width].copy()
        self._popped = n
        return sums, weights

    def _shift(self) -> None:
        """Drop the rows popped last time, moving the rest up and zeroing the freed rows."""
        n = self._popped
        if not n:
            return
        for buf in (self.sums, self.weights):
            buf[..., :-n, :] = buf[..., n:, :]
            buf[..., -n:, :] = 0
        self._popped = 0
