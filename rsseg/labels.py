"""Sparse labels in every form, all turned into one thing: :class:`SparseLabels`.

Forms: a label raster on the scene grid (an ignore value marks unlabelled pixels); vector points,
lines or polygons with a class column, rasterized onto the scene grid; a tile folder
(``images/`` + ``labels/`` with matching stems) where only some tiles have masks.

Class ids are the values written in label and prediction rasters (0..254); 255 marks unlabelled
pixels in every array this module returns.

Training sources (:class:`LabelSources`, :func:`training_domains`): the labelled rasters of a
fine-tuning run as class *indexes*, split into train and validation (spatial blocks of a scene,
or whole tiles/groups of a tile folder), with the class table and the band normalisation.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from rsseg.classes import (
    IGNORE,
    MAX_ID,
    ClassInfo,
    ClassTable,
    default_color,
    raster_classes,
    read_classes,
)
from rsseg.config import DomainSource, FinetuneConfig
from rsseg.errors import ConfigError, InputError, UsageError
from rsseg.grid import check_same_grid
from rsseg.io.raster import SceneInfo, open_scene
from rsseg.io.stats import scene_band_stats
from rsseg.io.vector import burn_feature_index, intersects_scene, read_vector
from rsseg.models.bundle import BandNorm

VECTOR_SUFFIXES = (".gpkg", ".shp", ".geojson", ".json", ".fgb", ".gml", ".kml", ".sqlite")
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
MASK_SUFFIXES = (".tif", ".tiff", ".png")


@dataclass(frozen=True)
class SparseLabels:
    """``labels``: ``(H, W)`` uint8 class ids on the scene grid, 255 (:data:`IGNORE`) unlabelled."""

    labels: np.ndarray
    classes: ClassTable

    @property
    def labelled(self) -> int:
        """Number of labelled pixels."""
        return int(np.count_nonzero(self.labels != IGNORE))

    def counts(self) -> dict[int, int]:
        """Labelled pixels per class id (classes without pixels included, as 0)."""
        hist = np.bincount(self.labels.ravel(), minlength=256)
        return {i: int(hist[i]) for i in self.classes.ids}


def load_labels(path: str | Path, scene: SceneInfo, column: str | None = None,
                ignore: float | None = None, classes: ClassTable | None = None) -> SparseLabels:
    """Labels for ``scene`` from a label raster or (with ``column``) a vector file."""
    path = Path(path)
    if column is not None:
        return read_vector_labels(path, column, scene, classes)
    if path.suffix.lower() in VECTOR_SUFFIXES:
        raise InputError(f"{path}: vector labels need a class column", "pass --label-column COL")
    return read_label_raster(path, scene, ignore, classes)


def load_label_files(paths: Sequence[str | Path], scene: SceneInfo, column: str | None = None,
                     ignore: float | None = None, classes: ClassTable | None = None
                     ) -> SparseLabels:
    """Labels for ``scene`` from several files: label rasters and (with ``column``) vector files,
    told apart by suffix; where two label one pixel the later file wins (with a warning).

    Without ``classes`` the files' classes are joined (:func:`_joint_classes`). A file with no
    labelled pixel in the scene is skipped as long as another has some.
    """
    paths = [Path(p) for p in paths]
    if len(paths) == 1:
        return load_labels(paths[0], scene, column, ignore, classes)
    table = classes or _joint_classes(paths, scene, column, ignore)
    merged = np.full((scene.height, scene.width), IGNORE, dtype=np.uint8)
    for path in paths:
        if path.suffix.lower() in VECTOR_SUFFIXES and column is not None:
            labels = read_vector_labels(path, column, scene, table, required=False).labels
        else:
            labels = load_labels(path, scene, None, ignore, table).labels
        mine = labels != IGNORE
        differ = int((mine & (merged != IGNORE) & (merged != labels)).sum())
        if differ:
            warnings.warn(f"{path.name}: {differ} pixel(s) labelled otherwise by an earlier "
                          f"--labels file; {path.name}'s class kept", UserWarning, stacklevel=2)
        np.copyto(merged, labels, where=mine)
    if not np.any(merged != IGNORE):
        raise InputError(f"no labelled pixel inside {scene.path.name} in any of the "
                         f"{len(paths)} label files", "check the labels' extent and CRS")
    return SparseLabels(merged, table)


def _joint_classes(paths: Sequence[Path], scene: SceneInfo, column: str | None,
                   ignore: float | None) -> ClassTable:
    """The classes of several label files: ids of rasters and numeric columns as found (named
    as their files name them), class names matched to those names, other names numbered after
    the largest id (names only: 1.. in sorted order, as for one file)."""
    found: dict[int, ClassInfo] = {}
    names: set[str] = set()
    with warnings.catch_warnings():  # each file warns once, when it is read for its labels
        warnings.simplefilter("ignore")
        for path in paths:
            if path.suffix.lower() in VECTOR_SUFFIXES and column is not None:
                layer = read_vector(path, column, scene.crs)
                if layer.numeric:
                    ids = _feature_ids(layer.values, True, None, path, column)[1]
                    for c in ids.classes:
                        found.setdefault(c.id, c)
                else:
                    names |= {v for v in layer.values if v is not None}
            else:
                for c in load_labels(path, scene, None, ignore).classes.classes:
                    found.setdefault(c.id, c)
    known = {c.name for c in found.values()}
    new = sorted(names - known)
    start = max(found, default=0) + 1
    for i, name in enumerate(new, start=start):
        found[i] = ClassInfo(i, name, default_color(i))
    if found and max(found) > MAX_ID:
        raise InputError(f"{len(new)} class names and ids up to {start - 1} do not fit in class "
                         f"ids 0..{MAX_ID}", "give a classes file (--classes)")
    return ClassTable(tuple(found[i] for i in sorted(found)))


def read_label_raster(path: str | Path, scene: SceneInfo, ignore: float | None = None,
                      classes: ClassTable | None = None) -> SparseLabels:
    """A label raster on ``scene``'s grid; ``ignore`` defaults to its nodata, else 255.

    Classes: ``classes`` if given (every id in the raster must be in it), else the names the
    raster carries (:func:`rsseg.classes.raster_classes`), else ``class <id>`` per id found.
    """
    labels, carried = _read_mask(Path(path), ignore, scene)
    found = np.flatnonzero(np.bincount(labels.ravel(), minlength=256)[:IGNORE])
    if not found.size:
        raise InputError(f"{path}: no labelled pixel (every pixel is the ignore value)",
                         "check the file or pass the right ignore value (--nodata)")
    return SparseLabels(labels, _table_for(found, classes or carried, path))


def _read_mask(path: Path, ignore: float | None, grid: SceneInfo | None,
               ) -> tuple[np.ndarray, ClassTable | None]:
    """Band 1 as uint8 ids with 255 where unlabelled, and the classes the file carries.

    Unlabelled: the ignore value (default: the file's nodata), NaN, and 255 always. A mask
    without georeferencing only has to match ``grid``'s size.
    """
    with open_scene(path, nodata=ignore) as mask:
        info = mask.info
        if info.count != 1:
            raise InputError(f"{path}: a label raster has one band of class ids, this has "
                             f"{info.count}", "give a single-band label raster")
        if grid is not None and (info.georeferenced or
                                 (grid.width, grid.height) != (info.width, info.height)):
            check_same_grid(grid, info, "resample the labels onto the scene grid first")
        pixels = mask.read(Window(0, 0, info.width, info.height))
        valid = mask.valid_mask(pixels) & (pixels[0] != IGNORE)
        carried = raster_classes(mask)
    values = pixels[0][valid]
    bad = values[(values < 0) | (values > MAX_ID) | (values != np.round(values))]
    if bad.size:
        raise InputError(f"{path}: value {bad[0]:g} is not a class id (ids are whole numbers "
                         f"0..{MAX_ID})", "pass the unlabelled value with --nodata")
    labels = np.full(valid.shape, IGNORE, dtype=np.uint8)
    labels[valid] = values.astype(np.uint8)
    return labels, carried


def _table_for(found: np.ndarray, classes: ClassTable | None, source: Path) -> ClassTable:
    if classes is None:
        return ClassTable.from_ids(int(i) for i in found)
    unknown = sorted(set(found.tolist()) - set(classes.ids))
    if unknown:
        raise InputError(f"{source}: class id(s) {unknown} are not in the classes table "
                         f"(ids {list(classes.ids)})", "add them to the classes file")
    return classes


def read_vector_labels(path: str | Path, column: str, scene: SceneInfo,
                       classes: ClassTable | None = None, required: bool = True) -> SparseLabels:
    """Rasterize labelled points/lines/polygons onto ``scene``'s grid (later features win).

    Class ids: a numeric column holds ids (names from ``classes`` or ``class <id>``); a text
    column holds names, matched to ``classes`` or, without it, numbered 1.. in sorted order.
    Rows without a label (e.g. points of ``rsseg suggest`` not labelled yet), features outside
    the scene, without geometry or covering no pixel centre are skipped with a warning counting
    them; no labelled pixel at all is an error when ``required``.
    """
    layer = read_vector(path, column, scene.crs)
    ids, table = _feature_ids(layer.values, layer.numeric, classes, Path(path), column)
    n = len(ids)
    shaped = np.array([g is not None and not g.is_empty for g in layer.geometries], dtype=bool)
    usable = shaped & (ids >= 0)
    inside = intersects_scene(layer.geometries, scene) & usable
    index = burn_feature_index(np.where(inside, layer.geometries, None), scene)
    burned = np.bincount(index[index >= 0], minlength=n)
    _warn_skipped(Path(path), n, ids < 0, shaped, usable, inside, burned)
    lut = np.append(ids, IGNORE).astype(np.uint8)  # index -1 → IGNORE
    labels = lut[index]
    if required and not np.any(labels != IGNORE):
        raise InputError(f"{path}: no labelled pixel inside the scene ({int(inside.sum())} of {n} "
                         "features touch it)", "check the labels' extent and CRS against the scene")
    return SparseLabels(labels, table)


def _feature_ids(values: np.ndarray, numeric: bool, classes: ClassTable | None, path: Path,
                 column: str) -> tuple[np.ndarray, ClassTable]:
    """Class id per feature (-1 where the value is missing) and the class table."""
    if numeric:
        known = ~np.isnan(values)
        bad = values[known & ((values < 0) | (values > MAX_ID) | (values != np.round(values)))]
        if bad.size:
            raise InputError(f"{path}: column {column!r} value {bad[0]:g} is not a class id "
                             f"(whole numbers 0..{MAX_ID})", "use a column of class ids or names")
        ids = np.where(known, values, -1).astype(np.int64)
        found = np.unique(ids[known])
        return ids, _table_for(found, classes, path)
    names = sorted({v for v in values if v is not None})
    if classes is None:
        classes = ClassTable.from_ids(range(1, len(names) + 1), dict(enumerate(names, 1)))
    lookup = classes.id_of_name()
    unknown = [v for v in names if v not in lookup]
    if unknown:
        raise InputError(f"{path}: class name(s) {unknown} are not in the classes table "
                         f"({', '.join(classes.names)})", "add them to the classes file")
    return np.array([lookup[v] if v is not None else -1 for v in values], dtype=np.int64), classes


def _warn_skipped(path: Path, n: int, unlabelled: np.ndarray, shaped: np.ndarray,
                  usable: np.ndarray, inside: np.ndarray, burned: np.ndarray) -> None:
    no_label = int(unlabelled.sum())
    no_geometry = int((~shaped & ~unlabelled).sum())
    outside = int((usable & ~inside).sum())
    unburned = int((inside & (burned == 0)).sum())
    if no_label:
        warnings.warn(f"{path.name}: {no_label} of {n} rows have no label; skipped",
                      UserWarning, stacklevel=3)
    if no_geometry:
        warnings.warn(f"{path.name}: {no_geometry} of {n} features have no geometry; skipped",
                      UserWarning, stacklevel=3)
    if outside:
        warnings.warn(f"{path.name}: {outside} of {n} features fall outside the scene; skipped",
                      UserWarning, stacklevel=3)
    if unburned:
        warnings.warn(f"{path.name}: {unburned} features inside the scene cover no pixel centre "
                      "(smaller than a pixel, or covered by later features)", UserWarning,
                      stacklevel=3)


# --- tile folders ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tile:
    """An image tile and its mask (None where the tile is unlabelled)."""

    image: Path
    mask: Path | None

    @property
    def stem(self) -> str:
        return self.image.stem


@dataclass(frozen=True)
class TileSet:
    """A tile folder after choosing the labelled subset.

    ``labelled``: tiles whose masks are used; ``unlabelled``: every other image (tiles without a
    mask and labelled tiles left out by ``label_fraction``), e.g. for pretraining.
    """

    labelled: tuple[Tile, ...]
    unlabelled: tuple[Tile, ...]
    classes: ClassTable


def scan_tiles(folder: str | Path) -> list[Tile]:
    """Tiles of ``folder/images`` paired by stem with ``folder/labels`` masks, sorted by stem."""
    folder = Path(folder)
    images_dir, masks_dir = folder / "images", folder / "labels"
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder", "check the --tiles path")
    if not images_dir.is_dir():
        raise InputError(f"{folder}: no images/ subfolder",
                         "lay tiles out as images/NAME.tif and labels/NAME.png")
    images = {p.stem: p for p in sorted(images_dir.iterdir())
              if p.suffix.lower() in IMAGE_SUFFIXES}
    if not images:
        raise InputError(f"{images_dir}: no image tiles ({', '.join(IMAGE_SUFFIXES)})",
                         "check the folder")
    masks = {p.stem: p for p in sorted(masks_dir.iterdir())
             if p.suffix.lower() in MASK_SUFFIXES} if masks_dir.is_dir() else {}
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise InputError(f"{masks_dir}: {len(orphans)} mask(s) without an image, e.g. "
                         f"{orphans[0]}", "give every mask an image with the same stem")
    return [Tile(images[s], masks.get(s)) for s in sorted(images)]


def select_fraction(tiles: Sequence[Tile], fraction: float, seed: int) -> list[Tile]:
    """A reproducible ``fraction`` of ``tiles`` (at least one), in stem order.

    The subset depends only on the stems and ``seed``; for one seed, a smaller fraction is a
    subset of a larger one.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"label fraction {fraction} is outside (0, 1]", "use e.g. 0.01 for 1%")
    ordered = sorted(tiles, key=lambda t: t.stem)
    if not ordered:
        return []
    n = max(1, math.floor(fraction * len(ordered) + 0.5))
    order = np.random.default_rng(seed).permutation(len(ordered))
    return [ordered[i] for i in sorted(order[:n])]


