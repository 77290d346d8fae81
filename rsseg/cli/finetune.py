"""``rsseg finetune --out RUN``: train on sparse labels, write the model bundle."""

from __future__ import annotations

from pathlib import Path

import typer

from rsseg.cli import app
from rsseg.config import FinetuneConfig, load_config


@app.command()
def finetune(
    out: Path = typer.Option(Path("runs/finetune"), "--out", "-o", help="Run folder."),
    scene: list[Path] = typer.Option([], help="Scene raster(s) the labels belong to."),
    tiles: Path | None = typer.Option(None, help="Tile folder with images/ and labels/."),
    labels: Path | None = typer.Option(None, help="Label raster (scene grid) or vector file."),
    label_column: str | None = typer.Option(None, help="Class column of vector labels."),
    classes: Path | None = typer.Option(None, help="Classes file (id, name, color)."),
    nodata: float | None = typer.Option(None, help="Scene nodata value, overriding the file's."),
    init: Path | None = typer.Option(None, help="Pretraining run to start the backbone from."),
    label_fraction: float | None = typer.Option(None, help="Fraction of labelled tiles to use."),
    seed: int | None = typer.Option(None, help="Seed of the label subset, split and training."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config file."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: key=value."),
    epochs: int | None = typer.Option(None, help="Epochs [config: trainer.epochs]."),
    batch_size: int | None = typer.Option(None, help="Batch size [config: trainer.batch_size]."),
    device: str | None = typer.Option(None, help="auto|cpu|cuda [config: trainer.accelerator]."),
    precision: str | None = typer.Option(None, help="32-true|bf16-mixed|16-mixed."),
    resume: bool = typer.Option(False, help="Continue the run in --out at its last epoch."),
    overwrite: bool = typer.Option(False, help="Replace an existing run folder."),
) -> None:
    """Fine-tune on sparse labels; writes RUN/model.rsseg for `rsseg predict`."""
    from rsseg.pipelines.finetune import finetune as run_finetune

    cfg = load_config(FinetuneConfig, config, set_, flags={
        "trainer.epochs": epochs, "trainer.batch_size": batch_size, "trainer.seed": seed,
        "trainer.accelerator": device, "trainer.precision": precision,
        "data.label_fraction": label_fraction})
    bundle = run_finetune(out, cfg, scenes=scene, tiles=tiles, labels=labels,
                          label_column=label_column, classes_file=classes, nodata=nodata,
                          init=init, resume=resume, overwrite=overwrite)
    typer.echo(f"Model bundle: {bundle} (log {out}/metrics.csv, plot {out}/loss.png)")
