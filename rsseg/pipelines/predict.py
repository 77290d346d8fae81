"""``rsseg predict``: a scene + a model bundle → a georeferenced class raster (COG).

The checks of flags, output, bundle and scene run before any pixel is predicted. The scene streams
through :class:`~rsseg.inference.sliding.SlidingWindowPredictor` one band of rows at a time (the
model run as :mod:`rsseg.inference.runtime` chooses: backend, precision, threads, device); each
finished band becomes uint8 class ids (``nodata_id`` where the input is nodata) and goes, in a
background writer thread, to the streaming :func:`~rsseg.io.writer.class_raster_writer` (COG +
QGIS/GDAL class sidecars) and, when asked, to the optional outputs of
:mod:`rsseg.pipelines.outputs` (confidence, probabilities, polygons, quicklook); all of them are
published together, atomically.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from rsseg.errors import ConfigError, InputError
from rsseg.inference.background import BackgroundWorker
from rsseg.inference.device import resolve_device
from rsseg.inference.memory import (
    DEFAULT_MAX_MEMORY,
    activation_bytes_per_pixel,
    auto_tile,
    format_bytes,
    parse_memory,
    window_work,
)
from rsseg.inference.runtime import (
    CPU_BATCH,
    RuntimeOptions,
    auto_batch_size,
    build_runner,
    check_runtime,
    torch_threads,
)
from rsseg.inference.sliding import RowBand, Seam, SlidingWindowPredictor, sample_windows
from rsseg.io.atomic import check_output
from rsseg.io.publish import publishing
from rsseg.io.raster import Scene, open_scene
from rsseg.io.writer import bounded_gdal_cache, class_raster_writer
from rsseg.models.bundle import BundleMeta, load_bundle
from rsseg.models.factory import required_multiple
from rsseg.pipelines.outputs import OutputOptions, check_outputs, extra_outputs
from rsseg.pipelines.radiometry import check_radiometry
from rsseg.pipelines.vectorize import VectorSummary
from rsseg.regularizers.multidomain import domain_bundle
from rsseg.tiling.blend import Layout, layout

Progress = Callable[[int, int], None]
"""Called as ``progress(pixels_done, pixels_total)`` after each finished band of rows."""
Notify = Callable[[str], None]
"""Called with one line saying a choice made for the user (``--tile auto``, int8's check)."""


@dataclass(frozen=True)
class PredictOptions:
    """Flags of ``rsseg predict``; ``tile`` ``"auto"`` (or None) is the largest window whose
    activations fit ``max_memory`` bytes (:mod:`rsseg.inference.memory`) in a batch of
    ``batch_size`` windows (None: 2), ``overlap`` None the bundle's, ``batch_size`` None is 2 on
    CPU (small batches stay in cache: fastest measured), one window where two would exceed 2 x
    512² pixels (:func:`~rsseg.inference.runtime.auto_batch_size`: same predictions, half the
    activations), and what fits the card on a GPU."""

    tile: int | str | None = "auto"
    max_memory: int | str = DEFAULT_MAX_MEMORY  # --max-memory: bytes, or "1G", "512M"
    overlap: int | None = None
    batch_size: int | None = None
    nodata: float | None = None
    device: str = "auto"
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)  # --backend, --precision...
    overwrite: bool = False
    outputs: OutputOptions = field(default_factory=OutputOptions)  # --confidence, --vector...
    domain: str | None = None  # multi-domain bundle: the domain to predict (multidomain)


@dataclass(frozen=True)
class PredictSummary:
    out: Path
    width: int
    height: int
    windows: int
    seconds: float  # prediction and writing, model loading excluded
    outputs: tuple[Path, ...] = ()  # every file written, the class raster and its sidecars first
    vector: VectorSummary | None = None
    batch_size: int = 8  # windows per model call, as chosen
    tile: int = 0  # window side, as chosen

    @property
    def mpx_per_s(self) -> float:
        return self.width * self.height / 1e6 / self.seconds