def split_by_group(tiles: Sequence[Tile], val_fraction: float, seed: int,
                   group: str | None = None) -> tuple[list[Tile], list[Tile]]:
    """Reproducible train/validation split that never separates tiles of one group.

    ``group`` is a regex matched at the start of each stem (e.g. ``r"tile\\d+"`` for the Dubai
    tiles, whose neighbouring images are correlated); None makes each tile its own group. At
    least one group goes to each side.
    """
    if not 0 < val_fraction < 1:
        raise ConfigError(f"validation fraction {val_fraction} is outside (0, 1)",
                          "use e.g. 0.2")
    keys = [_group_key(t.stem, group) for t in tiles]
    groups = sorted(set(keys))
    if len(groups) < 2:
        raise InputError(f"{len(tiles)} tile(s) in {len(groups)} group(s): a train/validation "
                         "split needs at least two groups", "add tiles or change the grouping")
    n_val = min(len(groups) - 1, max(1, math.floor(val_fraction * len(groups) + 0.5)))
    order = np.random.default_rng(seed).permutation(len(groups))
    val_groups = {groups[i] for i in order[:n_val]}
    train = [t for t, k in zip(tiles, keys, strict=True) if k not in val_groups]
    val = [t for t, k in zip(tiles, keys, strict=True) if k in val_groups]
    return train, val


