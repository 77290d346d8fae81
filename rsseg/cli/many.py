"""``rsseg predict`` over many scenes (:mod:`rsseg.pipelines.batch`): progress and report.

One line per finished scene on stdout (a log of a batch under a scheduler stays readable), a
progress bar of scenes and Mpx/s on a terminal, a closing summary; failed scenes make the
command end with one error line naming how many failed (exit 1).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from rsseg.errors import InputError, UsageError

if TYPE_CHECKING:  # the pipeline loads torch: imported when a command runs
    from rsseg.pipelines.batch import BatchOptions, SceneResult


def predict_many(scenes: Sequence[Path], model: Path, out: Path | None, out_dir: Path | None,
                 options: BatchOptions) -> None:
    """Run :func:`~rsseg.pipelines.batch.predict_batch` with ``options`` (BatchOptions) and
    report it; raises InputError when scenes failed."""
    from rsseg.pipelines.batch import predict_batch

    if out is not None:
        raise UsageError("--out names the class raster of one scene, and several are given",
                         "use --out-dir DIR: one NAME_pred.tif per scene")
    if out_dir is None:
        raise UsageError("several scenes (a folder, pattern, list or STAC document) need "
                         "--out-dir", "add --out-dir DIR: one NAME_pred.tif per scene")
    console = Console(stderr=True)
    columns = (TextColumn("predicting"), BarColumn(), MofNCompleteColumn(),
               TextColumn("scenes, {task.fields[rate]} Mpx/s"), TextColumn("ETA"),
               TimeRemainingColumn(), TimeElapsedColumn())
    start, pixels = time.perf_counter(), 0

    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("predicting", total=None, rate="-")

        def progress(result: SceneResult, done: int, total: int) -> None:
            nonlocal pixels
            if result.status == "ok":
                pixels += result.width * result.height
            rate = pixels / 1e6 / max(time.perf_counter() - start, 1e-9)
            bar.update(task, completed=done, total=total, rate=f"{rate:.3g}")
            typer.echo(f"[{done}/{total}] {_line(result)}")

        summary = predict_batch(scenes, model, out_dir, options, progress=progress,
                                notify=typer.echo)
    ok, skipped, failed = (summary.count(s) for s in ("ok", "skipped", "failed"))
    seconds = summary.seconds
    rate = pixels / 1e6 / seconds if seconds else 0.0
    typer.echo(f"Predicted {ok} scene(s), skipped {skipped}, failed {failed} in {seconds:.1f} s "
               f"({rate:.3g} Mpx/s); summary in {summary.out_dir / 'summary.csv'} and "
               "summary.json")
    if summary.mosaic is not None:
        typer.echo(f"Mosaic: {summary.mosaic}")
    if failed:
        raise InputError(f"{failed} of {len(summary.results)} scene(s) failed (their errors are "
                         f"in {summary.out_dir / 'summary.csv'})",
                         "fix them and rerun the same command: finished scenes are skipped")


def _line(r: SceneResult) -> str:
    if r.status == "failed":
        return f"failed {r.scene}: {r.error.removeprefix(f'{r.scene}: ')}"
    if r.status == "skipped":
        return f"skipped {r.scene}: {r.out} is complete"
    return (f"ok {r.scene} -> {r.out} ({r.width}x{r.height} px) in {r.seconds:.1f} s, "
            f"{r.mpx_per_s:.3g} Mpx/s")