def predict_scene(scene: str | Path, model: str | Path, out: str | Path,
                  options: PredictOptions = PredictOptions(),
                  progress: Progress | None = None,
                  loader: Callable[[Path], tuple[nn.Module, BundleMeta]] = load_bundle,
                  notify: Notify | None = None) -> PredictSummary:
    """Predict ``scene`` with the bundle ``model`` into the class raster ``out``; ``loader``
    loads the bundle (a batch passes one that keeps it loaded from scene to scene); ``notify``
    receives the lines saying the window chosen by ``--tile auto`` and int8's agreement.

    Raises InputError/ConfigError/OutputError (one line each) for bad input; flags, output, bundle
    and scene header are checked before predicting. Whatever fails, nothing appears at ``out``.
    """
    out = check_output(out, options.overwrite, file=True)
    model = domain_bundle(model, options.domain)  # --domain NAME (multidomain runs)
    net, meta = loader(model)
    check_outputs(options.outputs, out, Path(scene), meta, options.overwrite)
    device = resolve_device(options.device)
    check_runtime(options.runtime, device)
    with torch_threads(options.runtime.threads), bounded_gdal_cache(), \
            open_scene(scene, nodata=options.nodata) as src:
        src = _in_model_band_order(src, meta, Path(model))
        check_radiometry(src, meta)
        info, classes = src.info, meta.class_table()
        tile, overlap, multiple, choice = predict_windows(meta, options, info.height, info.width)
        if choice and notify:
            notify(choice)
        lay = layout(info.height, info.width, tile, overlap, multiple)
        runner = build_runner(net, meta, Path(model), device, options.runtime,
                              (lay.win_h, lay.win_w), lambda: sample_windows(src, lay,
                                                                              meta.normalise))
        if getattr(runner, "note", None) and notify:
            notify(runner.note)
        batch_size = options.batch_size or auto_batch_size(
            runner, device, (len(meta.bands), lay.win_h, lay.win_w), lay.count)
        predictor = SlidingWindowPredictor(runner, meta.normalise, meta.model.classes, tile,
                                           overlap, multiple, batch_size)
        class_ids = np.asarray(classes.ids, dtype=np.uint8)
        start = time.perf_counter()
        with publishing() as pub, \
                class_raster_writer(out, info, classes, meta.nodata_id, options.overwrite,
                                    pub) as writer, \
                extra_outputs(options.outputs, src, meta, pub, options.overwrite) as extras:

            def finish(band: RowBand) -> None:  # runs in the writer thread
                ids = class_raster(band, class_ids, meta.nodata_id)
                writer.write(band.row, ids)
                extras.add(band, ids)
                if progress:
                    progress(writer.next_row * info.width, info.width * info.height)

            with BackgroundWorker(depth=2) as background:
                for band in predictor.bands(src):
                    background.submit(finish, band)
                    del band  # written, it is freed: not held through the next forward pass
        seconds = time.perf_counter() - start
    return PredictSummary(out, info.width, info.height, lay.count, seconds, tuple(pub.outputs),
                          extras.vector_summary, batch_size, tile)


@dataclass(frozen=True)
class StripPrediction:
    """One strip of a scene split over workers: the class ids of the rows only its windows
    touch, and the seams it shares with the strips above and below (None for the first/last),
    joined by the process that assembles the scene (:func:`strip_rows`)."""

    row: int  # first scene row of ids
    ids: np.ndarray  # (h, W) uint8 class ids
    above: Seam | None
    below: Seam | None


