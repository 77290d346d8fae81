"""GDAL's ``.aux.xml`` sidecar (PAM) for class rasters: category names and an attribute table.

A GeoTIFF cannot hold category names or a raster attribute table (RAT) inside the file: GDAL's
GTiff and COG drivers keep both in the Persistent Auxiliary Metadata file ``NAME.tif.aux.xml``
and read them back from there (``gdalinfo`` lists "Categories" and the RAT; QGIS labels the
classes with them). The colour table and rsseg's ``CLASSES`` JSON tag travel inside the TIFF.

The RAT is "thematic": one row per class with ``Value`` (the pixel value), ``Class`` (its name)
and ``Red``/``Green``/``Blue``/``Alpha`` (its colour), with GDAL's field usages, so GIS software
that reads RATs (QGIS 3.30+, ArcGIS) shows the names too.
"""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

from rsseg.io.legend import Legend
from rsseg.io.publish import Publication, publishing

# GDALRATFieldType and GDALRATFieldUsage values (gdal.h)
_INTEGER, _STRING = 0, 2
_USAGE = {"Value": 5, "Class": 2, "Red": 6, "Green": 7, "Blue": 8, "Alpha": 9}  # GFU_MinMax...


def aux_xml_path(raster: str | Path) -> Path:
    """Where GDAL looks for the PAM sidecar of ``raster``: ``NAME.tif.aux.xml``."""
    raster = Path(raster)
    return raster.with_name(raster.name + ".aux.xml")


def read_category_names(raster: str | Path, band: int = 1) -> dict[int, str]:
    """The category names of ``band`` in ``raster``'s sidecar, ``{value: name}`` without the
    empty ones; ``{}`` without a sidecar or with an unreadable one."""
    aux_xml = aux_xml_path(raster)
    if not aux_xml.is_file():
        return {}
    try:
        root = ET.parse(aux_xml).getroot()
    except ET.ParseError:
        return {}
    found = root.find(f"PAMRasterBand[@band='{band}']")
    cats = found.findall("CategoryNames/Category") if found is not None else []
    return {i: (c.text or "").strip() for i, c in enumerate(cats) if (c.text or "").strip()}


def category_aux_xml(classes: Legend, band: int = 1) -> str:
    """PAM XML with the classes as category names (indexed by value) and a thematic RAT."""
    root = ET.Element("PAMDataset")
    pam_band = ET.SubElement(root, "PAMRasterBand", band=str(band))
    names = dict(zip(classes.ids, classes.names, strict=True))
    categories = ET.SubElement(pam_band, "CategoryNames")
    for value in range(max(classes.ids) + 1):
        ET.SubElement(categories, "Category").text = names.get(value, "")
    rat = ET.SubElement(pam_band, "GDALRasterAttributeTable", tableType="thematic")
    for index, (name, usage) in enumerate(_USAGE.items()):
        field = ET.SubElement(rat, "FieldDefn", index=str(index))
        ET.SubElement(field, "Name").text = name
        ET.SubElement(field, "Type").text = str(_STRING if name == "Class" else _INTEGER)
        ET.SubElement(field, "Usage").text = str(usage)
    for row, c in enumerate(classes.classes):
        entry = ET.SubElement(rat, "Row", index=str(row))
        for value in (c.id, c.name, *c.color, 255):
            ET.SubElement(entry, "F").text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def write_category_aux_xml(raster: str | Path, classes: Legend, overwrite: bool = False,
                           publication: Publication | None = None) -> Path:
    """Write ``raster``'s PAM sidecar with its class names (atomically); returns its path."""
    path = aux_xml_path(raster)
    with publishing(publication) as pub:
        pub.write(path, category_aux_xml(classes), overwrite)
    return path
