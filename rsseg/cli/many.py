"""``rsseg predict`` and ``rsseg vectorize`` over many scenes: progress and report.

One line per finished scene on stdout (a log of a batch under a scheduler stays readable), a
progress bar of scenes and Mpx/s on a terminal, a closing summary; failed scenes make the
command end with one error line naming how many failed (exit 1).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
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

if TYPE_CHECKING:  # the pipelines load torch or GDAL: imported when a command runs
    from rsseg.pipelines.batch import BatchOptions
    from rsseg.pipelines.jobs import BatchSummary, JobResult, Notify
    from rsseg.pipelines.vectorize import VectorOptions, VectorResult

    Run = Callable[[Callable[[JobResult, int, int], None], Notify], BatchSummary]


def check_many(out: Path | None, out_dir: Path | None, what: str, names: str,
               inputs: str = "scenes (a folder, pattern, list or STAC document)") -> None:
    """Several ``inputs`` take ``--out-dir``, not ``--out`` (which names ``what`` of one)."""
    if out is not None:
        raise UsageError(f"--out names the {what} of one scene, and several are given",
                         f"use --out-dir DIR: one {names} per scene")
    if out_dir is None:
        raise UsageError(f"several {inputs} need --out-dir",
                         f"add --out-dir DIR: one {names} per scene")


def predict_many(scenes: Sequence[Path], model: Path, out: Path | None, out_dir: Path | None,
                 options: BatchOptions) -> None:
    """Run :func:`~rsseg.pipelines.batch.predict_batch` with ``options`` (BatchOptions) and
    report it; raises InputError when scenes failed."""
    from rsseg.pipelines.batch import predict_batch

    check_many(out, out_dir, "class raster", "NAME_pred.tif")
    summary = _run_many("predicting", "Predicted", lambda progress, notify: predict_batch(
        scenes, model, out_dir, options, progress=progress, notify=notify), _line)
    if summary.mosaic is not None:
        typer.echo(f"Mosaic: {summary.mosaic}")
    _fail_if_failed(summary)


def vectorize_many(rasters: Sequence[Path], out: Path | None, out_dir: Path | None,
                   options: VectorOptions, fmt: str, cluster: str | None,
                   as_json: bool) -> None:
    """Run :func:`~rsseg.pipelines.vectorize.vectorize_batch` and report it (``as_json``: one
    JSON document, no progress lines); raises InputError when rasters failed."""
    from rsseg.pipelines.vectorize import vectorize_batch

    check_many(out, out_dir, "polygon file", f"NAME.{fmt}",
               "class rasters (a folder, pattern or list)")
    summary = _run_many("vectorizing", "Vectorized", lambda progress, notify: vectorize_batch(
        rasters, out_dir, options, fmt, cluster, progress, notify), _vector_line, as_json)
    if as_json:
        typer.echo(json.dumps({"out_dir": str(summary.out_dir), "seconds": summary.seconds,
                               **{s: summary.count(s) for s in ("ok", "skipped", "failed")},
                               "results": [r.row() for r in summary.results]}))
    _fail_if_failed(summary)


def _run_many(doing: str, done_verb: str, run: Run, line: Callable[[JobResult], str],
              quiet: bool = False) -> BatchSummary:
    """``run(progress, notify)`` with a progress bar, one line per scene and a closing line
    (none of them with ``quiet``)."""
    console = Console(stderr=True)
    columns = (TextColumn(doing), BarColumn(), MofNCompleteColumn(),
               TextColumn("scenes, {task.fields[rate]} Mpx/s"), TextColumn("ETA"),
               TimeRemainingColumn(), TimeElapsedColumn())
    start, pixels = time.perf_counter(), 0
    echo = (lambda text: None) if quiet else typer.echo

    with Progress(*columns, console=console, disable=quiet or not console.is_terminal) as bar:
        task = bar.add_task(doing, total=None, rate="-")

        def progress(result: JobResult, done: int, total: int) -> None:
            nonlocal pixels
            if result.status == "ok":
                pixels += result.width * result.height
            rate = pixels / 1e6 / max(time.perf_counter() - start, 1e-9)
            bar.update(task, completed=done, total=total, rate=f"{rate:.3g}")
            echo(f"[{done}/{total}] {line(result)}")

        summary = run(progress, echo)
    ok, skipped, failed = (summary.count(s) for s in ("ok", "skipped", "failed"))
    seconds = summary.seconds
    rate = pixels / 1e6 / seconds if seconds else 0.0
    echo(f"{done_verb} {ok} scene(s), skipped {skipped}, failed {failed} in {seconds:.1f} s "
         f"({rate:.3g} Mpx/s); summary in {summary.out_dir / 'summary.csv'} and summary.json")
    return summary


def _fail_if_failed(summary: BatchSummary) -> None:
    failed = summary.count("failed")
    if failed:
        raise InputError(f"{failed} of {len(summary.results)} scene(s) failed (their errors are "
                         f"in {summary.out_dir / 'summary.csv'})",
                         "fix them and rerun the same command: finished scenes are skipped")


def _line(r: JobResult) -> str:
    if r.status == "failed":
        return f"failed {r.scene}: {r.error.removeprefix(f'{r.scene}: ')}"
    if r.status == "skipped":
        return f"skipped {r.scene}: {r.out} is complete"
    return (f"ok {r.scene} -> {r.out} ({r.width}x{r.height} px) in {r.seconds:.1f} s, "
            f"{r.mpx_per_s:.3g} Mpx/s")


def _vector_line(r: VectorResult) -> str:
    if r.status != "ok":
        return _line(r)
    return f"{_line(r)}, {r.polygons} polygons ({r.dropped} under --min-area)"
