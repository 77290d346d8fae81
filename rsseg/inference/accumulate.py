"""Weighted blending of overlapping window predictions inside one band of rows."""

from __future__ import annotations

import numpy as np

from rsseg.tiling.blend import Layout, hann_weights, weight_window


class RowBandAccumulator:
    """Sums ``weight * probs`` of the windows of one window row and the rows still shared with it.

    Holds ``(K, win_h, W')`` float32 sums (``W'`` is the scene width, or the window width when the
    scene is narrower): one band of rows, never the scene. The weight window is separable,
    ``hy(y) · hx(x)``, and every window row has the same columns, so the summed weights are
    ``WY(y) · WX(x)``: a ``(win_h,)`` and a ``(W',)`` vector, not a ``(win_h, W')`` band (27 MiB
    less at the peak of a 6,144-px-wide scene in 1,088² windows). Row 0 of the buffers is the
    first scene row not yet popped.
    """

    def __init__(self, lay: Layout, channels: int) -> None:
        width = max(lay.width, lay.cols[-1] + lay.win_w)
        self.layout = lay
        self.weight = weight_window(lay.win_h, lay.win_w)
        self.sums = np.zeros((channels, lay.win_h, width), dtype=np.float32)
        self._window_rows = hann_weights(lay.win_h)
        self.row_weights = np.zeros(lay.win_h)  # WY: float64 sums of the window rows' hy
        self.col_weights = np.zeros(width)  # WX: the same for every window row
        for col in lay.cols:
            self.col_weights[col:col + lay.win_w] += hann_weights(lay.win_w)
        self._popped = 0

    def add(self, col: int, probs: np.ndarray, weighted: bool = False) -> None:
        """Blend one window's ``(K, win_h, win_w)`` probabilities in at column ``col`` (every
        window of a window row once; the row's first column counts its row weights).

        ``probs`` is scaled by the weight window in place, unless ``weighted`` says the caller
        already did.
        """
        self._shift()
        cols = slice(col, col + self.layout.win_w)
        self.sums[:, :, cols] += probs if weighted else np.multiply(probs, self.weight, out=probs)
        if col == self.layout.cols[0]:
            self.row_weights += self._window_rows

    def pop_rows(self, n: int) -> np.ndarray:
        """The first ``n`` rows, normalised by their summed weights: a new ``(K, n, W)`` float32
        array (the division writes it, so handing it to another thread costs no copy)."""
        self._shift()
        width = self.layout.width
        out = np.divide(self.sums[:, :n, :width], self._weights(n))
        self._popped = n
        return out

    def pop_sums(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n`` rows' weighted sums ``(K, n, W)`` and weights ``(n, W)``, not
        normalised (copies): rows that windows of another strip also touch."""
        self._shift()
        width = self.layout.width
        sums = self.sums[:, :n, :width].copy()
        self._popped = n
        return sums, self._weights(n)

    def _weights(self, n: int) -> np.ndarray:
        """``(n, W)`` float32 summed weights of the first ``n`` rows."""
        width = self.layout.width
        return np.outer(self.row_weights[:n].astype(np.float32),
                        self.col_weights[:width].astype(np.float32))

    def _shift(self) -> None:
        """Drop the rows popped last time, moving the rest up and zeroing the freed rows."""
        n = self._popped
        if not n:
            return
        self.sums[:, :-n] = self.sums[:, n:]
        self.sums[:, -n:] = 0
        self.row_weights[:-n] = self.row_weights[n:]
        self.row_weights[-n:] = 0
        self._popped = 0
