"""``rsseg demo``: GLCNet against random init on bundled real imagery, end to end."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from rsseg.cli import app


@app.command()
def demo(
    out: Path = typer.Option(Path("rsseg_demo"), "--out", "-o", help="Output folder."),
    case: list[str] = typer.Option(
        [], "--case", help="Run only this case: aerial (sparse points on aerial images) or nc "
                           "(sparse pixels on a Landsat scene); repeatable. Default: both."),
    seed: int = typer.Option(0, help="Seed of pretraining, fine-tuning and sampling."),
    max_time: str | None = typer.Option(
        None, "--max-time", help="GLCNet pretraining budget per case (90s, 45m, 2h, 1:30:00) "
                                 "instead of the default ~2-3 minutes."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out."),
) -> None:
    """Tile, pretrain GLCNet, fine-tune from it and from random init with the same recipe,
    predict and score on held-out pixels: both cases within 10 minutes on 2 CPU cores."""
    from rsseg.config import parse_duration
    from rsseg.pipelines.demo import check_cases, run_demo

    cases = check_cases(case)
    budget = parse_duration(max_time) if max_time is not None else None
    console = Console(stderr=True)
    results = run_demo(out, seed=seed, overwrite=overwrite, cases=cases, max_time=budget,
                       say=lambda text: console.print(f"[bold cyan]{text}"))
    titles = {"aerial": "aerial: 4 held-out images, dense labels",
              "nc": "nc: the dense 1996 map (training pixels and nodata excluded)"}
    for name in cases:
        r = results[name]
        table = Table(title=titles[name])
        for column in ("", "GLCNet", "random init", "difference"):
            table.add_column(column, justify="left" if not column else "right")
        rows = [("OA", "oa"), ("Kappa", "kappa"), ("mIoU", "miou")]
        for label, key in rows:
            g, n = r["glcnet"][key], r["random"][key]
            table.add_row(label, f"{g:.3f}", f"{n:.3f}", f"{g - n:+.3f}")
        for cls, g in r["glcnet"]["iou"].items():
            n = r["random"]["iou"][cls]
            diff = "—" if g is None or n is None else f"{g - n:+.3f}"
            table.add_row(f"IoU {cls}", *("—" if v is None else f"{v:.3f}" for v in (g, n)),
                          diff)
        Console().print(table)
        typer.echo(r["verdict"])
    typer.echo(f"Done in {results['seconds']:.0f} s; metrics in {out / 'metrics.json'}, maps "
               f"and quicklooks in {out}/<case>/ (aerial: comparison.png)")
    if "aerial" in cases:
        typer.echo(results["aerial"]["suggest"]["next"])
