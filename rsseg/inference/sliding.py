"""Sliding-window prediction of a whole scene, one band of rows at a time.

Windows go through the model in batches (a batch may span window rows); their softmax
probabilities are blended with a Hann weight window (:mod:`rsseg.tiling.blend`) into a
:class:`~rsseg.inference.accumulate.RowBandAccumulator`. When a window row is done, the rows no
later window touches are normalised and yielded as a :class:`RowBand`. A background thread reads
and normalises the next batches (:func:`~rsseg.inference.background.prefetch`) while the model
runs. Memory is one band of rows of input (read block-aligned by
:class:`~rsseg.io.raster.RowBandReader`) and of probabilities, plus ``prefetch`` batches.
Nodata pixels and the padding of scenes smaller than a tile enter the model as the band mean.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import torch
from rasterio.windows import Window

from rsseg.errors import InputError
from rsseg.inference.accumulate import RowBandAccumulator
from rsseg.inference.background import prefetch
from rsseg.inference.memory import release_freed_memory
from rsseg.inference.runtime import Runner
from rsseg.io.raster import RowBandReader, Scene
from rsseg.tiling.blend import Layout, layout

Normalise = Callable[[np.ndarray], np.ndarray]
"""``(B, C, H, W)`` source pixels → ``(B, C, H, W)`` float32 model input."""


@dataclass(frozen=True)
class RowBand:
    """Finished scene rows ``row .. row + h``: blended probabilities and the valid mask."""

    row: int
    probs: np.ndarray  # (K, h, W) float32, sums to 1 over K
    valid: np.ndarray  # (h, W) bool, False where every band of the input is nodata


@dataclass(frozen=True)
class Seam:
    """Scene rows ``row .. row + h`` shared by the windows of two strips of a split scene, as
    unnormalised blending sums: ``upper`` says whether they are the top rows of the strip that
    sent them (shared with the strip above) or its bottom rows (shared with the strip below).
    The two strips' seams of the same rows, added (:meth:`join`), blend exactly what the whole
    scene's pass blends there (up to float32 summation order)."""

    row: int
    sums: np.ndarray  # (K, h, W) float32: weighted probabilities of this strip's windows
    weights: np.ndarray  # (h, W) float32: their summed weights
    valid: np.ndarray | None  # (h, W) bool, read by the lower strip only
    upper: bool

    def join(self, above: Seam) -> RowBand:
        """The finished band of these rows: this strip's top seam and ``above``, the bottom
        seam of the strip above."""
        if not self.upper or above.upper or above.row != self.row \
                or above.weights.shape != self.weights.shape:
            raise ValueError("a strip's top seam joins the bottom seam of the strip above")
        return RowBand(self.row, np.divide(self.sums + above.sums, self.weights + above.weights),
                       self.valid)


@dataclass
class _Batch:
    """Model input for some windows, and the window rows finished once they are blended."""

    x: np.ndarray  # (B, C, win_h, win_w) float32, normalised, 0 where invalid
    windows: list[tuple[int, int]]  # (window row index, column) of each batch item
    finished: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (row index, valid)


