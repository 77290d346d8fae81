"""``rsseg vectorize`` and ``rsseg predict --vector``: class raster → polygons per class.

Rows stream through :class:`~rsseg.polygons.BandPolygonizer` one band at a time (the bands the
predictor finishes, or 512-row blocks of a class raster on disk); regions cut by band seams are
merged back, so the polygons equal those of polygonizing the whole raster at once. Each polygon
gets ``class_id``, ``class_name``, ``pixels`` (its area in pixels) and ``area_m2`` (equal-area
when the CRS is geographic); ``--min-area`` drops smaller polygons, ``--simplify`` then
simplifies each (Douglas-Peucker in CRS units, topology of each polygon preserved).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from rasterio.windows import Window

from rsseg.classes import ClassTable, raster_classes
from rsseg.errors import ConfigError
from rsseg.io.atomic import check_output
from rsseg.io.polygons import equal_area, to_crs_coordinates, vector_driver, write_polygons
from rsseg.io.publish import Publication, publishing
from rsseg.io.raster import SceneInfo, open_scene
from rsseg.polygons import BandPolygonizer

READ_ROWS = 512  # rows per read of a class raster (one block row of rsseg's COGs)


@dataclass(frozen=True)
class VectorOptions:
    """``--min-area`` (m², pixels without a CRS) and ``--simplify`` (CRS units)."""

    min_area: float = 0.0
    simplify: float = 0.0
    overwrite: bool = False


@dataclass(frozen=True)
class VectorSummary:
    out: Path
    polygons: int  # written, after --min-area
    dropped: int  # smaller than --min-area
    seconds: float  # polygonizing, merging, attributes and writing


def check_vector_options(out: str | Path, options: VectorOptions, flag: str = "--vector") -> str:
    """Refuse a bad extension or a negative ``--min-area``/``--simplify``; returns the driver."""
    driver = vector_driver(out, flag)
    for name, value in (("--min-area", options.min_area), ("--simplify", options.simplify)):
        if not np.isfinite(value) or value < 0:
            raise ConfigError(f"{name} {value:g} must be 0 or more",
                              f"use e.g. {name} 0 (keep everything)")
    check_output(out, options.overwrite)
    return driver


class VectorSink:
    """Class rows in (any band heights, in order), a polygon file staged in ``publication``."""

    def __init__(self, out: str | Path, info: SceneInfo, classes: ClassTable | None,
                 nodata: int | None, options: VectorOptions, publication: Publication,
                 flag: str = "--vector") -> None:
        self.out = Path(out)
        self.driver = check_vector_options(out, options, flag)
        self.info = info
        self.classes = classes
        self.options = options
        self.polygonizer = BandPolygonizer(info.height, nodata)
        self.staged = publication.stage(out, options.overwrite)
        self.seconds = 0.0

    def add(self, row: int, classes: np.ndarray) -> None:
        start = time.perf_counter()
        self.polygonizer.add(row, classes)
        self.seconds += time.perf_counter() - start

    def finish(self) -> VectorSummary:
        start = time.perf_counter()
        pixel_geoms, values = self.polygonizer.finish()
        pixels = shapely.area(pixel_geoms) if len(pixel_geoms) else np.zeros(0)
        if self.info.georeferenced:
            geoms = to_crs_coordinates(pixel_geoms, self.info.transform)
            area = equal_area(geoms, self.info.crs)
            size = area
        else:
            warnings.warn(f"{self.info.path.name} has no CRS: polygons are in pixel coordinates, "
                          "area_m2 is empty and --min-area counts pixels", UserWarning,
                          stacklevel=2)
            geoms, area, size = pixel_geoms, np.full(len(pixel_geoms), np.nan), pixels
        keep = size >= self.options.min_area
        geoms, values, pixels, area = geoms[keep], values[keep], pixels[keep], area[keep]
        if self.options.simplify > 0:
            geoms = shapely.simplify(geoms, self.options.simplify, preserve_topology=True)
        names = self.classes or ClassTable.from_ids(np.unique(values).tolist())
        lookup = {c.id: c.name for c in names.classes}
        columns = {"class_id": values.astype(np.int32),
                   "class_name": np.array([lookup.get(int(v), f"class {v}") for v in values],
                                          dtype=object),
                   "pixels": np.rint(pixels).astype(np.int64),
                   "area_m2": area.astype(np.float64)}
        write_polygons(self.staged, geoms, columns, self.info.crs, self.driver, self.out.stem)
        self.seconds += time.perf_counter() - start
        return VectorSummary(self.out, int(keep.sum()), int((~keep).sum()), self.seconds)


def vectorize_raster(raster: str | Path, out: str | Path,
                     options: VectorOptions = VectorOptions()) -> VectorSummary:
    """Polygons of the class raster ``raster`` (band 1; its nodata gets none) into ``out``.

    Class names come from the raster (``CLASSES`` tag or GDAL category names), else
    ``class <id>``. Raises InputError/ConfigError/OutputError (one line each) for bad input;
    nothing appears at ``out`` unless it succeeds.
    """
    check_vector_options(out, options, "--out")
    with open_scene(raster) as scene:
        if scene.count != 1:
            raise ConfigError(f"{raster} has {scene.count} bands, not one band of class ids",
                              "give a single-band class raster such as rsseg predict's")
        if not np.issubdtype(np.dtype(scene.info.dtype), np.integer):
            raise ConfigError(f"{raster} holds {scene.info.dtype} values, not class ids",
                              "give a class raster (integer values) such as rsseg predict's")
        info = scene.info
        nodata = None if info.nodata is None else int(info.nodata)
        with publishing() as pub:
            sink = VectorSink(out, info, raster_classes(scene), nodata, options, pub, "--out")
            for row in range(0, info.height, READ_ROWS):
                rows = min(READ_ROWS, info.height - row)
                band = scene.read(Window(0, row, info.width, rows))[0]
                sink.add(row, band)
            summary = sink.finish()
    return summary