def _group_key(stem: str, group: str | None) -> str:
    match = re.match(group, stem) if group else None
    return match.group(0) if match else stem


def load_tile_folder(folder: str | Path, label_fraction: float = 1.0, seed: int = 0,
                     classes: ClassTable | None = None, ignore: float | None = None) -> TileSet:
    """Scan ``folder``, keep a reproducible ``label_fraction`` of the labelled tiles.

    Without ``classes`` the class table lists the ids found in the kept masks.
    """
    tiles = scan_tiles(folder)
    with_mask = [t for t in tiles if t.mask is not None]
    if not with_mask:
        raise InputError(f"{folder}: no tile has a mask in labels/",
                         "add masks with the same stems as the images")
    kept = select_fraction(with_mask, label_fraction, seed)
    kept_set = {t.stem for t in kept}
    if classes is None:
        seen: set[int] = set()
        for tile in kept:
            seen |= set(read_tile_labels(tile, ignore).counts())
        classes = ClassTable.from_ids(seen)
    return TileSet(tuple(kept), tuple(t for t in tiles if t.stem not in kept_set), classes)


def read_tile_labels(tile: Tile, ignore: float | None = None,
                     classes: ClassTable | None = None) -> SparseLabels:
    """A tile's mask as :class:`SparseLabels` on the tile's grid; ignore as in read_label_raster.

    The mask must have the image's size; a georeferenced mask also its transform and CRS.
    """
    if tile.mask is None:
        raise InputError(f"{tile.image}: tile has no mask", "pick tiles from TileSet.labelled")
    with warnings.catch_warnings():  # plain PNG/JPEG tiles are expected here
        warnings.filterwarnings("ignore", message=".*no CRS/georeferencing.*")
        with open_scene(tile.image) as image:
            grid = image.info
        labels, carried = _read_mask(tile.mask, ignore, grid)
    found = np.flatnonzero(np.bincount(labels.ravel(), minlength=256)[:IGNORE])
    return SparseLabels(labels, _table_for(found, classes or carried, tile.mask))


