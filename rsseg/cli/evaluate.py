"""``rsseg evaluate PRED REFERENCE``: OA, Kappa, mIoU, per-class scores and the confusion matrix."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from rsseg.classes import read_classes
from rsseg.cli import app
from rsseg.pipelines.evaluate import Evaluation, evaluate


@app.command("evaluate")
def evaluate_command(
    pred: Path = typer.Argument(..., help="Predicted class raster.", show_default=False),
    reference: Path = typer.Argument(..., help="Reference class raster on the same grid.",
                                     show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON document instead."),
    ignore: list[int] = typer.Option([], "--ignore", help="Class value to leave out (repeatable)."),
    exclude: Path | None = typer.Option(
        None, help="Leave out pixels this raster labels (not nodata, not 0 without nodata), "
                   "e.g. the training pixels."),
    classes: Path | None = typer.Option(
        None, help="Classes file (JSON/YAML/CSV: id, name, color) naming the ids "
                   "(default: names carried by PRED, else REFERENCE)."),
) -> None:
    """Score a class raster against a reference; nodata of either raster is left out."""
    table = read_classes(classes) if classes is not None else None
    result = evaluate(pred, reference, ignore=ignore, exclude=exclude, classes=table)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        console = Console()
        _print_report(result, console if console.is_terminal else Console(width=160))


def _print_report(result: Evaluation, console: Console) -> None:
    s = result.scores
    console.print(f"[bold]{result.pred.name}[/] vs [bold]{result.reference.name}[/]: "
                  f"{s.pixels:,} pixels" + (f" ({result.excluded:,} excluded)"
                                            if result.excluded else ""))
    console.print(f"OA {s.oa:.4f}   Kappa {s.kappa:.4f}   mIoU {s.miou:.4f} "
                  "(dataset-level, over classes present in reference or prediction)")
    per_class = Table(title="Per class", title_justify="left")
    for name in ("id", "class", "precision", "recall", "F1", "IoU", "ref px", "pred px"):
        per_class.add_column(name, justify="left" if name == "class" else "right")
    for k, (cid, name) in enumerate(zip(s.class_ids, result.names, strict=True)):
        per_class.add_row(str(cid), name, *(_fmt(v[k]) for v in (s.precision, s.recall, s.f1,
                                                                  s.iou)),
                          f"{s.confusion[k].sum():,}", f"{s.confusion[:, k].sum():,}")
    console.print(per_class)
    matrix = Table(title="Confusion matrix (rows: reference, columns: prediction)",
                   title_justify="left")
    matrix.add_column("reference \\ pred")
    for cid in s.class_ids:
        matrix.add_column(str(cid), justify="right")
    for k, (cid, name) in enumerate(zip(s.class_ids, result.names, strict=True)):
        matrix.add_row(f"{cid} {name}", *(f"{v:,}" for v in s.confusion[k]))
    console.print(matrix)


def _fmt(value: float) -> str:
    return "—" if value != value else f"{value:.4f}"  # NaN: undefined
