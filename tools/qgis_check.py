#!/usr/bin/env python3
"""Open rsseg outputs in real QGIS (PyQGIS, headless) and report what a QGIS user would see.

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tools/qgis_check.py pred.tif \
        [--vector pred.gpkg] [--png pred_qgis.png] [--json]

PyQGIS lives in the system Python (Debian: ``apt-get install python3-qgis qgis-providers``), not
in rsseg's environment, so this script imports nothing from rsseg. Started by an interpreter
without ``qgis`` it re-runs itself with ``$RSSEG_QGIS_PYTHON`` (default ``/usr/bin/python3``).

For a class raster it reports the CRS, the renderer QGIS chose (``paletted`` when the ``.qml``
sidecar was applied), its classes (value, label, colour), the nodata value and whether nodata is
transparent; for a vector layer its feature count and fields; ``--png`` renders the layers as
QGIS draws them. Exit code 0 when the raster opens paletted with one named entry per class.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raster", help="class raster written by rsseg predict")
    parser.add_argument("--vector", help="polygons written by rsseg (GeoPackage, FlatGeobuf...)")
    parser.add_argument("--png", help="render the layers to this PNG")
    parser.add_argument("--size", type=int, default=800, help="PNG width in pixels")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    try:
        from qgis.core import QgsApplication
    except ImportError:
        system = os.environ.get("RSSEG_QGIS_PYTHON", "/usr/bin/python3")
        if os.path.realpath(system) != os.path.realpath(sys.executable) and os.path.exists(system):
            os.execv(system, [system, *sys.argv])  # e.g. started from rsseg's virtualenv
        print(f"Error: PyQGIS is not importable by {sys.executable} (apt-get install python3-qgis"
              " qgis-providers, and run this script with /usr/bin/python3)", file=sys.stderr)
        return 1
    app = QgsApplication([], False)
    app.initQgis()
    try:
        report = check(args)
    finally:
        app.exitQgis()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        raster = report["raster"]
        print(f"QGIS {report['qgis']}: {args.raster}: CRS {raster['crs']}, renderer "
              f"{raster['renderer']}, {raster['named_classes']} named classes, nodata "
              f"{raster['nodata']} transparent={raster['nodata_transparent']}")
        for c in raster["classes"]:
            print(f"  {c['value']:>3}  {c['color']}  {c['label']}")
        if "vector" in report:
            print(f"vector {args.vector}: {report['vector']['features']} features, fields "
                  f"{', '.join(report['vector']['fields'])}")
        if args.png:
            print(f"rendered {args.png}")
    return 0 if report["ok"] else 1


def check(args: argparse.Namespace) -> dict:
    from qgis.core import Qgis, QgsRasterLayer, QgsVectorLayer

    raster = QgsRasterLayer(args.raster, "prediction", "gdal")  # applies NAME.qml when present
    if not raster.isValid():
        return {"qgis": Qgis.version(), "ok": False, "error": f"QGIS cannot open {args.raster}"}
    renderer = raster.renderer()
    classes = []
    if renderer.type() == "paletted":
        classes = [{"value": int(c.value), "label": c.label, "color": c.color.name()}
                   for c in renderer.classes()]
    provider = raster.dataProvider()
    nodata = provider.sourceNoDataValue(1) if provider.sourceHasNoDataValue(1) else None
    transparency = renderer.rasterTransparency()
    transparent = nodata is not None and (
        provider.useSourceNoDataValue(1)
        or (transparency is not None and transparency.alphaValue(nodata) == 0))
    named = [c for c in classes if c["label"] and c["label"] != str(c["value"])]
    report: dict = {
        "qgis": Qgis.version(),
        "raster": {"crs": raster.crs().authid() or raster.crs().description(),
                   "renderer": renderer.type(), "classes": classes,
                   "named_classes": len(named), "nodata": nodata,
                   "nodata_transparent": bool(transparent),
                   "width": raster.width(), "height": raster.height()},
    }
    layers = [raster]
    if args.vector:
        vector = QgsVectorLayer(args.vector, "polygons", "ogr")
        report["vector"] = {"valid": vector.isValid(), "features": vector.featureCount(),
                            "fields": [f.name() for f in vector.fields()],
                            "crs": vector.crs().authid()}
        if vector.isValid():
            layers.insert(0, vector)
    if args.png:
        report["png"] = render(layers, raster, args.png, args.size)
    report["ok"] = (renderer.type() == "paletted" and len(named) == len(classes) > 0
                    and report["raster"]["nodata_transparent"])
    return report


def render(layers: list, raster, path: str, width: int) -> str:
    from qgis.core import QgsMapRendererParallelJob, QgsMapSettings
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    extent = raster.extent()
    height = max(1, round(width * extent.height() / max(extent.width(), 1e-9)))
    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(raster.crs())
    settings.setExtent(extent)
    settings.setOutputSize(QSize(width, height))
    settings.setBackgroundColor(QColor(255, 255, 255, 0))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    if not job.renderedImage().save(path, "PNG"):
        raise SystemExit(f"Error: cannot write {path}")
    return path


if __name__ == "__main__":
    sys.exit(main())
