"""The tile-set format on disk, written by ``rsseg tile`` and read by training.

Layout of a tile-set folder::

    tiles/000000.tif ...   one lossless GeoTIFF per tile (source dtype, nodata, CRS, transform)
    manifest.csv           tile,source,col_off,row_off,width,height,nodata_fraction
    stats.json             per-band statistics of the valid pixels of all tiles (schema below)

``stats.json``::

    {"format_version": 1, "dtype": "uint16", "band_count": 3, "nodata": 0 | "nan" | null,
     "tile_size": 256, "tile_count": 120, "percentiles": "exact" | "<approximation note>",
     "bands": [{"name": "B1", "count": 123, "mean": .., "std": .., "min": .., "max": ..,
                "p2": .., "p98": ..}, ...]}

``count`` is the number of valid pixels of the band over all tiles (a source pixel in k
overlapping tiles counts k times: the statistics describe what training sees); statistics of an
empty band are null. :func:`load_tileset` also accepts a plain folder of GeoTIFF/PNG/JPEG tiles
without manifest or stats, computing the statistics in one streaming pass.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from rsseg.errors import InputError
from rsseg.io.raster import SceneInfo, open_scene
from rsseg.io.stats import RunningStats

FORMAT_VERSION = 1
MANIFEST = "manifest.csv"
STATS = "stats.json"
TILES = "tiles"
MANIFEST_COLUMNS = ("tile", "source", "col_off", "row_off", "width", "height", "nodata_fraction")
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
FLOAT_PERCENTILES = "float32 histogram: relative error <= 2**-8"


@dataclass(frozen=True)
class BandStats:
    """Statistics of one band's valid pixels; all but ``name``/``count`` None when empty."""

    name: str
    count: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    p2: float | None
    p98: float | None


@dataclass(frozen=True)
class TileSet:
    """A loaded tile set: tile paths plus what is needed to normalise them."""

    root: Path
    paths: tuple[Path, ...]
    stats: tuple[BandStats, ...]
    dtype: str
    nodata: float | None
    tile_size: int | None  # None when tiles of a plain folder differ in size or are not square

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stats)

    @property
    def band_count(self) -> int:
        return len(self.stats)

    @property
    def mean(self) -> np.ndarray:
        """Per-band mean ``(C,)`` float64 (0 for an empty band)."""
        return np.array([s.mean or 0.0 for s in self.stats])

    @property
    def std(self) -> np.ndarray:
        """Per-band std ``(C,)`` float64 (1 for an empty or constant band, safe to divide by)."""
        return np.array([s.std or 1.0 for s in self.stats])


class TileSetWriter:
    """Writes a tile set into an empty (temporary) folder; a context manager closing the manifest.

    Per tile: write the GeoTIFF at :meth:`next_path`, then :meth:`add` its manifest row. At the
    end, :meth:`write_stats`.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0
        (root / TILES).mkdir()
        self._file = open(root / MANIFEST, "w", newline="")  # noqa: SIM115 (closed in __exit__)
        self._csv = csv.writer(self._file)
        self._csv.writerow(MANIFEST_COLUMNS)

    def __enter__(self) -> TileSetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def next_path(self) -> Path:
        """Where the next tile goes: ``tiles/NNNNNN.tif``."""
        return self.root / TILES / f"{self.count:06d}.tif"

    def add(self, source: Path, window: Window, nodata_fraction: float) -> None:
        """Record the tile just written at :meth:`next_path`."""
        self._csv.writerow([self.next_path().relative_to(self.root).as_posix(),
                            str(source.resolve()), int(window.col_off), int(window.row_off),
                            int(window.width), int(window.height), f"{nodata_fraction:.6f}"])
        self.count += 1

    def write_stats(self, stats: RunningStats, band_names: tuple[str, ...],
                    nodata: float | None, tile_size: int) -> None:
        """Write ``stats.json`` (schema in the module docstring)."""
        doc = {
            "format_version": FORMAT_VERSION,
            "dtype": stats.dtype.name,
            "band_count": len(band_names),
            "nodata": _nodata_to_json(nodata),
            "tile_size": tile_size,
            "tile_count": self.count,
            "percentiles": "exact" if stats.exact_percentiles else FLOAT_PERCENTILES,
            "bands": stats.to_dicts(band_names),
        }
        (self.root / STATS).write_text(json.dumps(doc, indent=2) + "\n")


def load_tileset(root: str | Path) -> TileSet:
    """Load a tile set folder; raises :class:`InputError` when it cannot be used.

    Refused: a missing or empty folder, a folder without tiles, tiles that are missing from the
    manifest's folder, and tiles that disagree in band count, dtype or nodata (both named).
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such folder", "run `rsseg tile SCENE --out DIR` first")
    if not root.is_dir():
        raise InputError(f"{root}: is a file, not a tile folder", "give the folder of tiles")
    if not any(root.iterdir()):
        raise InputError(f"{root}: folder is empty", "run `rsseg tile SCENE --out DIR` first")
    if (root / MANIFEST).is_file() and (root / STATS).is_file():
        return _load_written(root)
    return _load_plain(root)


