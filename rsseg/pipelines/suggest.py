"""``rsseg suggest``: the points of some scenes worth labelling next, as a GeoPackage for QGIS.

Each scene streams once through the predictor of ``rsseg predict``
(:class:`~rsseg.inference.sliding.SlidingWindowPredictor`, one band of rows at a time); the
blended probabilities give each pixel an uncertainty (:func:`rsseg.sampling.uncertainty`), each
``cell`` × ``cell`` block one candidate (its most uncertain pixel — by the mean uncertainty of
its neighbourhood with ``--region`` — or a random one; the hybrid takes both, the random one for
its exploration share ``--explore``) and a pool keeps the best
candidates per predicted class (:mod:`rsseg.sampling`). Nodata pixels, labelled
pixels (``--labels``) and pixels closer than ``--min-distance`` to a labelled one are never
candidates. The ``diversity`` and ``hybrid`` strategies then read the model's features at the
candidates and at up to :data:`MAX_CENTRES` labelled pixels per scene (the features entering the
segmentation head, bilinear at the pixel: :func:`feature_tap`), running the model again on only
the windows that hold them, and :func:`rsseg.sampling.select` picks N.

Memory: one band of rows, the pool (:data:`POOL_PER_POINT` × N per class), and one scene's
labelled mask when ``--labels`` is given. The points go to a GeoPackage with a ``.qml`` beside it
(:mod:`rsseg.io.suggestions`), both published atomically.

Many scenes: each scene's pass (:func:`scan_scene`) and its feature pass (:func:`scene_features`)
are tasks (:class:`SceneTask`), run in this process or, with ``--cluster``, on Dask workers
(:mod:`rsseg.distributed`; each process loads the model once). The ranking is global: the
submitting process joins the scenes' candidate pools (the best of each scene's pool are the best
of the whole pool) and makes the one diverse selection, so the points are those of a run without
a cluster.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.windows import Window
from torch import nn

from rsseg.classes import IGNORE, ClassTable
from rsseg.distributed import parse_cluster, run_tasks, worker_threads
from rsseg.errors import ConfigError, InputError
from rsseg.inference.device import resolve_device
from rsseg.inference.runtime import RuntimeOptions, auto_batch_size, build_runner, torch_threads
from rsseg.inference.sliding import SlidingWindowPredictor
from rsseg.io.atomic import check_output
from rsseg.io.inputs import expand_scenes
from rsseg.io.publish import publishing
from rsseg.io.qml import qml_path
from rsseg.io.raster import NoGeoreferencing, RowBandReader, Scene, SceneInfo, open_scene
from rsseg.io.suggestions import (
    LabelColumn,
    crs_name,
    points_qml,
    read_label_column,
    same_crs,
    write_points,
)
from rsseg.io.vector import burn_feature_index, intersects_scene, read_vector
from rsseg.io.writer import bounded_gdal_cache
from rsseg.labels import VECTOR_SUFFIXES, read_label_raster
from rsseg.models import parts
from rsseg.models.bundle import BundleMeta, read_meta
from rsseg.pipelines.batch import cached_bundle
from rsseg.pipelines.jobs import cluster_session, first_line
from rsseg.pipelines.predict import _in_model_band_order, resolve_windows
from rsseg.pipelines.radiometry import check_radiometry
from rsseg.regularizers.base import capture
from rsseg.sampling import (
    DEFAULT_EXPLORE,
    FEATURE_STRATEGIES,
    MEASURES,
    STRATEGIES,
    CandidatePool,
    Candidates,
    CellReducer,
    NearIndex,
    RegionMean,
    select,
    uncertainty,
)
from rsseg.tiling.blend import Layout, layout

DEFAULT_MIN_PIXELS = 5.0  # --min-distance when not given, in pixels
MIN_CELL = 8  # side of a candidate block in pixels (at least --min-distance)
POOL_PER_POINT = 8  # candidates kept per predicted class, per point asked
MIN_POOL = 256  # ... and at least this many
MAX_CENTRES = 256  # labelled pixels per scene whose features count as already picked
FEATURE_BATCH = 4  # windows per model call of the feature pass (without --batch-size)
FIELDS = ("predicted", "confidence", "uncertainty", "rank", "scene")  # after the label column

T = TypeVar("T")
LabelledMask = Callable[[SceneInfo], "np.ndarray | None"]
"""A scene's header → ``(H, W)`` bool, True where a pixel is already labelled (None: none is)."""


