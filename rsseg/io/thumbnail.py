"""Decimated reads of a scene for quicklooks: a few bands at thumbnail size, never the scene."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from rasterio.enums import Resampling
from rasterio.errors import NodataShadowWarning, RasterioError

from rsseg.errors import InputError
from rsseg.io.raster import Scene


def read_thumbnail(scene: Scene, bands: Sequence[int],
                   shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(C, h, w)`` pixels of the 1-based ``bands`` of the scene's selection at ``shape``
    (nearest neighbour, through overviews where the file has them) and the ``(h, w)`` valid mask
    (a pixel is nodata when every band of the scene's selection is nodata there).
    """
    indexes = [scene.bands[b - 1] for b in bands]
    every = list(scene.bands)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NodataShadowWarning)
            pixels = scene.src.read(every, out_shape=(len(every), *shape),
                                    resampling=Resampling.nearest)
    except RasterioError as err:
        raise InputError(f"{scene.info.path}: cannot read a thumbnail ({err})",
                         "the file is truncated or corrupt; re-export it") from None
    valid = scene.valid_mask(pixels)
    return pixels[[every.index(i) for i in indexes]], valid
