"""Sliding-window prediction of a whole scene, one band of rows at a time.

Windows of one window row go through the model in batches; their softmax probabilities are
blended with a Hann weight window (:mod:`rsseg.tiling.blend`) into a
:class:`~rsseg.inference.accumulate.RowBandAccumulator`. When a window row is done, the rows no
later window touches are normalised and yielded as a :class:`RowBand`. Memory is one band of rows
of input (read block-aligned by :class:`~rsseg.io.raster.RowBandReader`) and of probabilities.
Nodata pixels and the padding of scenes smaller than a tile enter the model as the band mean.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from rasterio.windows import Window
from torch import nn

from rsseg.inference.accumulate import RowBandAccumulator
from rsseg.io.raster import RowBandReader, Scene
from rsseg.tiling.blend import Layout, layout

Normalise = Callable[[np.ndarray], np.ndarray]
"""``(B, C, H, W)`` source pixels → ``(B, C, H, W)`` float32 model input."""


@dataclass(frozen=True)
class RowBand:
    """Finished scene rows ``row .. row + h``: blended probabilities and the valid mask."""

    row: int
    probs: np.ndarray  # (K, h, W) float32, sums to 1 over K; a view valid until the next band
    valid: np.ndarray  # (h, W) bool, False where every band of the input is nodata


class SlidingWindowPredictor:
    """Runs ``model`` over a scene in ``tile`` windows overlapping by ``overlap`` pixels.

    ``model`` maps ``(B, C, H, W)`` float32 to ``(B, K, H, W)`` logits; ``multiple`` is the side
    multiple it needs (windows of scenes smaller than a tile are padded up to it).
    """

    def __init__(self, model: nn.Module, normalise: Normalise, classes: int, tile: int,
                 overlap: int, multiple: int, batch_size: int, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.normalise = normalise
        self.classes = classes
        self.tile = tile
        self.overlap = overlap
        self.multiple = multiple
        self.batch_size = batch_size
        self.device = device

    def layout(self, scene: Scene) -> Layout:
        return layout(scene.info.height, scene.info.width, self.tile, self.overlap, self.multiple)

    @torch.inference_mode()
    def probabilities(self, pixels: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """``(B, C, h, w)`` source pixels → ``(B, K, h, w)`` float32 softmax probabilities.

        Pixels where ``valid`` ``(B, h, w)`` is False, and non-finite values, enter the model
        as 0 after normalisation (the band mean), so nodata values never leak into neighbours.
        """
        x = self.normalise(pixels)
        x = np.where(valid[:, None] & np.isfinite(x), x, np.float32(0))
        logits = self.model(torch.from_numpy(x).to(self.device))
        return logits.float().softmax(dim=1).cpu().numpy()

    def bands(self, scene: Scene) -> Iterator[RowBand]:
        """Blended predictions of ``scene``, top to bottom, one finished band of rows at a time."""
        lay = self.layout(scene)
        reader = RowBandReader(scene)
        acc = RowBandAccumulator(lay, self.classes)
        for i, row in enumerate(lay.rows):
            for start in range(0, len(lay.cols), self.batch_size):
                cols = lay.cols[start:start + self.batch_size]
                pixels = np.stack([reader.read(Window(c, row, lay.win_w, lay.win_h))
                                   for c in cols])
                valid = np.stack([scene.valid_mask(p) for p in pixels])
                valid[:, lay.height - row:] = False  # padding below a scene shorter than a tile
                for b, col in enumerate(cols):
                    valid[b, :, lay.width - col:] = False  # padding right of a narrow scene
                for col, probs in zip(cols, self.probabilities(pixels, valid), strict=True):
                    acc.add(col, probs)
            n = lay.finished_rows(i)
            rows_valid = scene.valid_mask(reader.read(Window(0, row, lay.width, n)))
            yield RowBand(row, acc.pop_rows(n), rows_valid)