@dataclass(frozen=True)
class SuggestOptions:
    """Flags of ``rsseg suggest``; ``tile``/``overlap`` None take the bundle's defaults,
    ``min_distance`` None is :data:`DEFAULT_MIN_PIXELS` pixels (else in CRS units)."""

    n: int = 50
    strategy: str = "hybrid"
    explore: float = DEFAULT_EXPLORE  # hybrid: share of points by diversity among random pixels
    measure: str = "margin"
    region: int = 0  # uncertainty/hybrid: rank by the mean over (2·region + 1)² pixels
    min_distance: float | None = None
    labels: tuple[Path, ...] = ()
    label_column: str = "label"
    seed: int = 0
    tile: int | None = None
    overlap: int | None = None
    batch_size: int | None = None
    nodata: float | None = None
    device: str = "auto"
    overwrite: bool = False
    cluster: str | None = None  # local[:N] or a scheduler address: scenes as Dask tasks
    threads: int | None = None  # model threads per process (set for a cluster's workers)


@dataclass(frozen=True)
class Suggestions:
    """The picked points in rank order, the scenes they index and the model's classes."""

    points: Candidates
    scenes: tuple[SceneInfo, ...]
    classes: ClassTable
    eligible: int  # candidate pixels: valid and not labelled, over every scene

    def class_names(self) -> list[str]:
        return [self.classes.classes[int(k)].name for k in self.points.predicted]


@dataclass(frozen=True)
class SuggestSummary:
    out: Path
    style: Path
    points: int
    per_class: dict[str, int]
    eligible: int
    scenes: int
    seconds: float


def check_suggest_options(options: SuggestOptions) -> None:
    """One-line errors for bad values, before any work."""
    if options.n <= 0:
        raise ConfigError(f"--n {options.n} must be at least 1", "use e.g. --n 50")
    if options.strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {options.strategy!r}",
                          f"use one of {', '.join(STRATEGIES)}")
    if options.measure not in MEASURES:
        raise ConfigError(f"unknown uncertainty measure {options.measure!r}",
                          f"use one of {', '.join(MEASURES)}")
    if options.region < 0:
        raise ConfigError(f"--region {options.region} must be 0 or more",
                          "use e.g. --region 2 (a 5 x 5 neighbourhood; 0: the pixel alone)")
    if not 0 <= options.explore <= 1:
        raise ConfigError(f"--explore {options.explore:g} is not a share between 0 and 1",
                          "use e.g. --explore 0.2 (0: every point by uncertainty and diversity)")
    distance = options.min_distance
    if distance is not None and not (math.isfinite(distance) and distance >= 0):
        raise ConfigError(f"--min-distance {distance:g} must be 0 or more",
                          "use e.g. --min-distance 100 (CRS units)")
    if options.batch_size is not None and options.batch_size < 1:
        raise ConfigError(f"--batch-size {options.batch_size} must be at least 1", "use e.g. 8")
    parse_cluster(options.cluster)


@dataclass(frozen=True)
class SceneTask:
    """One scene's work, picklable for Dask workers: its pass (:func:`scan_scene`), or the
    features at its pixels ``rows``, ``cols`` (:func:`scene_features`)."""

    index: int  # the scene's place among the scenes (Candidates.scene)
    path: Path
    model: Path
    options: SuggestOptions
    labelled: LabelledMask | None = None
    rows: np.ndarray | None = None
    cols: np.ndarray | None = None


