"""``rsseg demo``: tile → GLCNet pretrain → fine-tune → predict → evaluate on a real scene."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from rsseg.cli import app


@app.command()
def demo(
    out: Path = typer.Option(Path("rsseg_demo"), "--out", "-o", help="Output folder."),
    seed: int = typer.Option(0, help="Seed of pretraining and fine-tuning."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out."),
) -> None:
    """Run the whole chain on the bundled North Carolina Landsat-7 scene (minutes on a CPU)."""
    from rsseg.pipelines.demo import run_demo

    console = Console(stderr=True)
    results = run_demo(out, seed=seed, overwrite=overwrite,
                       say=lambda text: console.print(f"[bold cyan]{text}"))
    table = Table(title="Against the dense 1996 map (training pixels and nodata excluded)")
    table.add_column("initialisation")
    for metric in ("OA", "Kappa", "mIoU"):
        table.add_column(metric, justify="right")
    for name in ("glcnet", "random"):
        r = results[name]
        table.add_row(name, f"{r['oa']:.3f}", f"{r['kappa']:.3f}", f"{r['miou']:.3f}")
    Console().print(table)
    typer.echo(f"Done in {results['seconds']:.0f} s; metrics in {out / 'metrics.json'}, "
               f"maps in {out}/prediction_*.tif")
