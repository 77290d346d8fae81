"""``rsseg tile SCENE... --out DIR``: unlabeled tiles + manifest + band statistics."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from rsseg.cli import app
from rsseg.errors import InputError
from rsseg.io.cache import cache_dir
from rsseg.io.inputs import expand_scenes
from rsseg.io.stac import check_assets_used, parse_assets, stac_reader
from rsseg.pipelines.tile import TileOptions, tile_scenes


@app.command()
def tile(
    scenes: list[Path] = typer.Argument(..., help="Scene rasters (GeoTIFF; PNG/JPEG warn); "
                                        "also folders, 'glob*.tif' patterns, .txt lists, "
                                        "STAC Item/ItemCollection/Catalog JSON.",
                                        show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Tile-set folder to create."),
    size: int = typer.Option(256, help="Tile side in pixels."),
    stride: int | None = typer.Option(None, help="Step between tiles in pixels [default: size]."),
    max_nodata: float = typer.Option(0.5, help="Skip tiles with a larger nodata fraction."),
    nodata: float | None = typer.Option(None, help="Nodata value, overriding the files'."),
    bands: str | None = typer.Option(None, help="1-based bands, e.g. 1,2,3 [default: all]."),
    random: int | None = typer.Option(None, help="Random mode: N windows per scene."),
    seed: int = typer.Option(0, help="Seed of random mode."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out."),
    assets: str | None = typer.Option(None, help="STAC items: the asset keys stacked as bands, "
                                      "e.g. B02,B03,B04,B08 [default: every single-band asset "
                                      "with a common name]."),
    cluster: str | None = typer.Option(None, help="Tile the scenes on Dask: local[:N] (N worker "
                                       "processes) or a scheduler address tcp://host:8786 "
                                       "[default: in this process]."),
) -> None:
    """Cut scenes into GeoTIFF tiles (grid or random) with manifest.csv and stats.json."""
    options = TileOptions(size=size, stride=stride, max_nodata=max_nodata, nodata=nodata,
                          bands=_parse_bands(bands), random=random, seed=seed,
                          overwrite=overwrite)
    console = Console(stderr=True)
    columns = (TextColumn("tiling"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("tiling", total=None)
        keys = parse_assets(assets)
        found = expand_scenes(scenes, stac_reader(cache_dir() / "stac", keys))
        check_assets_used(keys, found)
        paths = [scene.path for scene in found]
        summary = tile_scenes(paths, out, options, cluster=cluster,
                              progress=lambda done, total: bar.update(task, completed=done,
                                                                      total=total))
    typer.echo(f"Wrote {summary.written} tiles to {summary.out} from {summary.scenes} scene(s); "
               f"skipped {summary.skipped} over --max-nodata {max_nodata:g}")


def _parse_bands(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError:
        raise InputError(f"--bands {text!r} is not a comma-separated list of band numbers",
                         "write e.g. --bands 1,2,3") from None


class _RateColumn(ProgressColumn):
    """Tiles (windows) per second."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:.1f} tiles/s")
