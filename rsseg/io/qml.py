"""QGIS layer styles (``.qml``) for class rasters: a paletted renderer with names and colours.

QGIS applies ``NAME.qml`` automatically when it opens ``NAME.tif`` (its "default style"), so a
class raster written with its style opens with one legend entry per class (name + colour) and
its nodata value transparent. The style is plain XML, written by :mod:`xml.etree` (names are
escaped), and lands beside the raster through :class:`~rsseg.io.publish.Publication`.
"""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

from rsseg.io.legend import Legend
from rsseg.io.publish import Publication, publishing

QGIS_VERSION = "3.22.0"  # oldest QGIS the style is written for; newer versions read it as well


def qml_path(raster: str | Path) -> Path:
    """The style QGIS looks for beside ``raster``: same folder and stem, ``.qml``."""
    return Path(raster).with_suffix(".qml")


def paletted_qml(classes: Legend, nodata: int | None = 255, band: int = 1) -> str:
    """The ``.qml`` text: paletted renderer, one entry per class, ``nodata`` fully transparent."""
    root = ET.Element("qgis", version=QGIS_VERSION, styleCategories="AllStyleCategories")
    pipe = ET.SubElement(root, "pipe")
    provider = ET.SubElement(pipe, "provider")
    ET.SubElement(provider, "resampling", enabled="false", maxOversampling="2",
                  zoomedInResamplingMethod="nearestNeighbour",
                  zoomedOutResamplingMethod="nearestNeighbour")
    renderer = ET.SubElement(pipe, "rasterrenderer", type="paletted", band=str(band),
                             opacity="1", alphaBand="-1", nodataColor="")
    transparency = ET.SubElement(renderer, "rasterTransparency")
    if nodata is not None:
        values = ET.SubElement(transparency, "singleValuePixelList")
        ET.SubElement(values, "pixelListEntry", min=str(nodata), max=str(nodata),
                      percentTransparent="100")
    palette = ET.SubElement(renderer, "colorPalette")
    for c in classes.classes:
        ET.SubElement(palette, "paletteEntry", value=str(c.id), label=c.name, alpha="255",
                      color="#{:02x}{:02x}{:02x}".format(*c.color))
    ET.SubElement(renderer, "colorramp", name="[source]", type="randomcolors")
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(pipe, "huesaturation", saturation="0", grayscaleMode="0", invertColors="0",
                  colorizeOn="0", colorizeRed="255", colorizeGreen="128", colorizeBlue="128",
                  colorizeStrength="100")
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    ET.SubElement(pipe, "resamplingStage").text = "resamplingFilter"
    ET.SubElement(root, "blendMode").text = "0"
    ET.indent(root)
    return ("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
            + ET.tostring(root, encoding="unicode") + "\n")


def write_qml(raster: str | Path, classes: Legend, nodata: int | None = 255,
              overwrite: bool = False, publication: Publication | None = None) -> Path:
    """Write the style of class raster ``raster`` beside it (atomically); returns its path.

    With ``publication``, the file is staged there and appears when it is committed.
    """
    path = qml_path(raster)
    with publishing(publication) as pub:
        pub.write(path, paletted_qml(classes, nodata), overwrite)
    return path