class SlidingWindowPredictor:
    """Runs ``runner`` over a scene in ``tile`` windows overlapping by ``overlap`` pixels.

    ``runner`` maps ``(B, C, H, W)`` float32 to ``(B, K, H, W)`` logits
    (:mod:`rsseg.inference.runtime`); ``multiple`` is the side multiple the model needs
    (windows of scenes smaller than a tile are padded up to it).
    """

    def __init__(self, runner: Runner, normalise: Normalise, classes: int, tile: int,
                 overlap: int, multiple: int, batch_size: int, prefetch: int = 2) -> None:
        self.runner = runner
        self.normalise = normalise
        self.classes = classes
        self.tile = tile
        self.overlap = overlap
        self.multiple = multiple
        self.batch_size = batch_size
        self.prefetch = prefetch

    def layout(self, scene: Scene) -> Layout:
        return layout(scene.info.height, scene.info.width, self.tile, self.overlap, self.multiple)

    @torch.inference_mode()
    def probabilities(self, x: np.ndarray, weight: torch.Tensor | None = None) -> np.ndarray:
        """``(B, C, h, w)`` normalised input → ``(B, K, h, w)`` float32 softmax probabilities,
        times the ``(h, w)`` blending ``weight`` when given (in PyTorch's threads, NCHW)."""
        probs = self.runner(x).float().contiguous().softmax(dim=1)
        if weight is not None:
            probs.mul_(weight.to(probs.device))
        return probs.cpu().numpy()

    def bands(self, scene: Scene) -> Iterator[RowBand]:
        """Blended predictions of ``scene``, top to bottom, one finished band of rows at a time."""
        lay = self.layout(scene)
        yield from self._blend(scene, lay, range(len(lay.rows)))  # no seams: every window row

    def strip_bands(self, scene: Scene, window_rows: range) -> Iterator[RowBand | Seam]:
        """One strip of ``scene`` split over workers (:func:`strips`): only the windows of
        ``window_rows`` (indices into the layout's rows) are predicted. The rows they share with
        the window rows above come first as the ``upper`` :class:`Seam` (unless the strip is the
        first), then the bands only this strip's windows touch, then the rows shared with the
        window rows below as a lower seam (unless it is the last). Joined, the seams of
        neighbouring strips and their bands are the whole scene's bands, and no window is
        predicted twice."""
        yield from self._blend(scene, self.layout(scene), window_rows)

    def _blend(self, scene: Scene, lay: Layout, rows: range) -> Iterator[RowBand | Seam]:
        """The bands that window ``rows`` finish (seams where other window rows touch them)."""
        acc = RowBandAccumulator(lay, self.classes)
        weight = torch.from_numpy(acc.weight)
        shared_above = lay.rows[rows.start - 1] + lay.win_h if rows.start else 0
        pending: list[tuple[int, np.ndarray]] = []  # finished rows not yet popped
        for batch in prefetch(self._batches(scene, lay, rows), self.prefetch):
            pending += batch.finished
            yield from self._blend_batch(acc, lay, batch.windows,
                                         self.probabilities(batch.x, weight), pending,
                                         shared_above)
            release_freed_memory()  # the batch's activations: back to the system, not the heap
        if rows.stop < len(lay.rows):  # the rows the window rows below touch too
            below = lay.rows[rows.stop]
            shared = lay.rows[rows.stop - 1] + lay.win_h - below
            if shared > 0:
                yield Seam(below, *acc.pop_sums(shared), None, upper=False)

    def _blend_batch(self, acc: RowBandAccumulator, lay: Layout,
                     windows: list[tuple[int, int]], probs: np.ndarray,
                     pending: list[tuple[int, np.ndarray]], shared_above: int
                     ) -> Iterator[RowBand | Seam]:
        """Blend one batch's weighted ``probs``, yielding the bands finished on the way. A
        generator of its own so that the batch's probabilities are freed when it is done, not
        held through the next batch's forward pass."""
        for (i, col), window_probs in zip(windows, probs, strict=True):
            while pending and pending[0][0] < i:  # a later window row starts: pop first
                yield from self._pop(acc, lay, *pending.pop(0), shared_above)
            acc.add(col, window_probs, weighted=True)
        while pending:
            yield from self._pop(acc, lay, *pending.pop(0), shared_above)

    @staticmethod
    def _pop(acc: RowBandAccumulator, lay: Layout, i: int, valid: np.ndarray,
             shared_above: int) -> Iterator[RowBand | Seam]:
        """The rows window row ``i`` finishes: those before scene row ``shared_above`` (touched
        by window rows of the strip above) as its upper seam, the rest as a band."""
        row, count = lay.rows[i], lay.finished_rows(i)
        shared = min(count, max(0, shared_above - row))
        if shared:
            yield Seam(row, *acc.pop_sums(shared), valid[:shared], upper=True)
        if count > shared:
            yield RowBand(row + shared, acc.pop_rows(count - shared), valid[shared:])

    def _batches(self, scene: Scene, lay: Layout, rows: range) -> Iterator[_Batch]:
        """Normalised batches of the windows of window ``rows`` in row-major order (runs in the
        prefetch thread)."""
        reader = RowBandReader(scene)
        windows = [(i, col) for i in rows for col in lay.cols]
        last_col = lay.cols[-1]
        for start in range(0, len(windows), self.batch_size):
            chunk = windows[start:start + self.batch_size]
            pixels, finished = [], []
            for i, col in chunk:
                pixels.append(reader.read(Window(col, lay.rows[i], lay.win_w, lay.win_h)))
                if col == last_col:  # window row i is complete: the mask of its finished rows
                    rows = Window(0, lay.rows[i], lay.width, lay.finished_rows(i))
                    finished.append((i, scene.valid_mask(reader.read(rows))))
            x, _ = model_input(scene, lay, chunk, np.stack(pixels), self.normalise)
            yield _Batch(x, chunk, finished)


