"""``rsseg finetune --out RUN``: train on sparse labels, write the model bundle.

``--method NAME`` (repeatable) adds a fine-tuning regularizer (``rsseg methods``), e.g.
``supcon``; ``--tiles A --tiles B --method multidomain`` trains on several datasets at once.
"""

from __future__ import annotations

from pathlib import Path

import typer

from rsseg.cli import app
from rsseg.config import FinetuneConfig, load_config, parse_duration
from rsseg.errors import UsageError


@app.command()
def finetune(
    out: Path = typer.Option(Path("runs/finetune"), "--out", "-o", help="Run folder."),
    scene: list[Path] = typer.Option([], help="Scene raster(s) the labels belong to."),
    tiles: list[Path] = typer.Option([], help="Tile folder with images/ and labels/ "
                                      "(repeat for several domains: multidomain)."),
    labels: list[Path] = typer.Option([], help="Label raster (scene grid) or vector file; "
                                      "repeat to join several (e.g. the points of rsseg "
                                      "suggest: rows without a label are skipped, counted)."),
    label_column: str | None = typer.Option(None, help="Class column of vector labels."),
    classes: Path | None = typer.Option(None, help="Classes file (id, name, color)."),
    nodata: float | None = typer.Option(None, help="Scene nodata value, overriding the file's."),
    init: Path | None = typer.Option(None, help="Pretraining run to start the backbone from."),
    init_decoder: bool | None = typer.Option(
        None, "--init-decoder/--no-init-decoder",
        help="With --init, also start from the decoder the pretext trained (GLCNet's local "
             "branch) [config: init_decoder]."),
    label_fraction: float | None = typer.Option(None, help="Fraction of labelled tiles to use."),
    seed: int | None = typer.Option(None, help="Seed of the label subset, split and training."),
    method: list[str] = typer.Option([], help="Fine-tuning regularizer to add (repeatable; "
                                     "see `rsseg methods`) [config: regularizers]."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config file."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: key=value."),
    epochs: int | None = typer.Option(None, help="Epochs [config: trainer.epochs]; with "
                                      "--max-time an upper bound."),
    max_time: str | None = typer.Option(
        None, help="Wall-clock budget: 90s, 45m, 2h, 1:30:00 or seconds; training stops there "
                   "with a checkpoint and the LR schedule ends there [config: trainer.max_time]."),
    batch_size: int | None = typer.Option(None, help="Batch size [config: trainer.batch_size]."),
    device: str | None = typer.Option(None, help="auto|cpu|cuda [config: trainer.accelerator]."),
    precision: str | None = typer.Option(None, help="32-true|bf16-mixed|16-mixed."),
    resume: bool = typer.Option(False, help="Continue the run in --out at its last epoch."),
    overwrite: bool = typer.Option(False, help="Replace an existing run folder."),
) -> None:
    """Fine-tune on sparse labels; writes RUN/model.rsseg for `rsseg predict`."""
    from rsseg.pipelines.finetune import finetune as run_finetune

    if init_decoder and init is None:
        raise UsageError("--init-decoder needs --init RUN", "give the pretraining run with --init")
    cfg = load_config(FinetuneConfig, config, set_, flags={
        "init_decoder": init_decoder,
        "trainer.epochs": epochs, "trainer.batch_size": batch_size, "trainer.seed": seed,
        "trainer.accelerator": device, "trainer.precision": precision,
        "data.label_fraction": label_fraction,
        "trainer.max_time": parse_duration(max_time) if max_time is not None else None})
    bundle = run_finetune(out, cfg, scenes=scene, tiles=tiles or None, labels=labels or None,
                          label_column=label_column, classes_file=classes, nodata=nodata,
                          init=init, methods=method, resume=resume, overwrite=overwrite)
    others = sorted(p.name for p in bundle.parent.glob("model.*.rsseg"))
    extra = f"; other domains: {', '.join(others)}" if others else ""
    typer.echo(f"Model bundle: {bundle}{extra} (log {out}/metrics.csv, plot {out}/loss.png)")
