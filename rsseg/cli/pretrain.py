"""``rsseg pretrain TILES --out RUN``: self-supervised pretraining (GLCNet by default)."""

from __future__ import annotations

from pathlib import Path

import typer

from rsseg.cli import app
from rsseg.config import PretrainConfig, load_config


@app.command()
def pretrain(
    tiles: Path = typer.Argument(..., help="Tile folder written by `rsseg tile`.",
                                 show_default=False),
    out: Path = typer.Option(Path("runs/pretrain"), "--out", "-o", help="Run folder."),
    method: str = typer.Option(None, help="Pretext method [default: glcnet]."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config file."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: key=value."),
    epochs: int | None = typer.Option(None, help="Epochs [config: trainer.epochs]."),
    batch_size: int | None = typer.Option(None, help="Batch size [config: trainer.batch_size]."),
    device: str | None = typer.Option(None, help="auto|cpu|cuda [config: trainer.accelerator]."),
    devices: int | None = typer.Option(None, help="Processes/GPUs per node (DDP when > 1)."),
    num_nodes: int | None = typer.Option(None, help="Nodes for multi-node DDP."),
    precision: str | None = typer.Option(None, help="32-true|bf16-mixed|16-mixed."),
    resume: bool = typer.Option(False, help="Continue the run in --out at its last epoch."),
    overwrite: bool = typer.Option(False, help="Replace an existing run folder."),
) -> None:
    """Pretrain a segmentation model on unlabelled tiles; writes RUN/backbone.safetensors."""
    from rsseg.pipelines.pretrain import pretrain as run_pretrain

    cfg = load_config(PretrainConfig, config, set_, flags={
        "pretext.name": method, "trainer.epochs": epochs, "trainer.batch_size": batch_size,
        "trainer.accelerator": device, "trainer.devices": devices,
        "trainer.num_nodes": num_nodes, "trainer.precision": precision})
    run = run_pretrain(tiles, out, cfg, resume=resume, overwrite=overwrite)
    typer.echo(f"Pretrained {cfg.pretext.name} for {cfg.trainer.epochs} epochs: "
               f"{run}/backbone.safetensors (log {run}/metrics.csv, plot {run}/loss.png)")
