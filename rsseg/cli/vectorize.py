"""``rsseg vectorize PRED.tif --out OUT.gpkg``: polygons per class from a class raster."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from rsseg.cli import app


@app.command()
def vectorize(
    raster: Path = typer.Argument(..., help="Class raster (e.g. written by rsseg predict).",
                                  show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Polygons to write: .gpkg (GeoPackage), "
                                                      ".fgb (FlatGeobuf) or .parquet "
                                                      "(GeoParquet)."),
    min_area: float = typer.Option(0.0, help="Drop polygons smaller than this, in m² "
                                             "(pixels when the raster has no CRS)."),
    simplify: float = typer.Option(0.0, help="Simplification tolerance in CRS units "
                                             "(0: exact pixel edges)."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Polygons per class (class_id, class_name, pixels, area_m2), equal to polygonizing the
    whole raster at once; read window by window, nodata left out."""
    from rsseg.pipelines.vectorize import VectorOptions, vectorize_raster

    summary = vectorize_raster(raster, out, VectorOptions(min_area, simplify, overwrite))
    if as_json:
        typer.echo(json.dumps({"out": str(summary.out), "polygons": summary.polygons,
                               "dropped": summary.dropped, "seconds": summary.seconds}))
    else:
        typer.echo(f"Wrote {summary.out}: {summary.polygons} polygons ({summary.dropped} under "
                   f"--min-area) in {summary.seconds:.1f} s")