def predict_strip(scene: str | Path, model: str | Path, options: PredictOptions,
                  window_rows: range,
                  loader: Callable[[Path], tuple[nn.Module, BundleMeta]] = load_bundle
                  ) -> StripPrediction:
    """The strip of the layout's ``window_rows`` (:func:`~rsseg.inference.sliding.strips`):
    one task of a scene split over workers; with its neighbours, equal to
    :func:`predict_scene`'s class raster (up to float32 summation order in the seams)."""
    model = domain_bundle(model, options.domain)
    net, meta = loader(model)
    device = resolve_device(options.device)
    check_runtime(options.runtime, device)
    with torch_threads(options.runtime.threads), bounded_gdal_cache(), \
            open_scene(scene, nodata=options.nodata) as src:
        src = _in_model_band_order(src, meta, Path(model))
        tile, overlap, multiple, _ = predict_windows(meta, options, src.info.height,
                                                     src.info.width)
        lay = layout(src.info.height, src.info.width, tile, overlap, multiple)
        runner = build_runner(net, meta, Path(model), device, options.runtime,
                              (lay.win_h, lay.win_w), lambda: sample_windows(src, lay,
                                                                              meta.normalise))
        batch_size = options.batch_size or auto_batch_size(
            runner, device, (len(meta.bands), lay.win_h, lay.win_w), lay.count)
        predictor = SlidingWindowPredictor(runner, meta.normalise, meta.model.classes, tile,
                                           overlap, multiple, batch_size)
        class_ids = np.asarray(meta.class_table().ids, dtype=np.uint8)
        seams: dict[bool, Seam] = {}
        parts = [np.empty((0, lay.width), dtype=np.uint8)]
        for band in predictor.strip_bands(src, window_rows):
            if isinstance(band, Seam):
                seams[band.upper] = band
            else:  # turned into class ids at once: a band's probabilities are not kept
                parts.append(class_raster(band, class_ids, meta.nodata_id))
            del band
    above = seams.get(True)
    first = lay.rows[window_rows.start] + (0 if above is None else above.weights.shape[0])
    return StripPrediction(first, np.concatenate(parts), above, seams.get(False))


def strip_rows(parts: Sequence[StripPrediction], meta: BundleMeta
               ) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, (h, W) class ids)`` of a split scene, top to bottom, from its strips in
    order: each strip's rows, the seams of neighbouring strips joined in between."""
    class_ids = np.asarray(meta.class_table().ids, dtype=np.uint8)
    for upper, lower in zip([None, *parts], parts, strict=False):
        if upper is not None and lower.above is not None:
            band = lower.above.join(upper.below)
            yield band.row, class_raster(band, class_ids, meta.nodata_id)
        yield lower.row, lower.ids


def resolve_windows(meta: BundleMeta, tile: int | None, overlap: int | None,
                    batch_size: int | None) -> tuple[int, int, int]:
    """Window side and overlap (the bundle's unless given) and the model's required multiple,
    checked (one-line error for bad values)."""
    tile = meta.tile if tile is None else tile
    overlap = meta.overlap if overlap is None else overlap
    multiple = required_multiple(meta.model)
    _check_options(tile, overlap, batch_size, multiple, meta)
    return tile, overlap, multiple


# Models whose output depends on the window's extent (ASPP image pooling: a global average over
# the window): a larger window than the training tile changes their predictions (Dubai
# DeepLabV3+ models: 3-10 mIoU points lower at --tile auto's windows, docs/label_efficiency.md).
WINDOW_DEPENDENT_ARCHS = frozenset({"deeplabv3", "deeplabv3plus"})


def predict_windows(meta: BundleMeta, options: PredictOptions, height: int, width: int
                    ) -> tuple[int, int, int, str | None]:
    """Window side, overlap, the model's required multiple and, for ``--tile auto``, the line
    saying what was chosen and why (None for a tile given in pixels); checked, one-line errors
    for bad values."""
    if options.tile not in (None, "auto"):
        return *resolve_windows(meta, _tile_pixels(options.tile), options.overlap,
                                options.batch_size), None
    overlap = meta.overlap if options.overlap is None else options.overlap
    multiple = required_multiple(meta.model)
    if meta.model.arch in WINDOW_DEPENDENT_ARCHS:
        tile = meta.tile
        _check_options(tile, overlap, options.batch_size, multiple, meta)
        return tile, overlap, multiple, (
            f"Windows of {tile}² px, overlap {overlap} (--tile auto keeps the bundle's tile for "
            f"{meta.model.arch}: its image-pooling branch averages over the whole window, so a "
            "larger window changes the predictions; --tile N overrides)")
    if overlap < 0:  # refused before any window is laid out
        _check_options(meta.tile, overlap, options.batch_size, multiple, meta)
    budget = parse_memory(options.max_memory)
    batch = options.batch_size or CPU_BATCH
    per_pixel = activation_bytes_per_pixel(meta.model, multiple)
    tile = auto_tile(per_pixel, max(1, batch), budget, multiple, meta.tile, overlap, height,
                     width, meta.model.classes)
    _check_options(tile, overlap, options.batch_size, multiple, meta)
    work = window_work(tile, overlap, multiple, height, width)
    at_bundle_tile = "" if overlap >= meta.tile else (  # an --overlap above it: no such layout
        f", {window_work(meta.tile, overlap, multiple, height, width):.2f} at the bundle's tile "
        f"{meta.tile}")
    return tile, overlap, multiple, (
        f"Windows of {tile}² px, overlap {overlap} (--tile auto: of the multiples of {multiple} "
        f"up to the largest whose batch of {batch} and blending band fit --max-memory "
        f"{format_bytes(budget)} at {format_bytes(per_pixel)} of activations per pixel, the one "
        f"computing each scene pixel the fewest times: {work:.2f}{at_bundle_tile})")


