"""``rsseg tile``: cut scenes into GeoTIFF tiles with a manifest and per-band statistics.

Each scene is streamed top to bottom through a :class:`~rsseg.io.raster.RowBandReader`: memory
holds one band of rows (never the whole scene; GDAL's block cache is capped too) and every
source block is read once, even with overlapping tiles. Grid mode covers the scene (edge rule in
:mod:`rsseg.tiling.windows`); random mode draws ``random`` windows per scene from
``(seed, scene index)``. Windows whose nodata fraction exceeds ``max_nodata`` are skipped. The
output folder appears atomically when everything succeeded. Each scene is tiled into a part
folder of the output, then its tiles are numbered in scene order; with a Dask cluster
(``--cluster``, :mod:`rsseg.distributed`) the scenes are tiled by its workers, and the tile set
is the one a single process writes.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rasterio.windows import Window

from rsseg.distributed import connect, parse_cluster, run_tasks
from rsseg.errors import InputError, OutputError
from rsseg.io.atomic import atomic_dir, check_output
from rsseg.io.owned import TILE_SET, check_replaceable
from rsseg.io.raster import (
    RowBandReader,
    SceneInfo,
    bounded_block_cache,
    open_scene,
    write_tile,
)
from rsseg.io.stats import RunningStats
from rsseg.io.tileset import TileSetWriter
from rsseg.tiling.windows import grid_windows, random_windows

Progress = Callable[[int, int], None]
"""Called as ``progress(windows_done, windows_total)`` after each window."""


@dataclass(frozen=True)
class TileOptions:
    """Flags of ``rsseg tile``; ``bands`` are 1-based, ``stride`` None means ``size``."""

    size: int = 256
    stride: int | None = None
    max_nodata: float = 0.5
    nodata: float | None = None
    bands: tuple[int, ...] | None = None
    random: int | None = None
    seed: int = 0
    overwrite: bool = False


@dataclass(frozen=True)
class TileSummary:
    out: Path
    scenes: int
    written: int
    skipped: int


@dataclass(frozen=True)
class _Plan:
    info: SceneInfo
    band_names: tuple[str, ...]
    windows: list[Window]


@dataclass(frozen=True)
class _Job:
    """Tile scene number ``index`` of ``plan`` into the part folder ``folder``."""

    index: int
    plan: _Plan
    folder: Path
    options: TileOptions


@dataclass(frozen=True)
class _Part:
    """A tiled scene: its tiles (file in the part folder, window, nodata fraction), their
    statistics and the windows skipped over ``max_nodata``."""

    tiles: list[tuple[str, Window, float]]
    stats: RunningStats
    skipped: int


_PARTS = "parts"


def tile_scenes(scenes: Sequence[str | Path], out: str | Path, options: TileOptions,
                progress: Progress | None = None, cluster: str | None = None) -> TileSummary:
    """Tile ``scenes`` into the folder ``out`` (on the Dask ``cluster``, ``--cluster``, when
    given); raises InputError/OutputError on bad input."""
    _check_options(options)
    spec = parse_cluster(cluster)
    out = check_output(out, options.overwrite)
    if out.exists():
        check_replaceable(out, TILE_SET, scenes)
    plans = _plan([Path(s) for s in scenes], options)
    try:
        with connect(spec) if spec else nullcontext() as client, \
                atomic_dir(out, options.overwrite, TILE_SET, scenes) as tmp, bounded_block_cache():
            written, skipped = _write(tmp, plans, options, progress, client)
    except OSError as err:
        raise OutputError(f"cannot write {out} ({err.strerror or err})",
                          "choose another --out or fix its permissions") from None
    return TileSummary(out, len(plans), written, skipped)


def _check_options(o: TileOptions) -> None:
    if o.size < 1:
        raise InputError(f"--size must be at least 1, got {o.size}", "pass e.g. --size 256")
    stride = o.size if o.stride is None else o.stride
    if not 1 <= stride <= o.size:
        raise InputError(f"--stride {stride} is not in 1..{o.size} (the tile size)",
                         "pass a stride from 1 to --size; below --size tiles overlap")
    if not 0 <= o.max_nodata <= 1:
        raise InputError(f"--max-nodata {o.max_nodata} is not a fraction in 0..1",
                         "pass e.g. --max-nodata 0.5")
    if o.random is not None and o.random < 1:
        raise InputError(f"--random {o.random} must be at least 1", "pass e.g. --random 100")


def _plan(paths: list[Path], o: TileOptions) -> list[_Plan]:
    """Open every scene once to validate it and list its windows, before writing anything."""
    plans: list[_Plan] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # warned again, once, while tiling
        for index, path in enumerate(paths):
            with open_scene(path, nodata=o.nodata, bands=o.bands) as scene:
                plan = _Plan(scene.info, scene.band_names, _windows(scene.info, index, o))
            if plans:
                _check_compatible(plans[0], plan)
            plans.append(plan)
    return plans


def _windows(info: SceneInfo, index: int, o: TileOptions) -> list[Window]:
    if (info.width < o.size or info.height < o.size) and info.nodata is None:
        raise InputError(f"{info.path} ({info.width}x{info.height} px) is smaller than --size "
                         f"{o.size} and declares no nodata to pad tiles with",
                         f"pass --nodata VALUE or --size {min(info.width, info.height)}")
    if o.random is not None:
        return random_windows(info.width, info.height, o.size, o.random, (o.seed, index))
    return grid_windows(info.width, info.height, o.size, o.stride or o.size)


def _check_compatible(first: _Plan, plan: _Plan) -> None:
    """Scenes of one tile set share band count, dtype and nodata; name both when not."""
    a, b = first.info, plan.info
    if len(first.band_names) != len(plan.band_names):
        raise InputError(f"scenes differ in band count: {a.path} has {len(first.band_names)}, "
                         f"{b.path} has {len(plan.band_names)}",
                         "tile them separately or pick common --bands")
    if a.dtype != b.dtype:
        raise InputError(f"scenes differ in dtype: {a.path} is {a.dtype}, {b.path} is {b.dtype}",
                         "tile them separately")
    same_nodata = a.nodata == b.nodata or (a.nodata != a.nodata and b.nodata != b.nodata)
    if not same_nodata:
        raise InputError(f"scenes differ in nodata: {a.path} has {a.nodata}, "
                         f"{b.path} has {b.nodata}", "pass --nodata VALUE to use one for all")


def _write(root: Path, plans: list[_Plan], o: TileOptions, progress: Progress | None,
           client: Any | None = None) -> tuple[int, int]:
    total = sum(len(p.windows) for p in plans)
    first = plans[0]
    stats = RunningStats(len(first.band_names), first.info.dtype)
    done = skipped = 0

    def advance(windows: int) -> None:
        nonlocal done
        done += windows
        if progress:
            progress(done, total)

    jobs = [_Job(i, plan, root / _PARTS / str(i), o) for i, plan in enumerate(plans)]
    with TileSetWriter(root) as writer:
        for job, part in _parts(jobs, client, advance):
            for name, window, nodata_fraction in part.tiles:
                os.replace(job.folder / name, writer.next_path())
                writer.add(job.plan.info.path, window, nodata_fraction)
            job.folder.rmdir()
            stats.merge(part.stats)
            skipped += part.skipped
        (root / _PARTS).rmdir()
        if writer.count == 0:
            small = [p.info for p in plans if min(p.info.width, p.info.height) < o.size]
            if len(small) == len(plans):
                side = max(min(i.width, i.height) for i in small)
                what = (f"{small[0].path} ({small[0].width}x{small[0].height} px) is"
                        if len(small) == 1 else "every scene is")
                raise InputError(f"no tiles written: {what} smaller than --size {o.size}, so "
                                 f"each tile is mostly nodata padding (over --max-nodata "
                                 f"{o.max_nodata:g})", f"pass --size {side} or smaller")
            raise InputError(f"no tiles written: all {skipped} windows have more than "
                             f"{o.max_nodata:g} nodata", "raise --max-nodata or check --nodata")
        writer.write_stats(stats, first.band_names, first.info.nodata, o.size)
    return writer.count, skipped


def _parts(jobs: list[_Job], client: Any | None,
           advance: Callable[[int], None]) -> Iterator[tuple[_Job, _Part]]:
    """Every job with its part, in scene order: tiled here (progress per window) or by the
    cluster's workers (progress per scene)."""
    if client is None:
        for job in jobs:
            yield job, _tile_scene(job, advance)
        return
    ready: dict[int, tuple[_Job, _Part]] = {}  # finished before the scenes listed earlier
    following = 0
    for job, part in run_tasks(_tile_scene, jobs, client):
        if isinstance(part, Exception):  # its workers kept dying
            raise InputError(f"{job.plan.info.path}: the worker tiling it died ({part})",
                             "check the workers' memory, then rerun")
        advance(len(job.plan.windows))
        ready[job.index] = (job, part)
        while following in ready:
            yield ready.pop(following)
            following += 1


def _tile_scene(job: _Job, advance: Callable[[int], None] | None = None) -> _Part:
    """Write the tiles of ``job``'s scene into its part folder (here or on a Dask worker)."""
    o, plan = job.options, job.plan
    job.folder.mkdir(parents=True, exist_ok=True)  # exists when a dead worker began it
    stats = RunningStats(len(plan.band_names), plan.info.dtype)
    tiles: list[tuple[str, Window, float]] = []
    skipped = 0
    with bounded_block_cache(), open_scene(plan.info.path, nodata=o.nodata, bands=o.bands) as scene:
        reader = RowBandReader(scene)
        for window in plan.windows:
            pixels = reader.read(window)
            valid = scene.valid_mask(pixels)
            nodata_fraction = 1.0 - float(valid.mean())
            if nodata_fraction > o.max_nodata:
                skipped += 1
            else:
                name = f"{len(tiles):06d}.tif"
                write_tile(job.folder / name, pixels, scene, window)
                tiles.append((name, window, nodata_fraction))
                stats.update(pixels, ~scene.band_missing(pixels))
            if advance:
                advance(1)
    return _Part(tiles, stats, skipped)
