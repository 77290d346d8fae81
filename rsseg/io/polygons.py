"""Polygon I/O: GDAL's polygonize on rows of a class raster, polygon files (GPKG/FGB/Parquet).

- :func:`polygonize` turns ``(h, W)`` class rows into shapely polygons in *pixel* coordinates
  (x = column, y = row, both integers), one per 4-connected region of equal value, so that
  the pieces of a region cut by a window seam can be merged exactly (:mod:`rsseg.polygons`).
- :func:`write_polygons` writes polygons and their attribute columns by the output's extension
  (:data:`VECTOR_FORMATS`); GeoParquet needs the optional ``pyarrow``.
- :func:`equal_area` gives polygon areas in m² whatever the CRS (an equal-area projection
  centred on the data when the CRS is geographic).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyproj
import shapely
from affine import Affine
from rasterio.features import shapes

from rsseg.errors import ConfigError, OutputError

# extension → (OGR driver or "Parquet", name shown to users)
VECTOR_FORMATS: dict[str, tuple[str, str]] = {
    ".gpkg": ("GPKG", "GeoPackage"),
    ".fgb": ("FlatGeobuf", "FlatGeobuf"),
    ".parquet": ("Parquet", "GeoParquet"),
    ".geoparquet": ("Parquet", "GeoParquet"),
}
PARQUET_INSTALL = "pip install 'rsseg[parquet]'"


def supported_vector_formats() -> str:
    return ", ".join(f"{ext} ({name})" for ext, (_, name) in VECTOR_FORMATS.items())


def vector_driver(path: str | Path, flag: str = "--vector") -> str:
    """The driver for ``path``'s extension; :class:`ConfigError` listing the supported ones.

    GeoParquet without ``pyarrow`` installed is refused here too, before any work is done.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in VECTOR_FORMATS:
        raise ConfigError(f"{flag} {path}: unsupported extension {suffix or '(none)'!r}",
                          f"use one of {supported_vector_formats()}")
    driver = VECTOR_FORMATS[suffix][0]
    if driver == "Parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError(f"{flag} {path}: GeoParquet output needs pyarrow",
                              f"install it with {PARQUET_INSTALL}, or write .gpkg/.fgb") from None
    return driver


def polygonize(values: np.ndarray, valid: np.ndarray,
               row_offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Polygons of the 4-connected regions of equal value in ``values`` ``(h, W)``.

    Pixels where ``valid`` is False get no polygon. Coordinates are pixel coordinates of the
    scene: a pixel at row ``r`` (``row_offset`` + band row) and column ``c`` is the square
    ``[c, c + 1] x [r, r + 1]``. Returns an object array of shapely Polygons and their values.
    """
    if values.dtype not in (np.uint8, np.uint16, np.int16, np.int32):  # what GDAL polygonizes
        values = values.astype(np.int32)
    values = np.ascontiguousarray(values)
    found = list(shapes(values, mask=np.ascontiguousarray(valid), connectivity=4,
                        transform=Affine.translation(0, row_offset)))
    out = np.array([v for _, v in found], dtype=values.dtype)
    if not found:
        return np.empty(0, dtype=object), out
    # GeoJSON rings → shapely in a few vectorised calls (10x faster than shape() per polygon)
    rings = [ring for g, _ in found for ring in g["coordinates"]]
    owner = np.repeat(np.arange(len(found)), [len(g["coordinates"]) for g, _ in found])
    coords = np.fromiter(itertools.chain.from_iterable(itertools.chain.from_iterable(rings)),
                         dtype=np.float64).reshape(-1, 2)
    ring_of = np.repeat(np.arange(len(rings)), [len(r) for r in rings])
    geoms = shapely.polygons(shapely.linearrings(coords, indices=ring_of), indices=owner)
    return geoms, out


def to_crs_coordinates(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    """Pixel-coordinate geometries → the raster's CRS through its affine ``transform``."""
    a, b, c, d, e, f = tuple(transform)[:6]
    matrix = np.array([[a, b], [d, e]], dtype=np.float64)
    offset = np.array([c, f], dtype=np.float64)
    return shapely.transform(geoms, lambda xy: xy @ matrix.T + offset)


def equal_area(geoms: np.ndarray, crs: object) -> np.ndarray:
    """Areas in m² of ``geoms`` given in ``crs`` (anything pyproj reads).

    Projected CRS: planar area times the square of the linear unit in metres. Geographic CRS:
    areas after projecting to a Lambert azimuthal equal-area projection centred on the data.
    """
    crs = pyproj.CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    if not len(geoms):
        return np.zeros(0)
    if not crs.is_geographic:
        factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
        return shapely.area(geoms) * factor**2
    xmin, ymin, xmax, ymax = shapely.total_bounds(geoms)
    laea = pyproj.CRS.from_proj4(f"+proj=laea +lat_0={(ymin + ymax) / 2} "
                                 f"+lon_0={(xmin + xmax) / 2} +datum=WGS84 +units=m")
    project = pyproj.Transformer.from_crs(crs, laea, always_xy=True)
    projected = shapely.transform(geoms, lambda xy: np.column_stack(
        project.transform(xy[:, 0], xy[:, 1])))
    return shapely.area(projected)


def write_polygons(path: Path, geoms: np.ndarray, columns: Mapping[str, np.ndarray],
                   crs: object | None, driver: str, layer: str) -> None:
    """Write ``geoms`` (in ``crs``) with attribute ``columns`` to ``path`` with ``driver``.

    ``path`` may be a temporary name: the driver is given explicitly. Raises
    :class:`OutputError` when the file cannot be written.
    """
    import geopandas as gpd  # imported here: rsseg predict without --vector never loads it
    import pyogrio

    frame = gpd.GeoDataFrame(dict(columns), geometry=gpd.GeoSeries(geoms),
                             crs=crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # pyogrio: temporary file names
            # without a CRS the scene's own warning has said so; geopandas would repeat it
            warnings.filterwarnings("ignore", message=".*'crs' was not provided.*")
            if driver == "Parquet":
                Path(path).unlink(missing_ok=True)
                frame.to_parquet(path, index=False)
            else:
                Path(path).unlink(missing_ok=True)  # the staged placeholder: let GDAL create it
                # GeoPackage 1.2: GDAL < 3.7 (QGIS 3.22 LTR) warns on the 1.4 files of newer GDAL
                options = {"VERSION": "1.2"} if driver == "GPKG" else {}
                pyogrio.write_dataframe(frame, path, driver=driver, layer=layer,
                                        promote_to_multi=False, dataset_options=options)
    except (OSError, pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as err:
        raise OutputError(f"cannot write polygons to {path} ({err})",
                          "check free space and permissions of the output folder") from None
