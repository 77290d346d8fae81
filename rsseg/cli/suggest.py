"""``rsseg suggest SCENE... --model M --out to_label.gpkg``: the points worth labelling next,
as a GeoPackage (+ ``.qml``) to label in QGIS, then ``rsseg finetune --labels``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from rsseg.cli import app
from rsseg.cli.predict import Device
from rsseg.sampling import DEFAULT_EXPLORE


class Strategy(str, Enum):
    hybrid = "hybrid"
    uncertainty = "uncertainty"
    diversity = "diversity"
    random = "random"


class Measure(str, Enum):
    margin = "margin"
    entropy = "entropy"


@app.command()
def suggest(
    scenes: list[Path] = typer.Argument(..., help="Scene rasters with the model's bands; also "
                                        "folders, 'glob*.tif' patterns, .txt lists.",
                                        show_default=False),
    model: Path = typer.Option(..., "--model", "-m", help="Model bundle (.rsseg)."),
    out: Path = typer.Option(Path("to_label.gpkg"), "--out", "-o", help="GeoPackage of points "
                             "to label, with NAME.qml beside it for QGIS."),
    n: int = typer.Option(50, "--n", "-n", help="Points to suggest."),
    strategy: Strategy = typer.Option(Strategy.hybrid, help="hybrid: uncertain and diverse; "
                                      "uncertainty: most uncertain first; diversity: k-center "
                                      "on the model's features; random: the baseline."),
    explore: float = typer.Option(DEFAULT_EXPLORE, help="hybrid: share of the points picked "
                                  "for being unlike anything labelled among random pixels, "
                                  "however sure the model is there (classes it has not learnt "
                                  "yet); 0: every point uncertain and diverse."),
    uncertainty: Measure = typer.Option(Measure.margin, help="Uncertainty of the blended "
                                        "probabilities: margin 1-(p1-p2) or entropy."),
    region: int = typer.Option(0, help="uncertainty/hybrid: rank each pixel by the mean "
                               "uncertainty of the (2·REGION+1)² pixels around it, so a lone "
                               "uncertain pixel on a class edge ranks below one inside an "
                               "uncertain area; 0: the pixel's own."),
    min_distance: float | None = typer.Option(None, help="Least distance between two points "
                                              "and from a labelled pixel, in CRS units (pixels "
                                              "without georeferencing) [default: 5 pixels]."),
    labels: list[Path] = typer.Option([], help="Existing labels (vector file or label raster, "
                                      "repeatable): never suggested again, nor near them."),
    label_column: str = typer.Option("label", help="Class column of --labels vector files, and "
                                     "the name of the empty column to fill in."),
    seed: int = typer.Option(0, help="Seed of the random choices (same seed, same points)."),
    tile: int | None = typer.Option(None, help="Window side in pixels (default: the bundle's)."),
    overlap: int | None = typer.Option(None, help="Window overlap in pixels (default: the "
                                                  "bundle's)."),
    batch_size: int | None = typer.Option(None, help="Windows per model call [default: 2 on "
                                          "CPU, what fits the card on a GPU]."),
    nodata: float | None = typer.Option(None, help="Nodata value, overriding the scene's."),
    device: Device = typer.Option(Device.auto, help="Where the model runs."),
    cluster: str | None = typer.Option(None, help="Many scenes on Dask: local[:N] (N worker "
                                       "processes) or a scheduler address tcp://host:8786; each "
                                       "scene's pass runs on a worker, the ranking here "
                                       "[default: in this process]."),
    overwrite: bool = typer.Option(False, help="Replace existing outputs."),
) -> None:
    """Suggest the points worth labelling next: uncertain, diverse, spread over the classes.

    Open the GeoPackage in QGIS, pick a class in the label column's drop-down for each point
    (rank 1 first), save, then fine-tune with --labels OLD --labels NEW.gpkg.
    """
    from rsseg.distributed import warm_local_workers

    warm_local_workers(cluster, ("rsseg.pipelines.suggest",))  # before this process loads torch
    from rsseg.pipelines.suggest import SuggestOptions
    from rsseg.pipelines.suggest import suggest as run_suggest  # loads torch

    options = SuggestOptions(n=n, strategy=strategy.value, explore=explore,
                             measure=uncertainty.value, region=region,
                             min_distance=min_distance, labels=tuple(labels),
                             label_column=label_column, seed=seed, tile=tile, overlap=overlap,
                             batch_size=batch_size, nodata=nodata, device=device.value,
                             overwrite=overwrite, cluster=cluster)
    summary = run_suggest(scenes, model, out, options, notify=typer.echo)
    spread = ", ".join(f"{count} {name}" for name, count in sorted(summary.per_class.items()))
    typer.echo(f"Wrote {summary.out} and {summary.style.name}: {summary.points} points "
               f"({spread}) of {summary.eligible} candidate pixels in {summary.scenes} "
               f"scene(s), {summary.seconds:.1f} s")
    old = "".join(f" --labels {p}" for p in labels)
    typer.echo(f"Next: open {summary.out} in QGIS, choose a {label_column!r} for each point "
               f"(rank 1 first; leave it empty to skip), save, then rsseg finetune ...{old} "
               f"--labels {summary.out} --label-column {label_column}")
