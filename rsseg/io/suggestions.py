"""Points to label in QGIS: the GeoPackage ``rsseg suggest`` writes, its ``.qml``, and what it
needs to know of an existing label file's class column.

The layer holds one point per suggestion, in the scene's CRS (pixel coordinates for a scene
without georeferencing, as :mod:`rsseg.io.polygons`), with an empty label column and the
model's view of the point. Its style (``NAME.qml`` beside ``NAME.gpkg``, which QGIS applies when
it opens the layer) draws the points by predicted class in the classes' colours (categorized
renderer) and gives the label column a drop-down of the class names (ValueMap widget); the other
columns are read-only in the form. Written as :mod:`rsseg.io.qml` writes raster styles.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pyogrio
import pyproj

from rsseg.errors import InputError, OutputError
from rsseg.io.qml import QGIS_VERSION

QGIS_NULL = "{2839923C-8B7D-419E-B84B-CA2FE9B80EC7}"  # how a ValueMap stores "no value" (NULL)


@dataclass(frozen=True)
class LabelColumn:
    """The class column of an existing vector label file."""

    path: Path
    numeric: bool  # class ids (whole numbers); else class names (text)
    values: tuple[int | str, ...]  # the distinct classes it holds, sorted
    crs: str | None  # the layer's CRS as WKT, None without one


def read_label_column(path: str | Path, column: str) -> LabelColumn:
    """The type, classes and CRS of ``column`` in the vector file ``path``.

    Raises :class:`InputError` for a missing or unreadable file, a missing column (listing the
    columns) and a column that holds neither class ids (whole numbers 0..254) nor names (text).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file", "check --labels")
    try:
        info = pyogrio.read_info(path)
        fields = [str(f) for f in info["fields"]]
        if column not in fields:
            raise InputError(f"{path}: no column {column!r}; columns are {', '.join(fields)}",
                             "choose --label-column from these")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            frame = pyogrio.read_dataframe(path, columns=[column], read_geometry=False)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as err:
        raise InputError(f"{path}: not a readable vector file ({str(err).splitlines()[0]})",
                         "give a GeoPackage, shapefile or GeoJSON") from None
    series = frame[column]
    kind = series.dtype.kind
    if kind in "iuf":
        ids = series.dropna().to_numpy(dtype=np.float64)
        bad = ids[(ids < 0) | (ids > 254) | (ids != np.round(ids))]
        if bad.size:
            raise InputError(f"{path}: column {column!r} value {bad[0]:g} is not a class id "
                             "(whole numbers 0..254)", "use a column of class ids or names")
        values: tuple[int | str, ...] = tuple(sorted({int(v) for v in ids}))
    elif kind == "O" and all(isinstance(v, str) for v in series.dropna()):
        values = tuple(sorted({v.strip() for v in series.dropna() if v.strip()}))
    else:
        raise InputError(f"{path}: column {column!r} holds {series.dtype} values, not classes",
                         "give a column of class names (text) or class ids (whole numbers)")
    crs = info.get("crs")
    wkt = pyproj.CRS.from_user_input(crs).to_wkt() if crs else None
    return LabelColumn(path, kind in "iuf", values, wkt)


def same_crs(a: str | None, b: object | None) -> bool:
    """Whether WKT ``a`` and ``b`` (a rasterio CRS or anything pyproj reads) are one CRS."""
    if a is None or b is None:
        return a is None and b is None
    other = b.to_wkt() if hasattr(b, "to_wkt") else b
    return pyproj.CRS.from_user_input(a) == pyproj.CRS.from_user_input(other)


def crs_name(wkt: str) -> str:
    crs = pyproj.CRS.from_user_input(wkt)
    authority = crs.to_authority()
    return ":".join(authority) if authority else crs.name


