"""All geopandas/pyogrio access: reading labelled features, reprojecting and rasterizing them.

Everything above this module deals in numpy arrays of shapely geometries and values.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pyproj
import shapely
from pyproj.exceptions import CRSError, ProjError
from rasterio.features import rasterize

from rsseg.errors import InputError
from rsseg.io.raster import SceneInfo


@dataclass(frozen=True)
class VectorLayer:
    """Features of one layer in the scene's CRS.

    ``geometries`` is an object array of shapely geometries (None where a feature has none);
    ``values`` holds the label column: float64 (NaN = missing) when ``numeric``, else ``str``
    objects (None = missing).
    """

    path: Path
    geometries: np.ndarray
    values: np.ndarray
    numeric: bool


def read_vector(path: str | Path, column: str, crs: object | None) -> VectorLayer:
    """Read ``column`` and the geometries of a vector file, reprojected to ``crs``.

    A layer without a CRS is assumed to be in ``crs`` (with a warning). Raises
    :class:`InputError` for a missing/unreadable file, a missing column (listing the columns), a
    georeferenced layer on a scene without CRS, or a CRS that cannot be reprojected.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file", "check --labels")
    try:
        fields = [str(f) for f in pyogrio.read_info(path)["fields"]]
        if column not in fields:
            raise InputError(f"{path}: no column {column!r}; columns are {', '.join(fields)}",
                             "choose --label-column from these")
        frame = gpd.read_file(path, columns=[column], engine="pyogrio")
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as err:
        raise InputError(f"{path}: not a readable vector file ({_first_line(err)})",
                         "give a GeoPackage, shapefile or GeoJSON") from None
    frame = _to_crs(frame, crs, path)
    series = frame[column]
    numeric = bool(series.dtype.kind in "biuf")
    values = (series.to_numpy(dtype=np.float64, na_value=np.nan) if numeric else
              np.array([None if _missing(v) else str(v).strip() for v in series], dtype=object))
    return VectorLayer(path, frame.geometry.to_numpy(dtype=object), values, numeric)


def _to_crs(frame: gpd.GeoDataFrame, crs: object | None, path: Path) -> gpd.GeoDataFrame:
    if frame.crs is None:
        if crs is not None:
            warnings.warn(f"{path.name} has no CRS; assuming the scene's CRS", UserWarning,
                          stacklevel=3)
        return frame
    if crs is None:
        raise InputError(f"{path}: features have a CRS ({_crs_name(frame.crs)}) but the scene "
                         "has none", "georeference the scene or give labels in pixel coordinates")
    try:
        out = frame.to_crs(crs.to_wkt())  # type: ignore[attr-defined]
    except (CRSError, ProjError, ValueError) as err:
        raise InputError(f"{path}: cannot reproject from {_crs_name(frame.crs)} to the scene's "
                         f"CRS {_crs_name(crs)} ({_first_line(err)})",
                         "reproject the labels yourself") from None
    bounds = out.total_bounds
    if len(out) and not np.all(np.isfinite(bounds[~np.isnan(bounds)])):
        raise InputError(f"{path}: reprojecting from {_crs_name(frame.crs)} to the scene's CRS "
                         f"{_crs_name(crs)} gives non-finite coordinates",
                         "reproject the labels yourself")
    return out


def burn_feature_index(geometries: np.ndarray, info: SceneInfo) -> np.ndarray:
    """``(H, W)`` int32: index of the feature covering each pixel, -1 where none.

    Points and lines burn the pixels they touch; polygons the pixels whose centre they contain
    (``all_touched=False``). Where features overlap, the later one wins. Entries of
    ``geometries`` that are None or empty are skipped.
    """
    shape = (info.height, info.width)
    shapes = [(g, i) for i, g in enumerate(geometries) if g is not None and not g.is_empty]
    if not shapes:
        return np.full(shape, -1, dtype=np.int32)
    return rasterize(shapes, out_shape=shape, transform=info.transform, fill=-1,
                     all_touched=False, dtype="int32")


def intersects_scene(geometries: np.ndarray, info: SceneInfo) -> np.ndarray:
    """Bool per feature: does its geometry touch the scene's footprint (None/empty → False)?"""
    a, b, c, d, e, f = tuple(info.transform)[:6]  # type: ignore[arg-type]
    corners = [(0, 0), (info.width, 0), (info.width, info.height), (0, info.height)]
    footprint = shapely.Polygon([(a * x + b * y + c, d * x + e * y + f) for x, y in corners])
    geoms = np.array([g if g is not None else shapely.Point() for g in geometries], dtype=object)
    return shapely.intersects(geoms, footprint) if len(geoms) else np.zeros(0, dtype=bool)


def _crs_name(crs: object) -> str:
    crs = pyproj.CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    authority = crs.to_authority()
    return ":".join(authority) if authority else crs.name


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value) == ""


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
