"""``rsseg predict SCENE --model BUNDLE --out OUT.tif``: a georeferenced class raster (COG)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from rsseg.cli import app


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@app.command()
def predict(
    scene: Path = typer.Argument(..., help="Scene raster with the model's bands.",
                                 show_default=False),
    model: Path = typer.Option(..., "--model", "-m", help="Model bundle (.rsseg)."),
    out: Path = typer.Option(..., "--out", "-o", help="Class raster to write (COG .tif)."),
    tile: int | None = typer.Option(None, help="Window side in pixels (default: the bundle's)."),
    overlap: int | None = typer.Option(None, help="Window overlap in pixels (default: the "
                                                  "bundle's)."),
    batch_size: int = typer.Option(8, help="Windows per model call."),
    nodata: float | None = typer.Option(None, help="Nodata value, overriding the scene's."),
    device: Device = typer.Option(Device.auto, help="Where the model runs."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out."),
) -> None:
    """Predict a scene with a model bundle: stitched, georeferenced uint8 classes (nodata 255)."""
    from rsseg.pipelines.predict import PredictOptions, predict_scene  # loads torch

    options = PredictOptions(tile=tile, overlap=overlap, batch_size=batch_size, nodata=nodata,
                             device=device.value, overwrite=overwrite)
    console = Console(stderr=True)
    columns = (TextColumn("predicting"), BarColumn(), _MpxColumn(), TextColumn("ETA"),
               TimeRemainingColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("predicting", total=None)
        summary = predict_scene(scene, model, out, options,
                                progress=lambda done, total: bar.update(task, completed=done,
                                                                        total=total))
    typer.echo(f"Wrote {summary.out} ({summary.width}x{summary.height} px, {summary.windows} "
               f"windows) in {summary.seconds:.1f} s, {summary.mpx_per_s:.2f} Mpx/s")


class _MpxColumn(ProgressColumn):
    """Scene megapixels per second."""

    def render(self, task: Task) -> Text:
        return Text(f"{(task.speed or 0) / 1e6:.2f} Mpx/s")

