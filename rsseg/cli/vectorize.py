"""``rsseg vectorize PRED.tif --out OUT.gpkg``: polygons per class from a class raster;
``rsseg vectorize RASTERS... --out-dir DIR``: one polygon file per raster (cli/many.py)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from rsseg.cli import app


@app.command()
def vectorize(
    rasters: list[Path] = typer.Argument(..., help="Class raster(s) (e.g. written by rsseg "
                                         "predict); also folders, 'glob*.tif' patterns and "
                                         ".txt lists.", show_default=False),
    out: Path | None = typer.Option(None, "--out", "-o", help="Polygons of one raster: .gpkg "
                                    "(GeoPackage), .fgb (FlatGeobuf) or .parquet "
                                    "(GeoParquet)."),
    out_dir: Path | None = typer.Option(None, help="Many rasters: one NAME.FORMAT per raster "
                                        "and summary.csv/.json here; a rerun skips the "
                                        "finished ones."),
    fmt: str = typer.Option("gpkg", "--format", help="--out-dir: gpkg, fgb or parquet."),
    cluster: str | None = typer.Option(None, help="Many rasters on Dask: local[:N] (N worker "
                                       "processes) or a scheduler address tcp://host:8786 "
                                       "[default: in this process]."),
    min_area: float = typer.Option(0.0, help="Drop polygons smaller than this, in m² "
                                             "(pixels when the raster has no CRS)."),
    simplify: float = typer.Option(0.0, help="Simplification tolerance in CRS units "
                                             "(0: exact pixel edges)."),
    overwrite: bool = typer.Option(False, help="Replace existing outputs."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Polygons per class (class_id, class_name, pixels, area_m2), equal to polygonizing the
    whole raster at once; read window by window, nodata left out."""
    from rsseg.cli.many import vectorize_many
    from rsseg.errors import UsageError
    from rsseg.io.inputs import is_collection
    from rsseg.pipelines.vectorize import VectorOptions, vectorize_raster

    options = VectorOptions(min_area, simplify, overwrite)
    if len(rasters) > 1 or is_collection(rasters[0]) or out_dir or cluster:
        vectorize_many(rasters, out, out_dir, options, fmt, cluster, as_json)
        return
    if out is None:
        raise UsageError("--out is missing", "give --out OUT.gpkg (one raster) or --out-dir "
                                             "DIR (one polygon file per raster)")
    summary = vectorize_raster(rasters[0], out, options)
    if as_json:
        typer.echo(json.dumps({"out": str(summary.out), "polygons": summary.polygons,
                               "dropped": summary.dropped, "seconds": summary.seconds}))
    else:
        typer.echo(f"Wrote {summary.out}: {summary.polygons} polygons ({summary.dropped} under "
                   f"--min-area) in {summary.seconds:.1f} s")