# --- training sources: labelled rasters split into train and validation ------------------------

FOLDER_CLASSES = "classes.yaml"  # optional class table of a tile folder
FOLDER_BANDS = "bands.json"  # optional band normalisation of a tile folder


@dataclass
class LabelSources:
    """Rasters with label arrays of class *indexes* (``(H, W)`` uint8, 255 unlabelled)."""

    train: list[tuple[Path, np.ndarray]]
    val: list[tuple[Path, np.ndarray]]
    classes: ClassTable
    resolution: float | None
    norms: list[BandNorm] | None = None  # fixed normalisation (a folder's bands.json)

    def band_norms(self, nodata: float | None) -> list[BandNorm]:
        """The band normalisation to train with: the folder's ``bands.json``, else the mean and
        std of the valid pixels of the rasters (``InputError`` for a band without any)."""
        if self.norms:
            return self.norms
        stats = scene_band_stats([p for p, _ in self.train + self.val], nodata)
        return [BandNorm(name=d["name"], mean=d["mean"], std=d["std"] or 1.0) for d in stats]

    def class_counts(self) -> np.ndarray:
        """Labelled training pixels per class index ``(K,)``."""
        counts = np.zeros(len(self.classes), dtype=np.int64)
        for _, labels in self.train:
            found = np.bincount(labels.ravel(), minlength=256)[:len(self.classes)]
            counts += found
        return counts


