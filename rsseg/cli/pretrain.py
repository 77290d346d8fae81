"""``rsseg pretrain TILES --out RUN``: self-supervised pretraining (GLCNet by default).

``--method`` repeated combines a pretext with wrappers (``rsseg.pretexts.compose.compose_pretext``):
``--method glcnet --method claws`` (hard-attention masks), ``--method glcnet --method
adversarial`` (PGD view). A ``--config`` file configures the member it names; ``--set
pretext.params...`` then applies to the combined (nested) config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from rsseg.cli import app
from rsseg.config import PretrainConfig, load_config, parse_duration


@app.command()
def pretrain(
    tiles: Path = typer.Argument(..., help="Tile folder written by `rsseg tile`.",
                                 show_default=False),
    out: Path = typer.Option(Path("runs/pretrain"), "--out", "-o", help="Run folder."),
    method: list[str] = typer.Option(
        [], help="Pretext method [default: glcnet]; repeat to combine a pretext with wrappers, "
                 "e.g. --method glcnet --method claws (or adversarial)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config file."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: key=value."),
    epochs: int | None = typer.Option(None, help="Epochs [config: trainer.epochs]; with "
                                      "--max-time an upper bound."),
    max_time: str | None = typer.Option(
        None, help="Wall-clock budget: 90s, 45m, 2h, 1:30:00 or seconds; training stops there "
                   "with a checkpoint and the LR schedule ends there [config: trainer.max_time]."),
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
    from rsseg.pretexts.compose import compose_pretext, pretext_label

    flags: dict[str, Any] = {"pretext.name": method[0] if method else None}
    if len(method) > 1:
        in_file = load_config(PretrainConfig, config).pretext if config else None
        name, params = compose_pretext(method, in_file.name if in_file else None,
                                       in_file.params if in_file else None)
        flags = {"pretext.name": name, "pretext.params": params}
    cfg = load_config(PretrainConfig, config, set_, flags={
        **flags, "trainer.epochs": epochs, "trainer.batch_size": batch_size,
        "trainer.accelerator": device, "trainer.devices": devices,
        "trainer.num_nodes": num_nodes, "trainer.precision": precision,
        "trainer.max_time": parse_duration(max_time) if max_time is not None else None})
    run = run_pretrain(tiles, out, cfg, resume=resume, overwrite=overwrite)
    label = pretext_label(cfg.pretext.name, cfg.pretext.params)
    epochs = f"{cfg.trainer.epochs} epochs"
    if cfg.trainer.max_time:  # the budget may have ended the run before its last epoch
        from rsseg.models.backbone import read_backbone
        from rsseg.training.engine import format_duration

        epochs = (f"{read_backbone(run)[1].epochs} epochs (budget "
                  f"{format_duration(cfg.trainer.max_time)})")
    typer.echo(f"Pretrained {label} for {epochs}: "
               f"{run}/backbone.safetensors (log {run}/metrics.csv, plot {run}/loss.png)")