def write_points(path: Path, x: np.ndarray, y: np.ndarray, label_column: str, numeric: bool,
                 columns: Mapping[str, object], crs: object | None, layer: str) -> None:
    """Write points ``(x, y)`` (in ``crs``) as a GeoPackage layer: first an empty
    ``label_column`` (integer when ``numeric``, else text), then the attribute ``columns``.

    ``path`` may be a staged temporary name. Raises :class:`OutputError` when it cannot be
    written.
    """
    import geopandas as gpd  # imported here: only suggest loads it
    import pandas as pd

    empty = pd.array([None] * len(x), dtype="Int64" if numeric else object)
    frame = gpd.GeoDataFrame({label_column: empty, **columns},
                             geometry=gpd.points_from_xy(x, y),
                             crs=crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # pyogrio: temporary file names
            warnings.filterwarnings("ignore", message=".*'crs' was not provided.*")
            path.unlink(missing_ok=True)  # the staged placeholder: let GDAL create it
            # GeoPackage 1.2: GDAL < 3.7 (QGIS 3.22 LTR) warns on the 1.4 files of newer GDAL
            pyogrio.write_dataframe(frame, path, driver="GPKG", layer=layer,
                                    dataset_options={"VERSION": "1.2"})
    except (OSError, pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as err:
        raise OutputError(f"cannot write points to {path} ({err})",
                          "check free space and permissions of the output folder") from None


def points_qml(categories: Sequence[tuple[str, tuple[int, int, int]]], choices: Mapping[str, str],
               label_column: str, fields: Sequence[str], by: str = "predicted") -> str:
    """The ``.qml`` text of the suggestions layer.

    ``categories``: (class name, RGB) drawn by the value of column ``by``; ``choices``: the
    label drop-down, shown text → stored value (a NULL entry comes first); ``fields``: every
    attribute column, all read-only in the form except ``label_column``.
    """
    root = ET.Element("qgis", version=QGIS_VERSION, styleCategories="AllStyleCategories")
    renderer = ET.SubElement(root, "renderer-v2", type="categorizedSymbol", attr=by,
                             symbollevels="0", enableorderby="0", forceraster="0")
    cats = ET.SubElement(renderer, "categories")
    symbols = ET.SubElement(renderer, "symbols")
    for i, (name, color) in enumerate(categories):
        ET.SubElement(cats, "category", render="true", value=name, label=name, symbol=str(i))
        _marker(symbols, str(i), color)
    fields_el = ET.SubElement(root, "fieldConfiguration")
    for field in fields:
        element = ET.SubElement(fields_el, "field", name=field, configurationFlags="None")
        if field == label_column:
            widget = ET.SubElement(element, "editWidget", type="ValueMap")
            options = ET.SubElement(ET.SubElement(widget, "config"), "Option", type="Map")
            entries = ET.SubElement(options, "Option", name="map", type="List")
            for text, value in {"<NULL>": QGIS_NULL, **choices}.items():
                entry = ET.SubElement(entries, "Option", type="Map")
                ET.SubElement(entry, "Option", name=text, value=value, type="QString")
        else:
            ET.SubElement(element, "editWidget", type="TextEdit")
    aliases = ET.SubElement(root, "aliases")
    for index, field in enumerate(fields):
        ET.SubElement(aliases, "alias", field=field, index=str(index), name="")
    editable = ET.SubElement(root, "editable")
    for field in fields:
        ET.SubElement(editable, "field", name=field, editable="1" if field == label_column else "0")
    ET.SubElement(root, "layerGeometryType").text = "0"  # points
    ET.indent(root)
    return ("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
            + ET.tostring(root, encoding="unicode") + "\n")


def _marker(parent: ET.Element, name: str, color: tuple[int, int, int]) -> None:
    """A filled circle of ``color`` with a dark outline, 3 mm across."""
    symbol = ET.SubElement(parent, "symbol", type="marker", name=name, alpha="1",
                           clip_to_extent="1", force_rhr="0")
    layer = ET.SubElement(symbol, "layer", attrib={"class": "SimpleMarker", "pass": "0"},
                          enabled="1", locked="0")
    options = ET.SubElement(layer, "Option", type="Map")
    for key, value in (("name", "circle"), ("color", "{},{},{},255".format(*color)),
                       ("outline_color", "35,35,35,255"), ("outline_style", "solid"),
                       ("outline_width", "0.4"), ("outline_width_unit", "MM"),
                       ("size", "3"), ("size_unit", "MM")):
        ET.SubElement(options, "Option", name=key, value=value, type="QString")