def block_split(labels: np.ndarray, block: int, fraction: float, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Split labelled pixels by spatial ``block``×``block`` cells: ``(train, val)`` arrays."""
    if fraction == 0:
        return labels, np.full_like(labels, IGNORE)
    rows, cols = labels.shape
    cells = np.random.default_rng(seed).random(((rows - 1) // block + 1, (cols - 1) // block + 1))
    is_val = np.kron(cells < fraction, np.ones((block, block), dtype=bool))[:rows, :cols]
    labelled = labels != IGNORE
    if not (labelled & ~is_val).any() or not (labelled & is_val).any():
        return labels, np.full_like(labels, IGNORE)
    return np.where(is_val, IGNORE, labels), np.where(is_val, labels, IGNORE)


def scene_sources(scenes: list[Path], labels: Path | Sequence[Path], column: str | None,
                  classes: ClassTable | None, nodata: float | None, cfg: FinetuneConfig
                  ) -> LabelSources:
    """Sparse labels on each scene's grid from one or several label files (a label raster: one
    scene; vectors: any)."""
    files = as_paths(labels)
    rasters = column is None or any(p.suffix.lower() not in VECTOR_SUFFIXES for p in files)
    if rasters and len(scenes) > 1:
        raise UsageError("a label raster belongs to one scene grid but several --scene were given",
                         "pass one --scene, or vector labels with --label-column")
    found = []
    for path in scenes:
        with open_scene(path, nodata=nodata) as scene:
            found.append((path, load_label_files(files, scene.info, column, classes=classes),
                          scene.info))
    table = classes or _union([sparse.classes for _, sparse, _ in found])
    train, val = [], []
    for i, (path, sparse, _) in enumerate(found):
        idx = table.to_index(sparse.labels)
        t, v = block_split(idx, cfg.data.val_block, cfg.data.val_fraction, cfg.trainer.seed + i)
        train.append((path, t))
        val.append((path, v))
    info = found[0][2]
    resolution = float(info.resolution[0]) if info.crs is not None and info.crs.is_projected \
        else None
    return LabelSources(train, val, table, resolution)


def as_paths(paths: str | Path | Sequence[str | Path] | None) -> list[Path]:
    """A path option (``--labels``, ``--tiles``) given once or several times, as a list."""
    if paths is None:
        return []
    return [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]


def _union(tables: list[ClassTable]) -> ClassTable:
    """Every class of ``tables`` (the first definition of an id wins)."""
    by_id = {}
    for table in tables:
        for c in table.classes:
            by_id.setdefault(c.id, c)
    return ClassTable(tuple(by_id.values()))


def tile_sources(folder: Path, classes: ClassTable | None, cfg: FinetuneConfig) -> LabelSources:
    """The labelled subset of a tile folder, split by tile (or ``data.group``) into train/val.

    Without ``classes``, the folder's ``classes.yaml`` (if any) names the classes.
    """
    folder = Path(folder)
    if classes is None and (folder / FOLDER_CLASSES).is_file():
        classes = read_classes(folder / FOLDER_CLASSES)
    tileset = load_tile_folder(folder, cfg.data.label_fraction, cfg.trainer.seed, classes)
    table = tileset.classes
    tiles = list(tileset.labelled)
    if cfg.data.val_fraction > 0 and len(tiles) > 1:
        train_tiles, val_tiles = split_by_group(tiles, cfg.data.val_fraction, cfg.trainer.seed,
                                                cfg.data.group)
    else:
        train_tiles, val_tiles = tiles, []

    def arrays(chosen: list) -> list[tuple[Path, np.ndarray]]:
        return [(t.image, table.to_index(read_tile_labels(t, classes=table).labels))
                for t in chosen]

    return LabelSources(arrays(train_tiles), arrays(val_tiles), table, None,
                        folder_norms(folder))


def folder_norms(folder: Path) -> list[BandNorm] | None:
    """The band normalisation a tile folder fixes in ``bands.json`` (None without one).

    ``bands.json``: ``{"bands": [{"name", "mean", "std"}, ...]}``.
    """
    path = Path(folder) / FOLDER_BANDS
    if not path.is_file():
        return None
    try:
        return [BandNorm(**band) for band in json.loads(path.read_text())["bands"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: not a band normalisation file ({err})",
                         "remove it or rewrite it as {\"bands\": [{name, mean, std}, ...]}"
                         ) from None


def write_folder_norms(folder: Path, norms: Sequence[BandNorm]) -> None:
    """Fix the band normalisation of a tile folder: its ``bands.json`` (:func:`folder_norms`)."""
    (Path(folder) / FOLDER_BANDS).write_text(json.dumps(
        {"bands": [b.model_dump() for b in norms]}, indent=2))


def check_labels_hold_data(sources: list[tuple[Path, np.ndarray]], nodata: float | None) -> None:
    """Refuse training data whose labelled pixels are all nodata (an all-nodata scene, a wrong
    ``--nodata``, labels outside the imagery): training would only see ignored pixels and give
    a NaN loss. Reads the labelled rows of each raster, stopping at the first valid one."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no CRS/georeferencing.*")
        for path, labels in sources:
            with open_scene(path, nodata=nodata) as scene:
                for top in range(0, labels.shape[0], 256):
                    labelled = labels[top:top + 256] != IGNORE
                    if labelled.any():
                        window = Window(0, top, labels.shape[1], labelled.shape[0])
                        if (scene.valid_mask(scene.read(window)) & labelled).any():
                            return
    if sources:
        where = str(sources[0][0]) if len(sources) == 1 else f"{len(sources)} rasters"
        raise InputError(f"no labelled training pixel holds data: {where} is nodata wherever "
                         "it is labelled", "check the scene, --nodata and where the labels lie")


