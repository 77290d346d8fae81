"""``rsseg condense --tiles T --out SYN``: a small synthetic labelled tile set (DCC).

The set is a tile folder (images/, labels/, classes.yaml, bands.json) for
``rsseg finetune --tiles SYN``. Settings: ``rsseg methods dcc``; ``--set KEY=VALUE``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from rsseg.cli import app


@app.command()
def condense(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the synthetic tile set."),
    scene: list[Path] = typer.Option([], help="Scene raster(s) the labels belong to."),
    tiles: Path | None = typer.Option(None, help="Tile folder with images/ and labels/."),
    labels: Path | None = typer.Option(None, help="Label raster (scene grid) or vector file."),
    label_column: str | None = typer.Option(None, help="Class column of vector labels."),
    classes: Path | None = typer.Option(None, help="Classes file (id, name, color)."),
    nodata: float | None = typer.Option(None, help="Scene nodata value, overriding the file's."),
    per_class: int | None = typer.Option(None, help="Synthetic tiles per class "
                                         "(config key per_class)."),
    size: int | None = typer.Option(None, help="Synthetic tile side in pixels (config key size)."),
    iterations: int | None = typer.Option(None, help="Outer iterations (fresh networks) "
                                          "(config key iterations)."),
    device: str | None = typer.Option(None, help="auto|cpu|cuda (config key device)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config file."),
    set_: list[str] = typer.Option([], "--set", help="Override a setting: key=value."),
    random_subset: bool = typer.Option(False, help="Write the baseline instead: as many real "
                                       "crops chosen at random (DCC's comparison)."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out."),
) -> None:
    """Condense labelled data into a few synthetic tiles by contrastive gradient matching."""
    from rsseg.config import load_config
    from rsseg.pipelines.condense import condense as run_condense
    from rsseg.regularizers.dcc import DCCConfig

    cfg = load_config(DCCConfig, config, set_, flags={
        "per_class": per_class, "size": size, "iterations": iterations, "device": device})

    def report(done: int, total: int, loss: float) -> None:
        if done == total or done % max(total // 10, 1) == 0:
            typer.echo(f"iteration {done}/{total}: matching loss {loss:.4f}", err=True)

    folder = run_condense(out, cfg, scenes=scene, tiles=tiles, labels=labels,
                          label_column=label_column, classes_file=classes, nodata=nodata,
                          overwrite=overwrite, random_subset=random_subset, progress=report)
    kind = "Random real subset" if random_subset else "Synthetic tile set"
    typer.echo(f"{kind}: {folder} ({cfg.per_class} tiles per class of "
               f"{cfg.size} px); fine-tune with: rsseg finetune --tiles {folder}")
