"""Finished class rasters read back: pixels per class, mosaics.

A batch (:mod:`rsseg.pipelines.batch`) counts each prediction's pixels per class for its
summary and assembles the predictions into one mosaic (:func:`write_mosaic`): a class COG with
the same colour table and sidecars, aligned on the pixels (origin and resolution) of the first
raster in the mosaic's CRS (else of the first raster, reprojected); rasters in other CRSs are
reprojected with nearest resampling (exact transformation, no approximation); where rasters
overlap, the first one listed that has a class there wins.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError, NotGeoreferencedWarning, RasterioError
from rasterio.warp import Resampling, calculate_default_transform, reproject, transform_bounds
from rasterio.windows import Window

from rsseg.errors import InputError
from rsseg.io.extent import covering_grid
from rsseg.io.legend import Legend
from rsseg.io.raster import SceneInfo
from rsseg.io.writer import class_raster_writer

ROWS = 512  # rows read and written at a time


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


def parse_crs(text: str) -> CRS:
    """``--crs`` (EPSG:32618, a WKT or PROJ string) as a CRS; InputError when it is none."""
    try:
        return CRS.from_user_input(text)
    except CRSError as err:
        raise InputError(f"--crs {text!r} is not a coordinate reference system ({err})",
                         "give e.g. --crs EPSG:32618") from None


def write_mosaic(rasters: Sequence[Path], out: Path, classes: Legend, nodata: int = 255,
                 crs: CRS | None = None, overwrite: bool = False) -> SceneInfo:
    """Assemble the class ``rasters`` into the class COG ``out`` (see the module docstring) in
    ``crs`` (default: the first raster's); returns its grid."""
    with ExitStack() as stack:
        sources = [stack.enter_context(_open_georeferenced(p)) for p in rasters]
        grid = _mosaic_grid(sources, crs or sources[0].crs, out)
        boxes = [transform_bounds(s.crs, grid.crs, *s.bounds, densify_pts=21) for s in sources]
        with class_raster_writer(out, grid, classes, nodata, overwrite) as writer:
            for row in range(0, grid.height, ROWS):
                rows = min(ROWS, grid.height - row)
                band_transform = grid.transform * Affine.translation(0, row)
                top, bottom = band_transform.f, band_transform.f + rows * band_transform.e
                band = np.full((rows, grid.width), nodata, dtype=np.uint8)
                for src, box in zip(sources, boxes, strict=True):
                    if box[1] >= top or box[3] <= bottom:  # no overlap with these rows
                        continue
                    part = np.full_like(band, nodata)
                    reproject(rasterio.band(src, 1), part, src_nodata=nodata, dst_nodata=nodata,
                              dst_transform=band_transform, dst_crs=grid.crs,
                              resampling=Resampling.nearest, tolerance=0)  # exact, not
                    # GDAL's approximation to 1/8 pixel, which moves class borders
                    np.copyto(band, part, where=band == nodata)
                writer.write(row, band)
    return grid


def without_crs(scenes: Iterable[Path]) -> Path | None:
    """The first of ``scenes`` that opens but has no CRS (it cannot join a mosaic), or None;
    scenes that do not open are left to fail on their own."""
    for scene in scenes:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(scene) as src:
                    if src.crs is None:
                        return scene
        except RasterioError:
            continue
    return None


@contextmanager
def _open_georeferenced(path: Path) -> Iterator[rasterio.DatasetReader]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        src = rasterio.open(path)
    with src:
        if src.crs is None:
            raise InputError(f"{path} has no CRS, so it has no place in a mosaic",
                             "predict georeferenced scenes, or leave out --mosaic")
        yield src


def _mosaic_grid(sources: Sequence[rasterio.DatasetReader], crs: CRS, out: Path) -> SceneInfo:
    """The grid covering every source in ``crs``, aligned on the pixels of the first source
    in ``crs`` (else of the first source, reprojected)."""
    same = [s for s in sources if s.crs == crs]
    if same:
        pixels = same[0].transform
    else:
        first = sources[0]
        pixels, _, _ = calculate_default_transform(first.crs, crs, first.width, first.height,
                                                   *first.bounds)
    boxes = [transform_bounds(s.crs, crs, *s.bounds, densify_pts=21) for s in sources]
    transform, width, height = covering_grid(pixels, boxes)
    return SceneInfo(path=out, width=width, height=height, count=1, dtype="uint8", crs=crs,
                     transform=transform, nodata=None, block_shape=(ROWS, width),
                     band_names=("class",), georeferenced=True)