@dataclass(frozen=True)
class SceneScan:
    """What a scene's pass gives the ranking: its header, ``--min-distance`` in its pixels, its
    candidate pixels, the best candidates of its own pool and up to :data:`MAX_CENTRES` of its
    labelled pixels ``(rows, cols)``."""

    info: SceneInfo
    radius: float
    eligible: int
    candidates: Candidates
    centres: tuple[np.ndarray, np.ndarray]


def suggest_points(scenes: Sequence[str | Path], model: str | Path,
                   options: SuggestOptions = SuggestOptions(),
                   labelled: LabelledMask | None = None,
                   notify: Callable[[str], None] | None = None) -> Suggestions:
    """Pick ``options.n`` points of ``scenes`` worth labelling for the bundle ``model``.

    ``labelled`` gives each scene's labelled pixels (never picked, nor closer than the minimum
    distance; picklable for ``options.cluster``). Raises InputError/ConfigError (one line) for bad
    input, among them an all-nodata scene, more points than candidate pixels and more points than
    fit that far apart. ``notify`` hears which cluster runs the scenes.
    """
    check_suggest_options(options)
    spec = parse_cluster(options.cluster)
    model = Path(model)
    meta = read_meta(model)
    resolve_windows(meta, options.tile, options.overlap, options.batch_size)  # before any task
    if spec is not None and options.threads is None:
        options = replace(options, threads=spec.threads_per_worker)
    tasks = [SceneTask(i, Path(p), model, options, labelled) for i, p in enumerate(scenes)]
    with cluster_session(spec, notify) as client:
        done = _run(scan_scene, tasks, client)
        scans = [done[i] for i in range(len(tasks))]
        eligible = sum(s.eligible for s in scans)
        if options.n > eligible:
            raise InputError(f"--n {options.n} is more than the {eligible} candidate pixel(s) "
                             "(valid and not labelled)", f"ask for at most --n {eligible}")
        pool = CandidatePool(_pool_cap(options), options.strategy in UNCERTAIN)
        for scan in scans:
            pool.add(scan.candidates)
        cands = pool.candidates()
        features = centres = None
        if options.strategy in FEATURE_STRATEGIES:
            features, centres = _features(tasks, scans, cands, client)
    picks = select(cands, options.n, options.strategy, [s.radius for s in scans], features,
                   centres, options.explore)
    if len(picks) < options.n:
        apart = (f"{options.min_distance:g} CRS units" if options.min_distance is not None
                 else f"{DEFAULT_MIN_PIXELS:g} pixels")
        raise InputError(f"only {len(picks)} of --n {options.n} points fit at least {apart} "
                         f"apart among the {eligible} candidate pixel(s)",
                         "lower --n or --min-distance")
    return Suggestions(cands.take(picks), tuple(s.info for s in scans), meta.class_table(),
                       eligible)


UNCERTAIN = ("uncertainty", "hybrid")  # strategies whose candidates are the most uncertain


def _run(fn: Callable[[SceneTask], T], tasks: Sequence[SceneTask], client: object | None
         ) -> dict[int, T]:
    """``fn(task)`` by scene index, in this process or on the cluster; the first error stops
    the run (every scene counts in the one ranking), a worker that kept dying included."""
    out = {}
    for task, result in run_tasks(fn, tasks, client):
        if isinstance(result, BaseException):  # KilledWorker
            raise InputError(f"{task.path}: the worker running it died ({first_line(result)})",
                             "check the workers' memory and logs")
        out[task.index] = result
    return out


def _pool_cap(options: SuggestOptions) -> int:
    return max(POOL_PER_POINT * options.n, MIN_POOL)