def model_input(scene: Scene, lay: Layout, windows: list[tuple[int, int]], pixels: np.ndarray,
                normalise: Normalise) -> tuple[np.ndarray, np.ndarray]:
    """``(B, C, h, w)`` source ``pixels`` of ``windows`` (window row index, column) → normalised
    float32 model input (nodata, non-finite values and padding outside the scene as 0, the band
    mean) and ``(B, h, w)`` bool, True where a pixel holds data in some band."""
    missing = scene.band_missing(pixels)  # (B, C, h, w): these enter as 0, the band mean
    for b, (i, col) in enumerate(windows):
        missing[b, :, lay.height - lay.rows[i]:] = True  # padding below a short scene
        missing[b, :, :, lay.width - col:] = True  # padding right of a narrow scene
    x = normalise(pixels)
    if np.issubdtype(pixels.dtype, np.floating):
        x[~np.isfinite(x)] = 0
    np.copyto(x, np.float32(0), where=missing)
    return x, ~missing.all(axis=1)


@dataclass(frozen=True)
class WindowSample:
    """Windows of a scene as the model reads them: what ``--precision int8`` calibrates and
    verifies on."""

    x: np.ndarray  # (N, C, h, w) float32 model input
    valid: np.ndarray  # (N, h, w) bool, pixels holding data
    whole_scene: bool  # every window of the scene holding data is in it


def sample_windows(scene: Scene, lay: Layout, normalise: Normalise, max_pixels: int = 2**22,
                   max_windows: int = 16) -> WindowSample:
    """Up to ``max_windows`` windows of the layout (together at most ``max_pixels`` window
    pixels, at least 2 windows), spread evenly over the scene in row-major order, skipping
    windows without valid pixels. The same scene always gives the same windows.
    Raises InputError when every window read is nodata."""
    wanted = max(2, min(max_windows, max_pixels // (lay.win_h * lay.win_w)))
    windows = [(i, col) for i in range(len(lay.rows)) for col in lay.cols]
    # every window when few, else 4x the wanted ones evenly; of those holding data, `wanted`
    # evenly (read again: only the kept windows are held in memory)
    step = max(1, len(windows) // (4 * wanted))
    candidates = [w for w in windows[::step] if _window_input(scene, lay, w, normalise)[1].any()]
    if not candidates:
        raise InputError(f"{scene.info.path}: every window read for calibration is nodata",
                         "check the scene and --nodata, or use --precision fp32")
    keep = np.linspace(0, len(candidates) - 1, min(wanted, len(candidates))).round()
    inputs, masks = zip(*(_window_input(scene, lay, candidates[int(k)], normalise)
                          for k in keep), strict=True)
    return WindowSample(np.concatenate(inputs), np.concatenate(masks),
                        step == 1 and len(keep) == len(candidates))


def _window_input(scene: Scene, lay: Layout, window: tuple[int, int], normalise: Normalise
                  ) -> tuple[np.ndarray, np.ndarray]:
    i, col = window
    pixels = scene.read(Window(col, lay.rows[i], lay.win_w, lay.win_h), boundless=True)
    return model_input(scene, lay, [window], pixels[None], normalise)


def strips(lay: Layout, max_pixels: int) -> list[range]:
    """The layout's window rows in contiguous groups finishing at most about ``max_pixels``
    scene pixels each (at least one window row per group): the strips of a split scene. Two
    strips meet only where :func:`seam_fits` (with an overlap of more than half the window
    nowhere: the scene stays one task)."""
    count = len(lay.rows)
    wanted = max(1, min(count, -(-lay.height * lay.width // max(1, max_pixels))))
    inner = {round(k * count / wanted) for k in range(1, wanted)}
    bounds = sorted({0, count} | {a for a in inner if 0 < a < count and seam_fits(lay, a)})
    return [range(a, b) for a, b in pairwise(bounds)]


def seam_fits(lay: Layout, a: int) -> bool:
    """Whether a strip may start at window row ``a``: the rows the window rows above share with
    it lie within the rows window row ``a`` finishes (true unless the overlap is more than half
    the window, or the last window row was shifted far back), so each strip has one seam with
    each neighbour."""
    end = lay.rows[a + 1] if a + 1 < len(lay.rows) else lay.height
    return lay.rows[a - 1] + lay.win_h <= end
