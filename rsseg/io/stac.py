"""STAC inputs: an Item, ItemCollection or Catalog JSON → one stacked scene per item.

Each item's chosen assets (one single-band raster each) become the bands of a GDAL VRT, in
order, on the grid of the finest asset (extended to cover them all), in the item's CRS; coarser
assets are resampled with nearest neighbour, so their values stay as delivered. The bands are
named after the model's bands (predict) or the assets' common names. Which assets:

- ``assets`` (``--assets B04,B03,B02,B08``): those asset keys, in that order;
- else, given the model's ``bands``: for each band name, the asset of that key or whose
  ``eo:bands`` / ``bands`` entry has that name or common name (case-insensitive);
- else (``rsseg tile``): every single-band asset with a common name, in the item's order.

VRTs are written to the cache folder (:func:`~rsseg.io.cache.cache_dir`), named by item id and
content hash; a :class:`SceneInput` also carries the XML, so that a Dask worker without that
folder writes its own copy (:func:`ensure_vrt`). Asset hrefs are local files, ``http(s)://``
(read through GDAL's ``/vsicurl/``) or GDAL paths (``/vsis3/...``). Every problem is a one-line
:class:`InputError`: a missing asset (naming those the item has), assets in different CRSs, an
asset GDAL cannot open.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import RasterioIOError

from rsseg.errors import InputError, OutputError, UsageError
from rsseg.io.extent import covering_grid
from rsseg.io.inputs import SceneInput, StacReader

_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16",
               "uint32": "UInt32", "int32": "Int32", "float32": "Float32",
               "float64": "Float64"}


@dataclass(frozen=True)
class _Asset:
    key: str
    href: str  # what GDAL opens
    name: str  # the band's name in the stack
    crs: object
    transform: Affine
    width: int
    height: int
    dtype: str
    nodata: float | None

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        left, top = self.transform.c, self.transform.f
        return (left, top + self.height * self.transform.e,
                left + self.width * self.transform.a, top)


def stac_reader(vrt_dir: Path, assets: Sequence[str] | None = None,
                bands: Sequence[str] | None = None) -> StacReader:
    """The reader :func:`~rsseg.io.inputs.expand_scenes` calls for STAC documents."""
    return lambda path: stac_scenes(path, vrt_dir, assets, bands)


def stac_scenes(path: Path, vrt_dir: Path, assets: Sequence[str] | None = None,
                bands: Sequence[str] | None = None) -> list[SceneInput]:
    """One scene per item of the STAC document ``path`` (see the module docstring)."""
    items = _items(path)
    if not items:
        raise InputError(f"{path}: the STAC document holds no items", "give an Item, "
                         "ItemCollection or Catalog with items")
    scenes = []
    for item in items:
        chosen = _choose(item, path, assets, bands)
        xml = _vrt_xml([_open_asset(item, key, href, name) for key, href, name in chosen],
                       f"{path}: item {item.id}")
        name = re.sub(r"[^\w.-]+", "_", item.id)
        digest = hashlib.sha256(xml.encode()).hexdigest()[:16]
        scene = SceneInput(name, vrt_dir / f"{name}-{digest}.vrt", xml, f"{path}#{item.id}")
        ensure_vrt(scene)
        scenes.append(scene)
    return scenes


def parse_assets(text: str | None) -> tuple[str, ...] | None:
    """``--assets B04,B03,B02`` → ``("B04", "B03", "B02")``."""
    if text is None:
        return None
    keys = tuple(k.strip() for k in text.split(","))
    if not all(keys):
        raise UsageError(f"--assets {text!r} has an empty asset key",
                         "write asset keys separated by commas, e.g. --assets B04,B03,B02")
    return keys


def check_assets_used(assets: Sequence[str] | None, scenes: Sequence[SceneInput]) -> None:
    """``--assets`` picks assets of STAC items: refuse it when no scene comes from one."""
    if assets and not any(s.vrt for s in scenes):
        raise UsageError("--assets picks the assets of STAC items, and no STAC document is "
                         "given", "leave out --assets, or give a STAC Item/Catalog JSON")


def ensure_vrt(scene: SceneInput) -> Path:
    """``scene.path``, its VRT written first when the scene has one not yet on disk."""
    if scene.vrt is not None and not scene.path.is_file():
        try:  # by rename: concurrent writers write the same bytes
            scene.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{scene.path.name}.", suffix=".part",
                                       dir=scene.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(scene.vrt)
                os.replace(tmp, scene.path)
            finally:
                Path(tmp).unlink(missing_ok=True)
        except OSError as err:
            raise OutputError(f"cannot write {scene.path} ({err.strerror})",
                              "set RSSEG_CACHE_DIR to a writable folder") from None
    return scene.path


def _items(path: Path) -> list:
    import pystac

    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("type")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
        raise InputError(f"{path}: not a STAC JSON document ({_first_line(err)})",
                         "give a STAC Item, ItemCollection or Catalog") from None
    try:
        if kind == "FeatureCollection":
            return list(pystac.ItemCollection.from_file(str(path)))
        stac = pystac.read_file(str(path))
    except (pystac.STACError, pystac.STACTypeError, KeyError, ValueError, TypeError) as err:
        raise InputError(f"{path}: not a valid STAC document ({_first_line(err)})",
                         "give a STAC Item, ItemCollection or Catalog") from None
    if isinstance(stac, pystac.Item):
        return [stac]
    if isinstance(stac, pystac.Catalog):
        return list(stac.get_items(recursive=True))
    raise InputError(f"{path}: a STAC {type(stac).__name__} holds no items",
                     "give a STAC Item, ItemCollection or Catalog")


def _band_entries(asset) -> list[dict]:
    fields = asset.to_dict()
    return fields.get("eo:bands") or fields.get("bands") or []


def _common_name(entry: dict) -> str | None:
    return entry.get("common_name") or entry.get("eo:common_name")


def _describe(item) -> str:
    """``B02 (blue), B03 (green), visual`` — an item's assets with their common names."""
    out = []
    for key, asset in item.assets.items():
        names = [_common_name(e) for e in _band_entries(asset) if _common_name(e)]
        out.append(f"{key} ({', '.join(names)})" if names else key)
    return ", ".join(out)