def scan_scene(task: SceneTask) -> SceneScan:
    """The streaming pass over one scene (in this process or on a Dask worker): its best
    candidates (a pool of the size the whole run keeps) and labelled centres."""
    options = task.options
    net, meta = cached_bundle(task.model)
    tile, overlap, multiple = resolve_windows(meta, options.tile, options.overlap,
                                              options.batch_size)
    device = resolve_device(options.device)
    net = net.to(device)
    by_uncertainty = options.strategy in UNCERTAIN
    pool = CandidatePool(_pool_cap(options), by_uncertainty)
    with bounded_gdal_cache(), torch_threads(worker_threads(options.threads)), \
            open_scene(task.path, nodata=options.nodata) as src:
        src = _in_model_band_order(src, meta, task.model)
        check_radiometry(src, meta)
        mask = task.labelled(src.info) if task.labelled is not None else None
        radius = _radius_px(options.min_distance, src.info)
        rng = np.random.default_rng([options.seed, task.index])
        cell = max(MIN_CELL, math.ceil(radius))
        reducers = [CellReducer(src.info.width, cell, by_uncertainty, rng, scene=task.index)]
        if _explores(options):
            reducers.append(CellReducer(src.info.width, cell, False, np.random.default_rng(
                [options.seed, task.index, 1]), scene=task.index, explore=True))
        valid = _scan(src, net, meta, task.model, options, tile, overlap, multiple, device, mask,
                      radius, reducers, pool)
        if not valid:
            raise InputError(f"{task.path}: every pixel is nodata, nothing to suggest",
                             "check the scene and --nodata")
        return SceneScan(src.info, radius, reducers[0].eligible, pool.candidates(),
                         _sample_labelled(mask, rng))


def _explores(options: SuggestOptions) -> bool:
    """Whether the pass keeps exploration candidates (a random pixel per block) too."""
    return options.strategy == "hybrid" and options.explore > 0


def _radius_px(min_distance: float | None, info: SceneInfo) -> float:
    """``--min-distance`` (CRS units; pixels without georeferencing) in this scene's pixels."""
    if min_distance is None:
        return DEFAULT_MIN_PIXELS
    return min_distance / float(np.mean(info.resolution))


def _scan(src: Scene, net: nn.Module, meta: BundleMeta, model: Path, options: SuggestOptions,
          tile: int, overlap: int, multiple: int, device: torch.device, mask: np.ndarray | None,
          radius: float, reducers: Sequence[CellReducer], pool: CandidatePool) -> int:
    """One streaming pass over ``src`` feeding ``pool``; returns the number of valid pixels."""
    info = src.info
    lay = layout(info.height, info.width, tile, overlap, multiple)
    runner = build_runner(net, meta, model, device, RuntimeOptions(threads=options.threads),
                          (lay.win_h, lay.win_w))
    batch = options.batch_size or auto_batch_size(
        runner, device, (len(meta.bands), lay.win_h, lay.win_w), lay.count)
    predictor = SlidingWindowPredictor(runner, meta.normalise, meta.model.classes, tile, overlap,
                                       multiple, batch)
    near = NearIndex(*np.nonzero(mask), radius) if mask is not None else None
    region = RegionMean(options.region) if options.region and options.strategy in UNCERTAIN \
        else None

    def reduce(rows: Iterable[tuple]) -> None:
        for row, *arrays in rows:
            for reducer in reducers:
                for part in reducer.add(row, *arrays):
                    pool.add(_away_from(part, near))

    valid = 0
    for band in predictor.bands(src):
        score, index, confidence = uncertainty(band.probs, options.measure)
        ok = band.valid
        valid += int(ok.sum())
        if mask is not None:
            ok = ok & ~mask[band.row:band.row + ok.shape[0]]
        reduce([(band.row, score, index, confidence, ok)] if region is None else
               region.add(band.row, score, band.valid, index, confidence, ok))
    if region is not None:
        reduce(region.finish())
    for reducer in reducers:
        for part in reducer.finish():
            pool.add(_away_from(part, near))
    return valid


def _away_from(part: Candidates, near: NearIndex | None) -> Candidates:
    """``part`` without the candidates closer than the minimum distance to a labelled pixel."""
    if near is None:
        return part
    return part.take(~near.near(part.row, part.col))


