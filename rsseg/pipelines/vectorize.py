"""``rsseg vectorize`` and ``rsseg predict --vector``: class raster → polygons per class.

Rows stream through :class:`~rsseg.polygons.BandPolygonizer` one band at a time (the bands the
predictor finishes, or 512-row blocks of a class raster on disk); regions cut by band seams are
merged back, so the polygons equal those of polygonizing the whole raster at once. Each polygon
gets ``class_id``, ``class_name``, ``pixels`` (its area in pixels) and ``area_m2`` (equal-area
when the CRS is geographic); ``--min-area`` drops smaller polygons, ``--simplify`` then
simplifies each (Douglas-Peucker in CRS units, topology of each polygon preserved).

Many class rasters (files, folders, patterns, lists: :mod:`rsseg.io.inputs`) go through
:func:`vectorize_batch`: one polygon file per raster in an output folder, in this process or as
tasks on a Dask cluster (``--cluster``, :mod:`rsseg.distributed`), with the summary files, the
names and the resume rule of ``predict``'s batches (:mod:`rsseg.pipelines.jobs`): a polygon file
newer than its raster is complete (written atomically) and skipped; an older one is a failure
until ``--overwrite`` redoes it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import shapely
from rasterio.windows import Window

from rsseg.classes import ClassTable, raster_classes
from rsseg.distributed import parse_cluster, run_tasks
from rsseg.errors import ConfigError, RssegError
from rsseg.io.atomic import check_output
from rsseg.io.inputs import SceneInput, expand_scenes
from rsseg.io.polygons import equal_area, to_crs_coordinates, vector_driver, write_polygons
from rsseg.io.publish import Publication, publishing
from rsseg.io.raster import SceneInfo, open_scene
from rsseg.pipelines import jobs
from rsseg.polygons import BandPolygonizer

READ_ROWS = 512  # rows per read of a class raster (one block row of rsseg's COGs)


@dataclass(frozen=True)
class VectorOptions:
    """``--min-area`` (m², pixels without a CRS) and ``--simplify`` (CRS units)."""

    min_area: float = 0.0
    simplify: float = 0.0
    overwrite: bool = False


@dataclass(frozen=True)
class VectorSummary:
    out: Path
    polygons: int  # written, after --min-area
    dropped: int  # smaller than --min-area
    seconds: float  # polygonizing, merging, attributes and writing
    width: int = 0  # of the class raster
    height: int = 0


def check_vector_options(out: str | Path, options: VectorOptions, flag: str = "--vector") -> str:
    """Refuse a bad extension or a negative ``--min-area``/``--simplify``; returns the driver."""
    driver = vector_driver(out, flag)
    for name, value in (("--min-area", options.min_area), ("--simplify", options.simplify)):
        if not np.isfinite(value) or value < 0:
            raise ConfigError(f"{name} {value:g} must be 0 or more",
                              f"use e.g. {name} 0 (keep everything)")
    check_output(out, options.overwrite)
    return driver


class VectorSink:
    """Class rows in (any band heights, in order), a polygon file staged in ``publication``."""

    def __init__(self, out: str | Path, info: SceneInfo, classes: ClassTable | None,
                 nodata: int | None, options: VectorOptions, publication: Publication,
                 flag: str = "--vector") -> None:
        self.out = Path(out)
        self.driver = check_vector_options(out, options, flag)
        self.info = info
        self.classes = classes
        self.options = options
        self.polygonizer = BandPolygonizer(info.height, nodata)
        self.staged = publication.stage(out, options.overwrite)
        self.seconds = 0.0

    def add(self, row: int, classes: np.ndarray) -> None:
        start = time.perf_counter()
        self.polygonizer.add(row, classes)
        self.seconds += time.perf_counter() - start

    def finish(self) -> VectorSummary:
        start = time.perf_counter()
        pixel_geoms, values = self.polygonizer.finish()
        pixels = shapely.area(pixel_geoms) if len(pixel_geoms) else np.zeros(0)
        if self.info.georeferenced:
            geoms = to_crs_coordinates(pixel_geoms, self.info.transform)
            area = equal_area(geoms, self.info.crs)
            size = area
        else:
            warnings.warn(f"{self.info.path.name} has no CRS: polygons are in pixel coordinates, "
                          "area_m2 is empty and --min-area counts pixels", UserWarning,
                          stacklevel=2)
            geoms, area, size = pixel_geoms, np.full(len(pixel_geoms), np.nan), pixels
        keep = size >= self.options.min_area
        geoms, values, pixels, area = geoms[keep], values[keep], pixels[keep], area[keep]
        if self.options.simplify > 0:
            geoms = shapely.simplify(geoms, self.options.simplify, preserve_topology=True)
        names = self.classes or ClassTable.from_ids(np.unique(values).tolist())
        lookup = {c.id: c.name for c in names.classes}
        columns = {"class_id": values.astype(np.int32),
                   "class_name": np.array([lookup.get(int(v), f"class {v}") for v in values],
                                          dtype=object),
                   "pixels": np.rint(pixels).astype(np.int64),
                   "area_m2": area.astype(np.float64)}
        write_polygons(self.staged, geoms, columns, self.info.crs, self.driver, self.out.stem)
        self.seconds += time.perf_counter() - start
        return VectorSummary(self.out, int(keep.sum()), int((~keep).sum()), self.seconds,
                             self.info.width, self.info.height)


def vectorize_raster(raster: str | Path, out: str | Path,
                     options: VectorOptions = VectorOptions()) -> VectorSummary:
    """Polygons of the class raster ``raster`` (band 1; its nodata gets none) into ``out``.

    Class names come from the raster (``CLASSES`` tag or GDAL category names), else
    ``class <id>``. Raises InputError/ConfigError/OutputError (one line each) for bad input;
    nothing appears at ``out`` unless it succeeds.
    """
    check_vector_options(out, options, "--out")
    with open_scene(raster) as scene:
        if scene.count != 1:
            raise ConfigError(f"{raster} has {scene.count} bands, not one band of class ids",
                              "give a single-band class raster such as rsseg predict's")
        if not np.issubdtype(np.dtype(scene.info.dtype), np.integer):
            raise ConfigError(f"{raster} holds {scene.info.dtype} values, not class ids",
                              "give a class raster (integer values) such as rsseg predict's")
        info = scene.info
        nodata = None if info.nodata is None else int(info.nodata)
        with publishing() as pub:
            sink = VectorSink(out, info, raster_classes(scene), nodata, options, pub, "--out")
            for row in range(0, info.height, READ_ROWS):
                rows = min(READ_ROWS, info.height - row)
                band = scene.read(Window(0, row, info.width, rows))[0]
                sink.add(row, band)
            summary = sink.finish()
    return summary


@dataclass(frozen=True)
class VectorJob:
    """One class raster's polygons: picklable for Dask workers."""

    scene: SceneInput
    out: Path
    options: VectorOptions


