"""``rsseg info MODEL [--json]``: what a model bundle holds (its metadata, not its weights)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from rsseg.cli import app

if TYPE_CHECKING:
    from rsseg.models.bundle import BundleMeta


@app.command()
def info(
    model: Path = typer.Argument(..., help="Model bundle (.rsseg).", show_default=False),
    json: bool = typer.Option(False, "--json", help="Print the metadata as JSON."),
) -> None:
    """Show a model bundle's architecture, bands, normalisation, classes and defaults."""
    from rsseg.models.bundle import read_meta  # torch/smp load only when the command runs

    meta = read_meta(model)
    if json:
        typer.echo(meta.model_dump_json(indent=2))
        return
    console = Console()
    console.print(_summary(model, meta))
    console.print(_bands(meta))
    console.print(_classes(meta))


def _summary(path: Path, meta: BundleMeta) -> Table:
    table = Table(title=str(path), show_header=False)
    spec = meta.model
    rows = {
        "architecture": f"{spec.arch} / {spec.encoder}" + (f" {spec.kwargs}" if spec.kwargs
                                                             else ""),
        "channels": f"{spec.in_channels} in, {spec.classes} classes out",
        "tile / overlap": f"{meta.tile} / {meta.overlap} px",
        "resolution": f"{meta.resolution:g} m/px" if meta.resolution else "unknown",
        "nodata / ignore id": f"{meta.nodata_id} / {meta.ignore_id}",
        "versions": f"format {meta.format_version}, rsseg {meta.rsseg_version}",
        **{f"domain.{k}": str(v) for k, v in meta.domain.items()},
    }
    for key, value in rows.items():
        table.add_row(key, value)
    return table


def _bands(meta: BundleMeta) -> Table:
    table = Table("#", "band", "mean", "std", title="bands (normalised as (x - mean) / std)")
    for i, band in enumerate(meta.bands, start=1):
        table.add_row(str(i), band.name, f"{band.mean:.6g}", f"{band.std:.6g}")
    return table


def _classes(meta: BundleMeta) -> Table:
    table = Table("id", "name", "colour", title="classes")
    for c in meta.classes:
        hex_colour = "#{:02x}{:02x}{:02x}".format(*c.color)
        table.add_row(str(c.id), c.name, Text(f"██ {hex_colour}", style=hex_colour))
    return table
