"""``rsseg predict`` over many scenes: one class raster per scene, a summary, resumable.

The scene arguments (files, folders, patterns, list files: :mod:`rsseg.io.inputs`; STAC
items: :mod:`rsseg.io.stac`) become one job per scene writing ``OUT_DIR/NAME_pred.tif`` with
its sidecars, and the optional outputs whose names hold ``{scene}``. A scene whose outputs are
already complete is skipped (unless ``--overwrite``), so a rerun finishes an interrupted batch.
Jobs run in this process or as tasks on a Dask cluster (:mod:`rsseg.distributed`); either way
each process loads the model once (:func:`cached_bundle`); on a cluster a scene larger than
``--split-mpx`` goes as row strips (:func:`plan_strips`; no window is predicted twice: the
rows two strips share come back as blending sums), assembled here into its class raster
(:func:`assemble_strips`). A scene that fails is recorded with
its one-line error and the others go on; an error of the flags themselves (a ConfigError) stops
the batch. ``summary.csv`` and ``summary.json`` in ``OUT_DIR`` list every scene: status, size,
seconds, Mpx/s, pixels per class, error. ``--mosaic`` assembles the class rasters into one
(:func:`~rsseg.io.class_rasters.write_mosaic`) once every scene succeeded.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from rsseg.classes import raster_classes
from rsseg.distributed import ClusterSpec, parse_cluster, run_tasks, worker_threads
from rsseg.errors import ConfigError, InputError, RssegError, UsageError
from rsseg.grid import check_same_grid
from rsseg.inference.sliding import strips
from rsseg.io.atomic import check_output
from rsseg.io.cache import cache_dir
from rsseg.io.class_rasters import class_counts, parse_crs, without_crs, write_mosaic
from rsseg.io.inputs import SceneInput, expand_scenes
from rsseg.io.pam import aux_xml_path
from rsseg.io.publish import publishing
from rsseg.io.qml import qml_path
from rsseg.io.raster import open_scene
from rsseg.io.stac import check_assets_used, ensure_vrt, stac_reader
from rsseg.io.writer import class_raster_writer
from rsseg.models.bundle import BundleMeta, load_bundle, read_meta
from rsseg.pipelines.jobs import (
    BatchSummary,
    JobResult,
    Notify,
    check_out_dir,
    cluster_session,
    first_line,
    output_names,
    refuse_shared_outputs,
    write_summary_files,
)
from rsseg.pipelines.outputs import OutputOptions
from rsseg.pipelines.predict import (
    PredictOptions,
    StripPrediction,
    predict_scene,
    predict_strip,
    predict_windows,
    scene_layout,
    strip_rows,
)
from rsseg.regularizers.multidomain import domain_bundle

if TYPE_CHECKING:
    from rasterio.crs import CRS

SUFFIX = "_pred.tif"
_TEMPLATED = ("confidence", "probs", "vector", "preview")


@dataclass(frozen=True)
class BatchOptions:
    """``predict``'s flags (optional output names holding ``{scene}``), ``--cluster``,
    ``--mosaic`` and its ``--crs``, ``--assets`` of STAC items."""

    predict: PredictOptions = field(default_factory=PredictOptions)
    cluster: str | None = None
    mosaic: Path | None = None
    crs: str | None = None
    assets: tuple[str, ...] | None = None
    split_mpx: float = 64.0  # on a cluster, a larger scene is predicted in strips


@dataclass(frozen=True)
class SceneJob:
    """One scene's prediction: what ``predict_scene`` needs, picklable for Dask workers."""

    scene: SceneInput
    out: Path
    model: Path
    options: PredictOptions


@dataclass(frozen=True)
class StripJob:
    """One strip of a scene split over the workers: the layout's ``window_rows`` of ``job``."""

    job: SceneJob
    window_rows: range
    index: int  # 0 .. count - 1, top to bottom
    count: int


@dataclass(frozen=True)
class SceneResult(JobResult):
    """A scene's row of the summary, with its pixels per class and the files written."""

    pixels: dict[str, int] = field(default_factory=dict)  # class name → pixels (no nodata)
    outputs: tuple[Path, ...] = ()


Progress = Callable[[SceneResult, int, int], None]
"""Called as ``progress(result, scenes_done, scenes_total)`` after each scene."""