@dataclass(frozen=True)
class VectorResult(jobs.JobResult):
    """A raster's row of the summary (``polygons``/``dropped`` unknown for a skipped one)."""

    polygons: int | None = None
    dropped: int | None = None

    def row(self) -> dict[str, object]:
        return {**super().row(), "polygons": self.polygons, "dropped": self.dropped}


Progress = Callable[[VectorResult, int, int], None]
"""Called as ``progress(result, rasters_done, rasters_total)`` after each raster."""


def vectorize_batch(args: Sequence[str | Path], out_dir: str | Path,
                    options: VectorOptions = VectorOptions(), fmt: str = "gpkg",
                    cluster: str | None = None, progress: Progress | None = None,
                    notify: jobs.Notify | None = None) -> jobs.BatchSummary:
    """Polygons of every class raster ``args`` name into ``out_dir/NAME.fmt``, with
    ``summary.csv``/``summary.json``; see the module docstring.

    Bad flags, inputs or output folder raise one-line errors before any raster is read; a
    raster that fails is a ``failed`` result, not an exception.
    """
    spec = parse_cluster(cluster)
    out_dir = jobs.check_out_dir(Path(out_dir))
    check_vector_options(out_dir / f"{{scene}}.{fmt}", replace(options, overwrite=True),
                         "--format")
    scenes = expand_scenes(args)
    planned = [VectorJob(scene, out_dir / f"{name}.{fmt}", options)
               for scene, name in zip(scenes, jobs.output_names(scenes), strict=True)]
    jobs.refuse_shared_outputs([(j.scene.label, j.out) for j in planned], "vectorize")
    start = time.perf_counter()
    results = {j.out: _existing(j) for j in planned if j.out.exists() and not options.overwrite}
    todo = [j for j in planned if j.out not in results]
    skipped = sum(r.status == "skipped" for r in results.values())
    with jobs.cluster_session(spec, notify) as client:  # unreachable: nothing written
        out_dir.mkdir(parents=True, exist_ok=True)
        if notify and skipped:
            notify(f"{skipped} of {len(planned)} raster(s) already vectorized in {out_dir}, "
                   "skipped (--overwrite redoes them)")
        try:
            for done, result in enumerate(results.values(), start=1):
                if progress:
                    progress(result, done, len(planned))
            for job, outcome in run_tasks(vectorize_job, todo, client):
                results[job.out] = outcome if isinstance(outcome, VectorResult) else _failed(
                    job, f"the worker vectorizing it died ({jobs.first_line(outcome)})")
                if progress:
                    progress(results[job.out], len(results), len(planned))
        finally:
            ordered = tuple(results[j.out] for j in planned if j.out in results)
            if ordered:
                rows = [r.row() for r in ordered]
                jobs.write_summary_files(out_dir, rows, rows)
    return jobs.BatchSummary(out_dir, ordered, time.perf_counter() - start)


def vectorize_job(job: VectorJob) -> VectorResult:
    """One raster's polygons (in this process or on a Dask worker); every error becomes a
    ``failed`` result (the flags were checked before any job)."""
    start = time.perf_counter()
    try:
        summary = vectorize_raster(job.scene.path, job.out, job.options)
    except RssegError as err:
        return _failed(job, str(err))
    except Exception as err:  # a batch reports a raster's failure and goes on
        return _failed(job, f"{type(err).__name__}: {jobs.first_line(err)}")
    return VectorResult(job.scene.label, job.out, "ok", summary.width, summary.height,
                        time.perf_counter() - start, polygons=summary.polygons,
                        dropped=summary.dropped)


def _existing(job: VectorJob) -> VectorResult:
    """An output that exists: complete when newer than its raster, else stale."""
    if not job.out.is_file():
        return _failed(job, f"{job.out} is a folder (move it, or choose another --out-dir)")
    if job.out.stat().st_mtime_ns >= job.scene.path.stat().st_mtime_ns:
        return VectorResult(job.scene.label, job.out, "skipped")
    return _failed(job, f"{job.out} exists and is older than {job.scene.path} (pass "
                        "--overwrite to redo it)")


def _failed(job: VectorJob, error: str) -> VectorResult:
    return VectorResult(job.scene.label, job.out, "failed", error=error)
