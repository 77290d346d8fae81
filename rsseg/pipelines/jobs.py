"""Many scenes into one output folder, one job each: what ``predict`` and ``vectorize`` share.

Output names after the scenes (:func:`output_names`: the scene's name, its folder's name in
front where two scenes share one; :func:`refuse_shared_outputs`), the ``--out-dir`` check, the
result of a job (:class:`JobResult`, a row of the summary) and of the batch
(:class:`BatchSummary`), the Dask session that says which cluster runs the jobs
(:func:`cluster_session`), and ``summary.csv`` + ``summary.json`` written atomically
(:func:`write_summary_files`). Nothing here loads torch: ``rsseg vectorize`` and its workers
never import the model stack.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsseg.distributed import ClusterSpec, connect, dashboard
from rsseg.errors import OutputError, UsageError
from rsseg.io.inputs import SceneInput
from rsseg.io.publish import publishing

SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
STATUSES = ("ok", "skipped", "failed")

Notify = Callable[[str], None]
"""Called with one line for the user (the cluster and its dashboard, skipped scenes)."""


@dataclass(frozen=True)
class JobResult:
    """One row of the summary; ``status`` is ok, skipped (complete already) or failed."""

    scene: str  # the scene's file, or its STAC document and item id
    out: Path
    status: str
    width: int = 0
    height: int = 0
    seconds: float = 0.0
    error: str = ""

    @property
    def mpx_per_s(self) -> float:
        return self.width * self.height / 1e6 / self.seconds if self.seconds else 0.0

    def row(self) -> dict[str, object]:
        """The summary's columns common to every command."""
        size = self.out.stat().st_size if self.status != "failed" and self.out.is_file() else 0
        return {"scene": self.scene, "output": str(self.out), "status": self.status,
                "width": self.width, "height": self.height, "bytes": size,
                "seconds": round(self.seconds, 3), "mpx_per_s": round(self.mpx_per_s, 4),
                "error": self.error}


@dataclass(frozen=True)
class BatchSummary:
    out_dir: Path
    results: tuple[JobResult, ...]
    seconds: float
    mosaic: Path | None = None  # predict --mosaic: written or complete

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)


def check_out_dir(out_dir: Path) -> Path:
    """Refuse an ``--out-dir`` that is a file or not writable (it may not exist yet)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out-dir {out_dir} is a file", "give a folder (new or existing)")
    if out_dir.is_dir() and not os.access(out_dir, os.W_OK):
        raise OutputError(f"--out-dir {out_dir} is not writable", "choose another --out-dir")
    return out_dir


def output_names(scenes: Sequence[SceneInput]) -> list[str]:
    """The name of each scene's outputs: its own, with its folder's name in front where two
    scenes share a name."""
    names = [s.name for s in scenes]
    clashes = {n for n in names if names.count(n) > 1}
    return [f"{s.path.resolve().parent.name}_{s.name}" if s.name in clashes else s.name
            for s in scenes]


def refuse_shared_outputs(labelled: Sequence[tuple[str, Path]], verb: str) -> None:
    """A UsageError when two ``(scene label, output)`` pairs share the output."""
    outs = [out for _, out in labelled]
    twice = next((o for o in outs if outs.count(o) > 1), None)
    if twice is not None:
        same = [label for label, out in labelled if out == twice]
        raise UsageError(f"scenes {' and '.join(same)} would both be written to {twice}",
                         f"rename one or {verb} them into different --out-dir")


@contextmanager
def cluster_session(spec: ClusterSpec | None, notify: Notify | None) -> Iterator[Any | None]:
    """The Dask client of ``spec`` (None without ``--cluster``), its workers and dashboard
    told to ``notify``."""
    with connect(spec) if spec else nullcontext() as client:
        if client is not None and notify:
            link = dashboard(client)
            workers = len(client.scheduler_info().get("workers", {}))
            notify(f"Dask cluster: {workers} worker(s)" + (f", dashboard {link}" if link else ""))
        yield client


def write_summary_files(out_dir: Path, table: Sequence[dict[str, object]],
                        results: Sequence[dict[str, object]], **report: object) -> None:
    """``summary.csv`` (the columns of ``table``'s rows) and ``summary.json`` (the counts per
    status, ``report`` and ``results``), replaced atomically."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(list(table[0]))
    for row in table:
        writer.writerow(list(row.values()))
    counts = {s: sum(r["status"] == s for r in table) for s in STATUSES}
    document = {"scenes": len(table), **counts, **report, "results": list(results)}
    with publishing() as pub:
        pub.stage(out_dir / SUMMARY_CSV, overwrite=True).write_text(text.getvalue())
        pub.stage(out_dir / SUMMARY_JSON, overwrite=True).write_text(
            json.dumps(document, indent=1) + "\n")


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""