def _sample_labelled(mask: np.ndarray | None, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Up to :data:`MAX_CENTRES` labelled pixels ``(rows, cols)``, drawn with ``rng``."""
    if mask is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, cols = np.nonzero(mask)
    if len(rows) > MAX_CENTRES:
        keep = np.sort(rng.choice(len(rows), MAX_CENTRES, replace=False))
        rows, cols = rows[keep], cols[keep]
    return rows, cols


def _features(tasks: Sequence[SceneTask], scans: Sequence[SceneScan], cands: Candidates,
              client: object | None) -> tuple[np.ndarray, np.ndarray]:
    """Features ``(len(cands), D)`` of the candidates and ``(M, D)`` of the labelled centres,
    one task per scene that holds some."""
    mine = {t.index: np.flatnonzero(cands.scene == t.index) for t in tasks}
    todo = []
    for task, scan in zip(tasks, scans, strict=True):
        rows = np.concatenate([cands.row[mine[task.index]], scan.centres[0]]).astype(np.int64)
        cols = np.concatenate([cands.col[mine[task.index]], scan.centres[1]]).astype(np.int64)
        if len(rows):
            todo.append(replace(task, labelled=None, rows=rows, cols=cols))
    found = _run(scene_features, todo, client)
    dim = next(iter(found.values())).shape[1] if found else 1
    features = np.zeros((len(cands), dim), np.float32)
    centres = []
    for i in sorted(found):
        features[mine[i]] = found[i][:len(mine[i])]
        centres.append(found[i][len(mine[i]):])
    return features, (np.concatenate(centres) if centres else np.zeros((0, dim), np.float32))


def scene_features(task: SceneTask) -> np.ndarray:
    """``(len(task.rows), D)`` features of one scene's pixels (in this process or on a Dask
    worker), running the model again on only the windows that hold them."""
    options = task.options
    net, meta = cached_bundle(task.model)
    tile, overlap, multiple = resolve_windows(meta, options.tile, options.overlap,
                                              options.batch_size)
    device = resolve_device(options.device)
    with bounded_gdal_cache(), torch_threads(worker_threads(options.threads)), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the scene's warnings were said by its first pass
        with open_scene(task.path, nodata=options.nodata) as src:
            src = _in_model_band_order(src, meta, task.model)
            lay = layout(src.info.height, src.info.width, tile, overlap, multiple)
            return point_features(net.to(device), meta, src, task.rows, task.cols, lay, device,
                                  options.batch_size or FEATURE_BATCH)


def feature_tap(net: nn.Module) -> str:
    """The feature map read at the points: the features entering the segmentation head (the
    decoder's output at the pixel's own scale), or the deepest encoder stage for a model
    without a head. Not the bottleneck where there is a head: at stride 16–32 it describes a
    neighbourhood (0.5–1 km of Landsat), not the pixel; on the NC scene its distances did not
    set water apart from the other classes, the decoder's did (docs/active_learning.md)."""
    return "decoder" if parts.decoder_features(net) is not None else "bottleneck"