def predict_batch(args: Sequence[str | Path], model: str | Path, out_dir: str | Path,
                  options: BatchOptions = BatchOptions(), progress: Progress | None = None,
                  notify: Notify | None = None) -> BatchSummary:
    """Predict every scene ``args`` name into ``out_dir``; see the module docstring.

    Bad flags, inputs or output folder raise one-line errors before any scene runs; a failed
    scene is a ``failed`` result, not an exception.
    """
    spec = parse_cluster(options.cluster)
    if not options.split_mpx > 0:
        raise ConfigError(f"--split-mpx {options.split_mpx} must be above 0",
                          "use e.g. --split-mpx 64")
    crs = _check_mosaic_flags(options)
    out_dir = check_out_dir(Path(out_dir))
    model = Path(model)
    meta = read_meta(domain_bundle(model, options.predict.domain))
    bands = [b.name for b in meta.bands]
    scenes = expand_scenes(args, stac_reader(cache_dir() / "stac", options.assets, bands))
    check_assets_used(options.assets, scenes)
    jobs = plan_jobs(scenes, out_dir, model, options.predict, options.mosaic)
    if spec is not None and spec.threads_per_worker and options.predict.runtime.threads is None:
        runtime = replace(options.predict.runtime, threads=spec.threads_per_worker)
        jobs = [replace(j, options=replace(j.options, runtime=runtime)) for j in jobs]
    start = time.perf_counter()
    results = {j.out: _skipped(j, meta) for j in jobs if not j.options.overwrite
               and complete_prediction(j.scene.path, j.out, j.options.outputs.paths.values())}
    todo = [j for j in jobs if j.out not in results]
    mosaic = options.mosaic
    if mosaic is not None and not todo and _mosaic_complete(mosaic, [j.out for j in jobs]):
        mosaic = None
        if notify:
            notify(f"{options.mosaic} is complete, kept")
    if mosaic is not None:
        check_output(mosaic, options.predict.overwrite)
        plain = without_crs(j.scene.path for j in jobs)
        if plain is not None:
            raise InputError(f"{plain} has no CRS, so it has no place in a mosaic",
                             "set its CRS (gdal_edit.py -a_srs), or leave out --mosaic")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    if notify and results:
        notify(f"{len(results)} of {len(jobs)} scene(s) already predicted in {out_dir}, "
               "skipped (--overwrite redoes them)")
    if notify and todo and options.predict.tile in (None, "auto"):
        _say_windows(todo[0], meta, notify)
    try:
        split = round(options.split_mpx * 1e6)
        _run(todo, results, len(jobs), spec, progress, notify, meta, split)
    finally:
        ordered = tuple(results[j.out] for j in jobs if j.out in results)
        if ordered:
            write_summary(out_dir, ordered, meta)
        elif created and not any(out_dir.iterdir()):
            out_dir.rmdir()  # nothing ran (e.g. an unreachable scheduler): leave nothing
    failed = sum(r.status == "failed" for r in ordered)
    if mosaic is not None and failed and notify:
        notify(f"Mosaic {mosaic} not written: {failed} scene(s) failed (rerun to finish them)")
    elif mosaic is not None:
        write_mosaic([r.out for r in ordered], mosaic, meta.class_table(), meta.nodata_id, crs,
                     options.predict.overwrite)
    return BatchSummary(out_dir, ordered, time.perf_counter() - start,
                        None if failed else options.mosaic)


def _run(todo: Sequence[SceneJob], results: dict[Path, SceneResult], total: int,
         spec: ClusterSpec | None, progress: Progress | None, notify: Notify | None,
         meta: BundleMeta | None = None, split: int | None = None) -> None:
    """Predict ``todo`` in this process or on the cluster, adding to ``results`` as they come;
    on a cluster, a scene of more than ``split`` pixels goes as strips assembled here."""
    with cluster_session(spec, notify) as client:
        for done, result in enumerate(results.values(), start=1):
            if progress:
                progress(result, done, total)
        tasks = plan_strips(todo, meta, split) if client is not None and meta else list(todo)
        parts: dict[Path, dict[int, StripPrediction | str]] = {}
        start = time.perf_counter()
        for task, outcome in run_tasks(predict_task, tasks, client):
            if isinstance(task, StripJob):
                job = task.job
                done = parts.setdefault(job.out, {})
                done[task.index] = outcome if isinstance(outcome, StripPrediction | str) else (
                    f"the worker predicting it died ({first_line(outcome)})")
                if len(done) < task.count:
                    continue
                results[job.out] = assemble_strips(job, [done[i] for i in range(task.count)],
                                                   meta, time.perf_counter() - start)
            else:
                job = task
                results[job.out] = outcome if isinstance(outcome, SceneResult) else _failed(
                    job, f"the worker predicting it died ({first_line(outcome)})")
            if progress:
                progress(results[job.out], len(results), total)


def _say_windows(job: SceneJob, meta: BundleMeta, notify: Notify) -> None:
    """``--tile auto``: the windows chosen for the first scene, said once for the batch (a
    smaller scene gets windows at most its size); bad flags raise, a bad scene is its job's."""
    try:
        with open_scene(ensure_vrt(job.scene), nodata=job.options.nodata) as src:
            height, width = src.info.height, src.info.width
    except (ConfigError, UsageError):
        raise
    except RssegError:
        return
    notify(f"{predict_windows(meta, job.options, height, width)[3]}; for {job.scene.label}")