def _tile_pixels(tile: int | str) -> int:
    try:
        return int(tile)
    except ValueError:
        raise ConfigError(f"--tile {tile!r} is neither auto nor a number of pixels",
                          "use --tile auto or e.g. --tile 512") from None


def scene_layout(scene: str | Path, meta: BundleMeta, options: PredictOptions) -> Layout:
    """The window layout :func:`predict_scene` uses for ``scene`` (its header only)."""
    with open_scene(scene, nodata=options.nodata) as src:
        tile, overlap, multiple, _ = predict_windows(meta, options, src.info.height,
                                                     src.info.width)
        return layout(src.info.height, src.info.width, tile, overlap, multiple)


def class_raster(band: RowBand, class_ids: np.ndarray, nodata_id: int) -> np.ndarray:
    """``(h, W)`` uint8: the id of the most probable class, ``nodata_id`` where input is nodata."""
    ids = class_ids[argmax_channels(band.probs)]
    ids[~band.valid] = nodata_id
    return ids


def argmax_channels(probs: np.ndarray) -> np.ndarray:
    """``(K, h, W)`` → ``(h, W)`` uint8 index of the largest channel, the first one on ties.

    Same result as ``np.argmax(probs, axis=0)``, ~1.5x faster: a fast max over channels, then
    one vectorised comparison per channel (``np.argmax`` over the outer axis is strided).
    """
    best = probs.max(axis=0)
    index = np.full(best.shape, probs.shape[0] - 1, dtype=np.uint8)
    for k in range(probs.shape[0] - 2, -1, -1):
        np.copyto(index, k, where=probs[k] == best)
    return index


def _check_options(tile: int, overlap: int, batch_size: int | None, multiple: int,
                   meta: BundleMeta) -> None:
    name = f"{meta.model.arch}/{meta.model.encoder}"
    if tile < 1 or tile % multiple:
        lower = tile // multiple * multiple
        near = " or ".join(str(t) for t in (lower, lower + multiple) if t > 0) or str(meta.tile)
        raise ConfigError(f"--tile {tile} is not a positive multiple of {multiple}, which {name} "
                          "needs", f"use e.g. --tile {near}")
    if not 0 <= overlap < tile:
        raise ConfigError(f"--overlap {overlap} must be at least 0 and smaller than the tile "
                          f"({tile})", f"use e.g. --overlap {tile // 8}")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size} must be at least 1", "use e.g. 8")


def _in_model_band_order(scene: Scene, meta: BundleMeta, model: Path) -> Scene:
    """``scene`` with the model's band count, its bands reordered by name when its band
    descriptions name the model's bands in another order (with a warning); otherwise as is."""
    expected = [b.name for b in meta.bands]
    if scene.count != len(expected):
        raise InputError(f"{scene.info.path} has {scene.count} band(s) but model {model} expects "
                         f"{len(expected)} ({', '.join(expected)})",
                         "give a scene with the bands the model was trained on")
    names = list(scene.band_names)
    if names == expected or sorted(names) != sorted(expected) or len(set(names)) < len(names):
        return scene
    warnings.warn(f"{scene.info.path}: bands taken by name in the model's order "
                  f"({', '.join(expected)}), not in file order ({', '.join(names)})",
                  UserWarning, stacklevel=3)
    return Scene(scene.src, scene.info, tuple(scene.bands[names.index(n)] for n in expected))