def feature_map(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """:func:`feature_tap`'s map ``(B, C, h, w)`` for input ``x`` ``(B, bands, H, W)``."""
    tap = feature_tap(net)
    if tap == "bottleneck":
        return parts.encoder(net)(x)[-1]
    with capture(net, [tap]) as taps:
        net(x)
    return taps[tap]


@torch.inference_mode()
def point_features(net: nn.Module, meta: BundleMeta, scene: Scene, rows: np.ndarray,
                   cols: np.ndarray, lay: Layout, device: torch.device,
                   batch_size: int) -> np.ndarray:
    """``(N, D)`` float32 features of the model at pixels ``(rows, cols)`` of ``scene``.

    Each pixel is read in the layout window whose centre is nearest (windows run once each, in
    batches, their input prepared as the predictor prepares it), and its feature is the
    bilinear sample of :func:`feature_tap`'s map at the pixel centre.
    """
    win_r = np.abs(rows[:, None] + 0.5 - (np.asarray(lay.rows) + lay.win_h / 2)).argmin(1)
    win_c = np.abs(cols[:, None] + 0.5 - (np.asarray(lay.cols) + lay.win_w / 2)).argmin(1)
    windows = sorted(set(zip(win_r.tolist(), win_c.tolist(), strict=True)))  # row-major
    reader = RowBandReader(scene)
    out: np.ndarray | None = None
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        pixels = np.stack([reader.read(Window(lay.cols[c], lay.rows[r], lay.win_w, lay.win_h))
                           for r, c in chunk])
        missing = scene.band_missing(pixels)
        for b, (r, c) in enumerate(chunk):  # padding of a scene smaller than a window
            missing[b, :, lay.height - lay.rows[r]:] = True
            missing[b, :, :, lay.width - lay.cols[c]:] = True
        x = meta.normalise(pixels)
        if np.issubdtype(pixels.dtype, np.floating):
            x[~np.isfinite(x)] = 0
        np.copyto(x, np.float32(0), where=missing)
        fmap = feature_map(net, torch.from_numpy(x).to(device)).float()
        for b, (r, c) in enumerate(chunk):
            sel = np.flatnonzero((win_r == r) & (win_c == c))
            gx = (cols[sel] - lay.cols[c] + 0.5) / lay.win_w * 2 - 1
            gy = (rows[sel] - lay.rows[r] + 0.5) / lay.win_h * 2 - 1
            grid = torch.from_numpy(np.stack([gx, gy], 1).astype(np.float32))[None, None]
            sample = F.grid_sample(fmap[b:b + 1], grid.to(fmap.device), mode="bilinear",
                                   align_corners=False)[0, :, 0].T.cpu().numpy()
            if out is None:
                out = np.zeros((len(rows), sample.shape[1]), np.float32)
            out[sel] = sample
    return out if out is not None else np.zeros((0, 1), np.float32)


# --- the command: label files in, GeoPackage + style out ---------------------------------------

def labelled_mask(files: Sequence[Path], column: str, info: SceneInfo) -> np.ndarray:
    """``(H, W)`` bool: the pixels of ``info``'s grid that ``files`` label (vector rows with a
    value in ``column``, rasterized as finetune does; label rasters on the scene grid)."""
    mask = np.zeros((info.height, info.width), dtype=bool)
    for path in files:
        if path.suffix.lower() in VECTOR_SUFFIXES:
            layer = read_vector(path, column, info.crs)
            has = (~np.isnan(layer.values) if layer.numeric
                   else np.array([v is not None for v in layer.values], dtype=bool))
            inside = intersects_scene(layer.geometries, info) & has
            mask |= burn_feature_index(np.where(inside, layer.geometries, None), info) >= 0
        else:
            mask |= read_label_raster(path, info).labels != IGNORE
    return mask


def suggest(scenes: Sequence[str | Path], model: str | Path, out: str | Path,
            options: SuggestOptions = SuggestOptions(),
            notify: Callable[[str], None] | None = None) -> SuggestSummary:
    """Write ``out`` (GeoPackage) and its ``.qml``: the points to label, see the module doc.

    Outputs, scenes, label files and the bundle's bands are checked before any pixel is read;
    whatever fails, nothing appears at ``out``.
    """
    start = time.perf_counter()
    check_suggest_options(options)
    out = check_output(out, options.overwrite, file=True)
    if out.suffix.lower() != ".gpkg":
        raise ConfigError(f"--out {out}: points for QGIS are written as a GeoPackage",
                          "name it .gpkg")
    style = check_output(qml_path(out), options.overwrite)
    if options.label_column in FIELDS:
        raise ConfigError(f"--label-column {options.label_column!r} is also a column rsseg "
                          f"writes ({', '.join(FIELDS)})", "choose another name")
    paths = [s.path for s in expand_scenes(scenes)]
    infos = _headers(paths, options.nodata)
    meta = read_meta(model)
    columns = _label_columns(options, infos)
    picked = suggest_points(paths, model, options,
                            labelled=partial(labelled_mask, options.labels,
                                             options.label_column) if options.labels else None,
                            notify=notify)
    numeric = bool(columns) and columns[0].numeric
    points = picked.points
    xs, ys = np.zeros(len(points)), np.zeros(len(points))
    for i, info in enumerate(picked.scenes):
        sel = points.scene == i
        xs[sel], ys[sel] = info.transform * (points.col[sel] + 0.5, points.row[sel] + 0.5)
    names = picked.class_names()
    attributes = {"predicted": names,
                  "confidence": np.round(points.confidence.astype(np.float64), 4),
                  "uncertainty": np.round(points.uncertainty.astype(np.float64), 4),
                  "rank": np.arange(1, len(points) + 1, dtype=np.int32),
                  "scene": [paths[int(i)].name for i in points.scene]}
    classes = meta.class_table()
    text = points_qml([(c.name, c.color) for c in classes.classes],
                      _choices(classes, columns, numeric), options.label_column,
                      [options.label_column, *FIELDS])
    with publishing() as pub:
        staged = pub.stage(out, options.overwrite, primary=True)
        write_points(staged, xs, ys, options.label_column, numeric, attributes, infos[0].crs,
                     out.stem)
        pub.write(style, text, options.overwrite)
    return SuggestSummary(out, style, len(points), dict(Counter(names)), picked.eligible,
                          len(paths), time.perf_counter() - start)


def _headers(paths: Sequence[Path], nodata: float | None) -> list[SceneInfo]:
    """The scenes' headers; one layer needs one CRS, and pixel coordinates one image."""
    infos = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoGeoreferencing)  # said by the pass over the scene
        for path in paths:
            with open_scene(path, nodata=nodata) as src:
                infos.append(src.info)
    plain = [i.path.name for i in infos if not i.georeferenced]
    if plain and len(infos) > 1:
        raise InputError(f"{plain[0]} has no georeferencing and {len(infos)} scenes were given: "
                         "pixel coordinates of different images would overlap in one layer",
                         "run rsseg suggest once per image")
    crs = {str(i.crs) for i in infos}
    if len(crs) > 1:
        raise InputError(f"the scenes are in {len(crs)} different CRSs ({', '.join(sorted(crs))})"
                         ": one layer has one CRS", "run rsseg suggest once per CRS")
    return infos