def plan_strips(jobs: Sequence[SceneJob], meta: BundleMeta, split: int | None
                ) -> list[SceneJob | StripJob]:
    """The tasks of ``jobs``: a scene of more than ``split`` pixels (and no optional outputs)
    as strips of window rows (:func:`~rsseg.inference.sliding.strips`), others whole."""
    tasks: list[SceneJob | StripJob] = []
    for job in jobs:
        pieces: list[range] = []
        if split is not None and not job.options.outputs.paths:
            try:
                lay = scene_layout(ensure_vrt(job.scene), meta, job.options)
            except (ConfigError, UsageError):
                raise
            except RssegError:  # the scene's own task reports it
                lay = None
            if lay is not None and lay.height * lay.width > split:
                pieces = strips(lay, split)
        if len(pieces) < 2:
            tasks.append(job)
            continue
        tasks += [StripJob(job, rows, i, len(pieces)) for i, rows in enumerate(pieces)]
    return tasks


def predict_task(task: SceneJob | StripJob) -> SceneResult | StripPrediction | str:
    """A whole scene (:func:`predict_job`) or one strip (:func:`predict_strip`) or its one-line
    error (a ConfigError is raised: the flags are wrong for every scene)."""
    if isinstance(task, SceneJob):
        return predict_job(task)
    job = task.job
    options = replace(job.options, runtime=replace(
        job.options.runtime, threads=worker_threads(job.options.runtime.threads)))
    try:
        return predict_strip(ensure_vrt(job.scene), job.model, options, task.window_rows,
                             loader=cached_bundle)
    except (ConfigError, UsageError):
        raise
    except RssegError as err:
        return str(err)
    except Exception as err:
        return f"{type(err).__name__}: {first_line(err)}"


def assemble_strips(job: SceneJob, parts: Sequence[StripPrediction | str],
                    meta: BundleMeta, seconds: float) -> SceneResult:
    """The strips' class ids and joined seams (:func:`strip_rows`), top to bottom, written as
    the scene's class raster (COG and sidecars, as :func:`predict_scene` writes them); the
    first strip's error fails the scene."""
    error = next((p for p in parts if isinstance(p, str)), None)
    if error is not None:
        return _failed(job, error)
    try:
        with open_scene(ensure_vrt(job.scene), nodata=job.options.nodata) as src:
            info = src.info
        check_output(job.out, job.options.overwrite, file=True)
        with publishing() as pub, class_raster_writer(
                job.out, info, meta.class_table(), meta.nodata_id, job.options.overwrite,
                pub) as writer:
            for row, ids in strip_rows(parts, meta):
                writer.write(row, ids)
        pixels = _names(class_counts(job.out, meta.nodata_id).pixels, meta)
    except RssegError as err:
        return _failed(job, str(err))
    return SceneResult(job.scene.label, job.out, "ok", info.width, info.height, seconds,
                       pixels=pixels, outputs=tuple(pub.outputs))


def plan_jobs(scenes: Sequence[SceneInput], out_dir: Path, model: Path,
              options: PredictOptions, mosaic: Path | None = None) -> list[SceneJob]:
    """One job per scene: outputs named after it (``NAME_pred.tif``; the parent folder's name
    is prefixed where two scenes share a name). Inputs that are outputs of this batch (a rerun
    into the input folder, or the ``mosaic``) are left out, with a warning."""
    _check_templates(options.outputs, len(scenes))
    jobs = []
    for scene, name in zip(scenes, output_names(scenes), strict=True):
        outputs = OutputOptions(**{
            **{f: getattr(options.outputs, f) for f in ("min_area", "simplify", "preview_bands")},
            **{f: _scene_path(getattr(options.outputs, f), name, out_dir) for f in _TEMPLATED}})
        jobs.append(SceneJob(scene, out_dir / f"{name}{SUFFIX}", model,
                             replace(options, outputs=outputs)))
    written = {p.resolve() for j in jobs for p in (j.out, *j.options.outputs.paths.values())}
    written |= {mosaic.resolve()} if mosaic is not None else set()
    kept = [j for j in jobs if j.scene.path.resolve() not in written]
    if len(kept) < len(jobs):
        warnings.warn(f"{len(jobs) - len(kept)} input(s) are outputs of this batch in "
                      f"{out_dir}, left out", UserWarning, stacklevel=2)
    refuse_shared_outputs([(j.scene.label, j.out) for j in kept], "predict")
    return kept