def _choose(item, path: Path, assets: Sequence[str] | None,
            bands: Sequence[str] | None) -> list[tuple[str, str, str]]:
    """``(asset key, href, band name)`` of the stacked bands, in order."""
    where = f"{path}: item {item.id}"
    if assets:
        missing = [a for a in assets if a not in item.assets]
        if missing:
            raise InputError(f"{where} has no asset {', '.join(missing)}; it has "
                             f"{_describe(item)}", "pick --assets among those")
        return [(a, _href(item.assets[a]), _name(a, item.assets[a])) for a in assets]
    if bands:
        chosen = []
        for band in bands:
            key = _match(item, band)
            if key is None:
                raise InputError(f"{where} has no asset for the model's band {band!r}; it has "
                                 f"{_describe(item)}",
                                 "name one asset per model band with --assets KEY,KEY,...")
            chosen.append((key, _href(item.assets[key]), band))
        return chosen
    chosen = [(k, _href(a), _name(k, a)) for k, a in item.assets.items()
              if len(_band_entries(a)) == 1 and _common_name(_band_entries(a)[0])]
    if not chosen:
        raise InputError(f"{where} has no single-band assets with common names; it has "
                         f"{_describe(item)}", "name the assets to stack with --assets")
    return chosen


def _match(item, band: str) -> str | None:
    """The key of the asset for the band called ``band``: by key, else by band name or
    common name of a single-band asset."""
    wanted = band.lower()
    for key in item.assets:
        if key.lower() == wanted:
            return key
    for key, asset in item.assets.items():
        entries = _band_entries(asset)
        if len(entries) == 1 and wanted in {str(v).lower() for v in (
                entries[0].get("name"), _common_name(entries[0])) if v}:
            return key
    return None


def _name(key: str, asset) -> str:
    entries = _band_entries(asset)
    return (_common_name(entries[0]) if len(entries) == 1 else None) or key


def _href(asset) -> str:
    href = asset.get_absolute_href() or asset.href
    if href.startswith(("http://", "https://")):
        return f"/vsicurl/{href}"
    return href.removeprefix("file://")


def _open_asset(item, key: str, href: str, name: str) -> _Asset:
    where = f"item {item.id}, asset {key}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(href) as src:
                if src.count != 1:
                    raise InputError(f"{where} ({href}) has {src.count} bands",
                                     "stack single-band assets (pick them with --assets)")
                return _Asset(key, href, name, src.crs, src.transform, src.width, src.height,
                              src.dtypes[0], src.nodata)
    except RasterioIOError as err:
        raise InputError(f"{where}: cannot open {href} ({_first_line(err)})",
                         "check the href, or that the file is reachable") from None


def _vrt_xml(assets: list[_Asset], where: str) -> str:
    """The VRT stacking ``assets`` on the grid of the finest one (see the module docstring)."""
    if len({str(a.crs) for a in assets}) > 1 or assets[0].crs is None:
        listed = ", ".join(f"{a.key} {a.crs.to_string() if a.crs else 'none'}" for a in assets)
        raise InputError(f"{where}: its assets must share a CRS; they have {listed}",
                         "stack assets of one CRS (pick them with --assets)")
    finest = min(assets, key=lambda a: abs(a.transform.a * a.transform.e))
    grid, width, height = covering_grid(finest.transform, [a.bounds for a in assets])
    left, top, xres, yres = grid.c, grid.f, grid.a, -grid.e
    dtype = str(np.result_type(*[a.dtype for a in assets]))
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    ET.SubElement(root, "SRS").text = finest.crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(
        repr(float(v)) for v in (left, xres, 0.0, top, 0.0, -yres))
    for index, a in enumerate(assets, start=1):
        band = ET.SubElement(root, "VRTRasterBand", dataType=_GDAL_TYPES.get(dtype, "Float64"),
                             band=str(index))
        ET.SubElement(band, "Description").text = a.name
        if a.nodata is not None:
            ET.SubElement(band, "NoDataValue").text = repr(float(a.nodata))
        source = ET.SubElement(band, "ComplexSource", resampling="nearest")
        ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = a.href
        ET.SubElement(source, "SourceBand").text = "1"
        ET.SubElement(source, "SrcRect", xOff="0", yOff="0", xSize=str(a.width),
                      ySize=str(a.height))
        ET.SubElement(source, "DstRect", xOff=repr((a.transform.c - left) / xres),
                      yOff=repr((top - a.transform.f) / yres),
                      xSize=repr(a.width * a.transform.a / xres),
                      ySize=repr(a.height * -a.transform.e / yres))
        if a.nodata is not None:
            ET.SubElement(source, "NODATA").text = repr(float(a.nodata))
    return ET.tostring(root, encoding="unicode")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