@dataclass
class Domain:
    """One labelled dataset of the run (a single-domain run has one, named "")."""

    name: str
    sources: LabelSources


def _domain_name(path: Path, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", path.resolve().name) or "domain"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name


def training_domains(config: FinetuneConfig, scenes: list[Path], tiles: list[Path],
                     labels: Path | Sequence[Path] | None, label_column: str | None,
                     classes: ClassTable | None, nodata: float | None) -> list[Domain]:
    """The labelled datasets of a fine-tuning run, from the flags or the config's ``domains``
    (several: one domain each, ``multidomain``)."""
    if config.domains:
        if scenes or tiles:
            raise UsageError("datasets given both as flags and in the config's domains list",
                             "use one or the other")
        names = [d.name for d in config.domains]
        if len(set(names)) != len(names):
            raise ConfigError(f"domain names must be unique, got {names}")
        return [Domain(d.name, _domain_sources(d, classes, nodata, config)) for d in config.domains]
    if bool(scenes) == bool(tiles):
        raise UsageError("give either --scene (with --labels) or --tiles",
                         "e.g. --scene scene.tif --labels labels.tif")
    if scenes:
        if not as_paths(labels):
            raise UsageError("--scene needs --labels (a label raster or a vector file)")
        return [Domain("", scene_sources(scenes, labels, label_column, classes, nodata,
                                         config))]
    if len(tiles) == 1:
        return [Domain("", tile_sources(tiles[0], classes, config))]
    taken: set[str] = set()
    return [Domain(_domain_name(t, taken), tile_sources(t, classes, config)) for t in tiles]


def _domain_sources(domain: DomainSource, classes: ClassTable | None, nodata: float | None,
                    config: FinetuneConfig) -> LabelSources:
    table = read_classes(domain.classes) if domain.classes else classes
    if domain.tiles is not None:
        return tile_sources(domain.tiles, table, config)
    return scene_sources(list(domain.scenes), domain.labels, domain.label_column, table, nodata,
                         config)
