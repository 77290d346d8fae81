"""Streaming per-band statistics over valid pixels: mean, std, min, max, p2, p98, count.

Feed ``(C, H, W)`` chunks with an ``(H, W)`` or per-band ``(C, H, W)`` validity mask; memory does
not grow with the data.

- mean/std: exact up to float64 rounding (per-chunk float64 moments merged with Chan et al.'s
  parallel formula); std is the population std (ddof=0).
- percentiles: read from a 65536-bin histogram with numpy's default ("linear") interpolation
  between order statistics. Exact for 8- and 16-bit integers (one bin per value). Any other dtype
  is cast to float32 and binned on the top 16 bits of its order-preserving bit pattern (sign,
  exponent, 7 mantissa bits); a bin reports its centre value, clipped to [min, max], so p2/p98 are
  within a relative 2**-8 (0.4%) of the exact value.
- Non-finite values (NaN, inf) in float data are excluded per band, like nodata.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from rsseg.errors import InputError
from rsseg.io.raster import open_scene

NBINS = 1 << 16


class RunningStats:
    """Accumulates statistics for ``bands`` bands of one ``dtype``."""

    def __init__(self, bands: int, dtype: str | np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self.exact_percentiles = self.dtype.kind in "ui" and self.dtype.itemsize <= 2
        self._offset = int(np.iinfo(self.dtype).min) if self.exact_percentiles else 0
        self.count = np.zeros(bands, dtype=np.int64)
        self.mean = np.zeros(bands, dtype=np.float64)
        self.m2 = np.zeros(bands, dtype=np.float64)
        self.min = np.full(bands, np.inf)
        self.max = np.full(bands, -np.inf)
        self.hist = np.zeros((bands, NBINS), dtype=np.int64)

    def update(self, pixels: np.ndarray, valid: np.ndarray) -> None:
        """Add the values of ``pixels`` ``(C, H, W)`` where ``valid`` is True: ``(H, W)`` for
        every band, or ``(C, H, W)`` per band (nodata per band, ``~Scene.band_missing``)."""
        for b in range(pixels.shape[0]):
            values = pixels[b][valid if valid.ndim == 2 else valid[b]]
            if values.dtype.kind == "f":
                values = values[np.isfinite(values)]
            if values.size:
                self._update_band(b, values)

    def merge(self, other: RunningStats) -> None:
        """Add what ``other`` (same bands and dtype) accumulated, as if fed here."""
        for b in np.flatnonzero(other.count):
            self._combine(b, int(other.count[b]), other.mean[b], other.m2[b], other.min[b],
                          other.max[b])
        self.hist += other.hist

    def _update_band(self, b: int, values: np.ndarray) -> None:
        as64 = values.astype(np.float64)
        mean = as64.mean()
        self._combine(b, values.size, mean, np.square(as64 - mean).sum(), as64.min(),
                      as64.max())
        self.hist[b] += np.bincount(self._bin(values), minlength=NBINS)

    def _combine(self, b: int, n: int, mean: float, m2: float, low: float,
                 high: float) -> None:
        """Merge the moments of ``n`` more values of band ``b`` (Chan et al.)."""
        total = self.count[b] + n
        delta = mean - self.mean[b]
        self.mean[b] += delta * n / total
        self.m2[b] += m2 + delta * delta * self.count[b] * n / total
        self.count[b] = total
        self.min[b] = min(self.min[b], low)
        self.max[b] = max(self.max[b], high)

    def _bin(self, values: np.ndarray) -> np.ndarray:
        if self.exact_percentiles:
            return values.astype(np.int64) - self._offset
        return _float_key(values.astype(np.float32)) >> 16

    def _bin_value(self, index: int) -> float:
        """The value histogram bin ``index`` stands for."""
        if self.exact_percentiles:
            return float(index + self._offset)
        centre = np.array([(index << 16) + (1 << 15)], dtype=np.uint32)
        return float(_float_from_key(centre)[0])

    def percentile(self, b: int, q: float) -> float | None:
        """The ``q``-th percentile (0..100) of band ``b``; None when the band has no pixels."""
        n = int(self.count[b])
        if n == 0:
            return None
        rank = (n - 1) * q / 100.0
        lo, frac = int(np.floor(rank)), rank - np.floor(rank)
        cumulative = np.cumsum(self.hist[b])
        below, above = np.searchsorted(cumulative, [lo + 1, min(lo + 2, n)])
        v_below, v_above = self._bin_value(int(below)), self._bin_value(int(above))
        v = v_below + frac * (v_above - v_below)
        return float(np.clip(v, self.min[b], self.max[b]))

    def to_dicts(self, names: list[str] | tuple[str, ...]) -> list[dict]:
        """One dict per band: name, count, mean, std, min, max, p2, p98 (None when empty)."""
        out = []
        for b, name in enumerate(names):
            n = int(self.count[b])
            empty = n == 0
            out.append({
                "name": name,
                "count": n,
                "mean": None if empty else float(self.mean[b]),
                "std": None if empty else float(np.sqrt(self.m2[b] / n)),
                "min": None if empty else _scalar(self.min[b], self.dtype),
                "max": None if empty else _scalar(self.max[b], self.dtype),
                "p2": self.percentile(b, 2),
                "p98": self.percentile(b, 98),
            })
        return out


def scene_band_stats(paths: Sequence[Path], nodata: float | None) -> list[dict]:
    """Per-band statistics (:meth:`RunningStats.to_dicts`) of the valid pixels of ``paths`` (each
    once), streamed in bands of block rows; ``InputError`` when a band has no valid pixel (it
    could not be normalised) or every pixel is nodata."""
    stats, names = None, None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no CRS/georeferencing.*")
        for path in dict.fromkeys(paths):
            with open_scene(path, nodata=nodata) as scene:
                info = scene.info
                stats = stats or RunningStats(info.count, info.dtype)
                names = names or info.band_names
                step = max(info.block_shape[0], 256 // info.block_shape[0] * info.block_shape[0])
                for top in range(0, info.height, step):
                    pixels = scene.read(Window(0, top, info.width, min(step, info.height - top)))
                    stats.update(pixels, ~scene.band_missing(pixels))
    bands = stats.to_dicts(names)
    count = len(set(paths))
    where = str(paths[0]) if count == 1 else f"the training data ({count} rasters)"
    empty = [d["name"] for d in bands if not d["count"]]
    if len(empty) == len(bands):
        raise InputError(f"{where}: every pixel is nodata (nodata {info.nodata}), nothing to "
                         "train on", "check the scene or pass the right --nodata")
    if empty:
        raise InputError(f"{where}: band(s) {', '.join(empty)} hold no valid pixel, so they "
                         "cannot be normalised", "drop those bands or check --nodata")
    return bands


def _scalar(value: float, dtype: np.dtype) -> int | float:
    return int(value) if dtype.kind in "ui" else float(value)


def _float_key(values: np.ndarray) -> np.ndarray:
    """float32 → uint32 keys whose unsigned order is the float order (negatives flipped)."""
    bits = values.view(np.uint32).astype(np.int64)
    negative = bits >= 1 << 31
    return np.where(negative, (1 << 32) - 1 - bits, bits + (1 << 31))


def _float_from_key(keys: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_float_key`: uint32 keys → float32 values."""
    k = keys.astype(np.int64)
    positive = k >= 1 << 31
    bits = np.where(positive, k - (1 << 31), (1 << 32) - 1 - k).astype(np.uint32)
    return bits.view(np.float32)