def _load_written(root: Path) -> TileSet:
    """A folder written by ``rsseg tile``: trust stats.json, check tiles exist and match it."""
    try:
        doc = json.loads((root / STATS).read_text())
        with open(root / MANIFEST, newline="") as f:
            paths = tuple(root / row["tile"] for row in csv.DictReader(f))
        stats = tuple(BandStats(**{k: b[k] for k in BandStats.__dataclass_fields__})
                      for b in doc["bands"])
        dtype, nodata, tile_size = doc["dtype"], _nodata_from_json(doc["nodata"]), doc["tile_size"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{root}: unreadable {MANIFEST}/{STATS} ({type(err).__name__}: {err})",
                         "re-run `rsseg tile` to rewrite the tile set") from None
    if not paths:
        raise InputError(f"{root}: {MANIFEST} lists no tiles",
                         "re-run `rsseg tile` with a higher --max-nodata")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"{root}: {len(missing)} tile(s) of {MANIFEST} are missing, "
                         f"e.g. {missing[0]}", "re-run `rsseg tile` to rewrite the tile set")
    _check_finite(root / STATS, stats)
    # every tile's header (~1 ms each): one tile with other bands would stop training later
    # with a traceback from deep inside the data loader
    with _quiet(), rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        for path in paths:
            with open_scene(path) as tile:
                _check_same(path, _signature(tile.info), root / STATS, (len(stats), dtype, nodata))
    return TileSet(root, paths, stats, dtype, nodata, tile_size)


def _check_finite(path: Path, stats: tuple[BandStats, ...]) -> None:
    """Refuse statistics that would poison training (NaN/inf mean or std), naming the bands."""
    bad = [s.name for s in stats
           if any(v is not None and not math.isfinite(v) for v in (s.mean, s.std))]
    if bad:
        raise InputError(f"{path}: band(s) {', '.join(bad)} have non-finite statistics (the "
                         "tiles hold NaN/inf values that are not nodata)",
                         "declare them nodata (rsseg tile --nodata) or fix the scene")


def _load_plain(root: Path) -> TileSet:
    """A plain folder of image tiles (each read whole): check they agree, compute statistics."""
    paths = tuple(sorted(p for p in root.rglob("*")
                         if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
    if not paths:
        raise InputError(f"{root}: no tiles ({', '.join(IMAGE_SUFFIXES)}) found",
                         "run `rsseg tile SCENE --out DIR` to make a tile set")
    sizes: set[tuple[int, int]] = set()
    with _quiet():
        with open_scene(paths[0]) as scene:
            ref, names = _signature(scene.info), scene.band_names
        stats = RunningStats(ref[0], ref[1])
        for path in paths:
            with open_scene(path) as scene:
                info = scene.info
                _check_same(path, _signature(info), paths[0], ref)
                pixels = scene.read(Window(0, 0, info.width, info.height))
                stats.update(pixels, ~scene.band_missing(pixels))
                sizes.add((info.height, info.width))
    h, w = next(iter(sizes))
    tile_size = h if len(sizes) == 1 and h == w else None
    bands = tuple(BandStats(**d) for d in stats.to_dicts(names))
    _check_finite(root, bands)
    return TileSet(root, paths, bands, stats.dtype.name, ref[2], tile_size)


def _signature(info: SceneInfo) -> tuple[int, str, float | None]:
    """What every tile of a set shares: (band count, dtype, nodata)."""
    return info.count, info.dtype, info.nodata


def _check_same(path: Path, got: tuple, other: Path, ref: tuple) -> None:
    """Raise naming both files when (band count, dtype, nodata) differ."""
    for what, a, b in zip(("band count", "dtype", "nodata"), got, ref, strict=True):
        if not _equal(a, b):
            raise InputError(f"tiles disagree in {what}: {path} has {a}, {other} has {b}",
                             "make every tile with the same bands and nodata")


def _equal(a: object, b: object) -> bool:
    both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return both_nan or a == b


@contextmanager
def _quiet() -> Iterator[None]:
    """Tiles of non-georeferenced sources carry no CRS by design: no warning per tile."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def _nodata_to_json(nodata: float | None) -> float | str | None:
    if nodata is None:
        return None
    return "nan" if math.isnan(nodata) else nodata


def _nodata_from_json(value: float | str | None) -> float | None:
    return None if value is None else float(value)