def _label_columns(options: SuggestOptions, infos: Sequence[SceneInfo]) -> list[LabelColumn]:
    """The class columns of the vector label files (checked), warning where they are
    reprojected; label rasters must exist (their grid is checked per scene)."""
    columns = []
    for path in options.labels:
        if path.suffix.lower() not in VECTOR_SUFFIXES:
            if not path.exists():
                raise InputError(f"{path}: no such file", "check --labels")
            continue
        column = read_label_column(path, options.label_column)
        scene_crs = infos[0].crs
        if column.crs is not None and scene_crs is not None \
                and not same_crs(column.crs, scene_crs):
            warnings.warn(f"{path.name}: labels in {crs_name(column.crs)}, reprojected to the "
                          f"scenes' CRS {crs_name(scene_crs.to_wkt())}", UserWarning,
                          stacklevel=3)
        columns.append(column)
    kinds = {c.numeric for c in columns}
    if len(kinds) > 1:
        raise InputError(f"--labels: column {options.label_column!r} holds class ids in some "
                         "files and names in others", "give label files of one kind")
    return columns


def _choices(classes: ClassTable, columns: Sequence[LabelColumn], numeric: bool
             ) -> dict[str, str]:
    """The label drop-down, shown name → stored value: the model's classes, then any other
    class the label files hold."""
    if numeric:
        ids = {c.id: c.name for c in classes.classes}
        for column in columns:
            for value in column.values:
                ids.setdefault(int(value), f"class {value}")
        return {name: str(i) for i, name in sorted(ids.items())}
    names = list(classes.names)
    names += sorted({str(v) for c in columns for v in c.values} - set(names))
    return {name: name for name in names}
