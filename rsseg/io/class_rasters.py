"""Finished class rasters read back: pixels per class, whether a prediction is complete, mosaics.

A batch (:mod:`rsseg.pipelines.batch`) counts each prediction's pixels per class for its
summary, skips scenes whose prediction is already complete on a rerun, and assembles the
predictions into one mosaic (:func:`write_mosaic`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from rsseg.errors import InputError
from rsseg.grid import check_same_grid
from rsseg.io.pam import aux_xml_path
from rsseg.io.qml import qml_path
from rsseg.io.raster import open_scene

ROWS = 512  # rows read at a time


@dataclass(frozen=True)
class ClassCounts:
    width: int
    height: int
    pixels: dict[int, int]  # class id → pixels, nodata excluded, ids in order


def class_counts(path: Path, nodata: int = 255) -> ClassCounts:
    """The size of a uint8 class raster and its pixels per class."""
    counts = np.zeros(256, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # said when it was predicted
        src = rasterio.open(path)
    with src:
        for row in range(0, src.height, ROWS):
            window = Window(0, row, src.width, min(ROWS, src.height - row))
            counts += np.bincount(src.read(1, window=window).ravel(), minlength=256)
        width, height = src.width, src.height
    counts[nodata] = 0
    return ClassCounts(width, height, {int(i): int(counts[i]) for i in np.flatnonzero(counts)})


def complete_prediction(scene: Path, out: Path, extras: Iterable[Path] = ()) -> bool:
    """``out`` is rsseg's finished class raster of ``scene``: it and its ``.qml``/``.aux.xml``
    (and ``extras``) exist, it opens, carries the classes and lies on the scene's grid."""
    if not all(p.is_file() for p in (out, qml_path(out), aux_xml_path(out), *extras)):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a missing CRS was reported when it was predicted
            with open_scene(scene) as src, open_scene(out) as pred:
                check_same_grid(src.info, pred.info, "")
                return "CLASSES" in pred.src.tags()
    except (InputError, RasterioError):
        return False