def predict_job(job: SceneJob) -> SceneResult:
    """Predict one scene (in this process or on a Dask worker); any error but a ConfigError
    becomes a ``failed`` result."""
    options = replace(job.options, runtime=replace(
        job.options.runtime, threads=worker_threads(job.options.runtime.threads)))
    try:
        summary = predict_scene(ensure_vrt(job.scene), job.model, job.out, options,
                                loader=cached_bundle)
        meta = cached_bundle(domain_bundle(job.model, job.options.domain))[1]
        pixels = _names(class_counts(job.out, meta.nodata_id).pixels, meta)
        return SceneResult(job.scene.label, job.out, "ok", summary.width, summary.height,
                           summary.seconds, pixels=pixels, outputs=tuple(summary.outputs))
    except (ConfigError, UsageError):
        raise  # the flags are wrong for every scene
    except RssegError as err:
        return _failed(job, str(err))
    except Exception as err:  # a batch reports a scene's failure and goes on
        return _failed(job, f"{type(err).__name__}: {first_line(err)}")


_BUNDLES: dict[tuple[str, int, int], tuple[nn.Module, BundleMeta]] = {}
_BUNDLES_LOCK = threading.Lock()


def cached_bundle(path: Path) -> tuple[nn.Module, BundleMeta]:
    """:func:`load_bundle`, loaded once per process and file version (path, mtime, size)."""
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)
    with _BUNDLES_LOCK:
        if key not in _BUNDLES:
            _BUNDLES.clear()
            _BUNDLES[key] = load_bundle(path)
        return _BUNDLES[key]


def write_summary(out_dir: Path, results: Sequence[SceneResult], meta: BundleMeta) -> None:
    """``summary.csv`` (one column per class) and ``summary.json``, replaced atomically."""
    names = list(meta.class_table().names)
    rows = [r.row() for r in results]
    table = [{**row, **{f"pixels {n}": r.pixels.get(n, 0) for n in names}}
             for row, r in zip(rows, results, strict=True)]
    write_summary_files(out_dir, table, [{**row, "pixels": r.pixels}
                                         for row, r in zip(rows, results, strict=True)],
                        classes=names)


def _check_mosaic_flags(options: BatchOptions) -> CRS | None:
    if options.crs is not None and options.mosaic is None:
        raise UsageError("--crs is the mosaic's CRS", "add --mosaic MAP.tif, or leave out --crs")
    if options.mosaic is not None and options.mosaic.suffix.lower() not in (".tif", ".tiff"):
        raise UsageError(f"--mosaic {options.mosaic}: the mosaic is a Cloud-Optimized GeoTIFF",
                         "name it .tif")
    return None if options.crs is None else parse_crs(options.crs)


def complete_prediction(scene: Path, out: Path, extras: Iterable[Path] = ()) -> bool:
    """``out`` is rsseg's finished class raster of ``scene``: it and its ``.qml``/``.aux.xml``
    (and ``extras``) exist, it opens, carries the classes and lies on the scene's grid."""
    if not all(p.is_file() for p in (out, qml_path(out), aux_xml_path(out), *extras)):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a missing CRS was reported when it was predicted
            with open_scene(scene) as src, open_scene(out) as pred:
                check_same_grid(src.info, pred.info, "")
                return raster_classes(pred) is not None
    except InputError:
        return False


def _mosaic_complete(mosaic: Path, rasters: Sequence[Path]) -> bool:
    """``mosaic`` and its sidecars exist and are newer than every raster it assembles."""
    parts = (mosaic, qml_path(mosaic), aux_xml_path(mosaic))
    if not all(p.is_file() for p in parts):
        return False
    return mosaic.stat().st_mtime_ns >= max(r.stat().st_mtime_ns for r in rasters)


def _check_templates(outputs: OutputOptions, scenes: int) -> None:
    for flag, path in outputs.paths.items():
        if "{scene}" not in str(path):
            raise UsageError(f"{flag} {path} names one file for {scenes} scene(s)",
                             f"put {{scene}} in the name, e.g. {flag} "
                             f"'{{scene}}{Path(path).suffix}'")


def _scene_path(template: Path | None, name: str, out_dir: Path) -> Path | None:
    """``template`` with ``{scene}`` replaced; a relative one lands in ``out_dir``."""
    if template is None:
        return None
    return out_dir / str(template).replace("{scene}", name)


def _names(pixels: dict[int, int], meta: BundleMeta) -> dict[str, int]:
    table = meta.class_table()
    return {table.name_of(i): n for i, n in pixels.items()}


def _skipped(job: SceneJob, meta: BundleMeta) -> SceneResult:
    counts = class_counts(job.out, meta.nodata_id)
    return SceneResult(job.scene.label, job.out, "skipped", counts.width, counts.height,
                       pixels=_names(counts.pixels, meta))


def _failed(job: SceneJob, error: str) -> SceneResult:
    return SceneResult(job.scene.label, job.out, "failed", error=error)
