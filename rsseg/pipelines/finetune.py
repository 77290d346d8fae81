"""``rsseg finetune``: supervised training on sparse labels → a model bundle for ``predict``.

Labels come as a raster on the scene grid, vector points/polygons, or a tile folder where only
some tiles have masks (:mod:`rsseg.labels`). Training crops are centred on labelled pixels; the
loss ignores unlabelled and nodata pixels. A held-out part of the labels (spatial blocks of a
scene, or whole tiles/groups of a tile folder) picks the best checkpoint by validation OA, as in
GLCNet's fine-tuning protocol. ``--init RUN`` loads a pretrained backbone (encoder + ASPP) and
starts a fresh decoder and head.

Against memorising few labels (all off by default; see :class:`rsseg.config.FinetuneConfig`):
class-balanced crop sampling (``data.balance``), radiometric jitter (``data.jitter``), band
dropout to nodata (``data.band_dropout``), a lower learning rate for a pretrained encoder
(``encoder_lr_scale``) and an exponential moving average of the weights (``ema``).

Fine-tuning methods of the registry (``rsseg methods``, kind regularizer) come from the config's
``regularizers`` or ``--method``: each adds ``w·L`` to the supervised loss (e.g. ``supcon``).
Several labelled datasets (``--tiles A --tiles B`` or the config's ``domains``) train one
multi-domain model (``multidomain``: domain batch norm, one head per domain) and write one
bundle per domain. A tile folder may carry ``classes.yaml`` (its class table) and
``bands.json`` (the band normalisation to use, e.g. a set written by ``rsseg condense``).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from torch import nn
from torch.utils.data import DataLoader, Dataset

from rsseg.classes import IGNORE, ClassTable, read_classes
from rsseg.config import DomainSource, FinetuneConfig, ModelConfig
from rsseg.errors import ConfigError, InputError, UsageError
from rsseg.io.raster import open_scene
from rsseg.io.stats import RunningStats
from rsseg.labels import (
    VECTOR_SUFFIXES,
    load_label_files,
    load_tile_folder,
    read_tile_labels,
    split_by_group,
)
from rsseg.models.backbone import load_backbone, read_backbone
from rsseg.models.bundle import BandNorm, BundleMeta, ClassEntry, save_bundle
from rsseg.models.factory import ModelSpec, build_model, required_multiple
from rsseg.registry import parse_config
from rsseg.regularizers.base import SegInfo, get_regularizer, regularizer_class
from rsseg.regularizers.multidomain import MultiDomainModel, domain_record
from rsseg.tiling.windows import grid_windows
from rsseg.training.data import LabelledCrops
from rsseg.training.engine import build_trainer
from rsseg.training.guards import NonFiniteLoss
from rsseg.training.modules import SegmentationModule
from rsseg.training.run_folder import run_folder

BUNDLE = "model.rsseg"
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

    def class_counts(self) -> np.ndarray:
        """Labelled training pixels per class index ``(K,)``."""
        counts = np.zeros(len(self.classes), dtype=np.int64)
        for _, labels in self.train:
            found = np.bincount(labels.ravel(), minlength=256)[:len(self.classes)]
            counts += found
        return counts


def _block_split(labels: np.ndarray, block: int, fraction: float, seed: int
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
    files = label_files(labels)
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
        t, v = _block_split(idx, cfg.data.val_block, cfg.data.val_fraction, cfg.trainer.seed + i)
        train.append((path, t))
        val.append((path, v))
    info = found[0][2]
    resolution = float(info.resolution[0]) if info.crs is not None and info.crs.is_projected \
        else None
    return LabelSources(train, val, table, resolution)


def label_files(labels: Path | Sequence[Path] | None) -> list[Path]:
    """``--labels`` given once or several times, as a list."""
    if labels is None:
        return []
    return [Path(labels)] if isinstance(labels, (str, Path)) else [Path(p) for p in labels]


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


def scene_band_norms(paths: list[Path], nodata: float | None) -> list[BandNorm]:
    """Per-band mean/std of the valid pixels of ``paths``, streamed in bands of block rows."""
    stats, names = None, None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no CRS/georeferencing.*")
        for path in dict.fromkeys(paths):
            with open_scene(path, nodata=nodata) as scene:
                info = scene.info
                stats = stats or RunningStats(info.count, info.dtype)
                names = names or info.band_names
                step = max(info.block_shape[0], 256 // info.block_shape[0] * info.block_shape[0])
                for top in range(0, info.height, step):
                    pixels = scene.read(Window(0, top, info.width, min(step, info.height - top)))
                    stats.update(pixels, ~scene.band_missing(pixels))
    bands = stats.to_dicts(names)
    count = len(set(paths))
    where = str(paths[0]) if count == 1 else f"the training data ({count} rasters)"
    empty = [d["name"] for d in bands if not d["count"]]
    if len(empty) == len(bands):
        raise InputError(f"{where}: every pixel is nodata (nodata {info.nodata}), nothing to "
                         "train on", "check the scene or pass the right --nodata")
    if empty:
        raise InputError(f"{where}: band(s) {', '.join(empty)} hold no valid pixel, so they "
                         "cannot be normalised", "drop those bands or check --nodata")
    return [BandNorm(name=d["name"], mean=d["mean"], std=d["std"] or 1.0) for d in bands]


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


def _centres(sources: list[tuple[Path, np.ndarray]], limit: int, seed: int) -> np.ndarray:
    """``(N, 3)`` (source, row, col) of labelled pixels, at most ``limit`` (random subset)."""
    parts = [np.column_stack([np.full(len(r), i), r, c])
             for i, (_, labels) in enumerate(sources)
             for r, c in [np.nonzero(labels != IGNORE)]]
    centres = np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.int64)
    if len(centres) > limit:
        centres = centres[np.random.default_rng(seed).choice(len(centres), limit, replace=False)]
    return centres


def _grid_centres(sources: list[tuple[Path, np.ndarray]], size: int) -> np.ndarray:
    """Centres of the ``size`` grid windows that hold at least one labelled pixel."""
    out = []
    for i, (_, labels) in enumerate(sources):
        rows, cols = labels.shape
        for w in grid_windows(max(cols, size), max(rows, size), size, size):
            r0, c0 = int(w.row_off), int(w.col_off)
            if (labels[r0:r0 + size, c0:c0 + size] != IGNORE).any():
                out.append((i, r0 + size // 2, c0 + size // 2))
    return np.array(out, dtype=np.int64).reshape(-1, 3)


def _resolve_model(cfg: FinetuneConfig, init: Path | None) -> FinetuneConfig:
    """With ``--init`` and no model chosen in the config, take the backbone's architecture."""
    if init is None or cfg.model != ModelConfig():
        return cfg
    _, meta = read_backbone(init)
    model = ModelConfig(arch=meta.arch, encoder=meta.encoder, kwargs=meta.kwargs)
    return cfg.model_copy(update={"model": model})


@dataclass
class Domain:
    """One labelled dataset of the run (a single-domain run has one, named "")."""

    name: str
    sources: LabelSources


def with_methods(config: FinetuneConfig, methods: Sequence[str]) -> FinetuneConfig:
    """``config`` with the ``--method`` names added to its regularizers (default params)."""
    table = dict(config.regularizers)
    for name in methods:
        table.setdefault(name, {})
    return config.model_copy(update={"regularizers": table})


def check_methods(config: FinetuneConfig) -> None:
    """Every configured regularizer exists, is a regularizer and has valid params."""
    for name, params in config.regularizers.items():
        regularizer_class(name)
        parse_config(name, params)


def _domain_name(path: Path, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", path.resolve().name) or "domain"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name


def _domains(config: FinetuneConfig, scenes: list[Path], tiles: list[Path],
             labels: Path | Sequence[Path] | None, label_column: str | None,
             classes: ClassTable | None, nodata: float | None) -> list[Domain]:
    """The labelled datasets of the run, from the flags or the config's ``domains``."""
    if config.domains:
        if scenes or tiles:
            raise UsageError("datasets given both as flags and in the config's domains list",
                             "use one or the other")
        names = [d.name for d in config.domains]
        if len(set(names)) != len(names):
            raise ConfigError(f"domain names must be unique, got {names}")
        return [Domain(d.name, _source(d, classes, nodata, config)) for d in config.domains]
    if bool(scenes) == bool(tiles):
        raise UsageError("give either --scene (with --labels) or --tiles",
                         "e.g. --scene scene.tif --labels labels.tif")
    if scenes:
        if not label_files(labels):
            raise UsageError("--scene needs --labels (a label raster or a vector file)")
        return [Domain("", scene_sources(scenes, labels, label_column, classes, nodata,
                                         config))]
    if len(tiles) == 1:
        return [Domain("", tile_sources(tiles[0], classes, config))]
    taken: set[str] = set()
    return [Domain(_domain_name(t, taken), tile_sources(t, classes, config)) for t in tiles]


def _source(domain: DomainSource, classes: ClassTable | None, nodata: float | None,
            config: FinetuneConfig) -> LabelSources:
    table = read_classes(domain.classes) if domain.classes else classes
    if domain.tiles is not None:
        return tile_sources(domain.tiles, table, config)
    return scene_sources(list(domain.scenes), domain.labels, domain.label_column, table, nodata,
                         config)


class _PerDomain(Dataset):
    """One item of every domain's dataset per index (shorter ones wrap around)."""

    def __init__(self, datasets: Sequence[Dataset]) -> None:
        self.datasets = list(datasets)

    def __len__(self) -> int:
        return max(len(d) for d in self.datasets)

    def __getitem__(self, index: int) -> tuple:
        return tuple(d[index % len(d)] for d in self.datasets)


def finetune(out: str | Path, config: FinetuneConfig, *, scenes: list[Path] | None = None,
             tiles: Path | Sequence[Path] | None = None,
             labels: Path | Sequence[Path] | None = None,
             label_column: str | None = None, classes_file: Path | None = None,
             nodata: float | None = None, init: Path | None = None,
             methods: Sequence[str] = (), resume: bool = False,
             overwrite: bool = False) -> Path:
    """Fine-tune on sparse labels; return the path of the written model bundle.

    ``tiles``: one tile folder, or several (one domain each, ``multidomain``); ``methods``:
    regularizer names added to ``config.regularizers``. With several domains the returned
    bundle is the first domain's; the others are ``model.<domain>.rsseg`` beside it.
    """
    out = Path(out)
    config = with_methods(config, methods)
    check_methods(config)
    tile_list = ([] if tiles is None else [Path(tiles)] if isinstance(tiles, (str, Path))
                 else [Path(t) for t in tiles])
    config = _resolve_model(config, init)
    classes = read_classes(classes_file) if classes_file else None
    domains = _domains(config, list(scenes or []), tile_list, labels, label_column, classes,
                       nodata)
    available = {"labels"} | ({"domains"} if len(domains) > 1 else set())
    for name in config.regularizers:
        regularizer_class(name).check_data(available)
    if len(domains) > 1 and not any("domains" in regularizer_class(n).needs
                                    for n in config.regularizers):
        raise UsageError(f"{len(domains)} labelled datasets given: training on several at once "
                         "is the multidomain method", "add --method multidomain, or give one")
    backbone = read_backbone(init)[1] if init else None
    norms = [backbone.bands if backbone else d.sources.norms or scene_band_norms(
        [p for p, _ in d.sources.train + d.sources.val], nodata) for d in domains]
    for domain in domains:
        check_labels_hold_data(domain.sources.train, nodata)
    specs = [ModelSpec(arch=config.model.arch, encoder=config.model.encoder,
                       in_channels=len(n), classes=len(d.sources.classes),
                       kwargs=config.model.kwargs) for d, n in zip(domains, norms, strict=True)]
    crop = config.data.crop_size
    multiple = required_multiple(specs[0])
    if crop % multiple:
        raise InputError(f"data.crop_size {crop} is not a multiple of {multiple}, which "
                         f"{specs[0].arch}/{specs[0].encoder} requires",
                         f"use e.g. --set data.crop_size={max(crop // multiple, 1) * multiple}")
    for domain, spec in zip(domains, specs, strict=True):
        first = (domain.sources.train + domain.sources.val)[0][0]
        _check_band_count(first, nodata, spec.in_channels, specs[0].in_channels,
                          backbone is not None)
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    models = [build_model(spec) for spec in specs]
    if init:
        load_backbone(models[0], specs[0], init)
    model: nn.Module = models[0] if len(models) == 1 else MultiDomainModel(models)
    names = tuple(d.name for d in domains)
    info = SegInfo(tuple(s.classes for s in specs), names, config.trainer.epochs, IGNORE)
    regularizers = [get_regularizer(name, model, info, **params)
                    for name, params in config.regularizers.items()]
    inputs = [*(scenes or []), *tile_list, *label_files(labels), init, classes_file,
              *(p for d in config.domains for p in (d.tiles, *d.scenes, d.labels, d.classes))]
    with run_folder(out, config, resume=resume, overwrite=overwrite,
                    inputs=[p for p in inputs if p is not None]) as ckpt:
        bs = config.trainer.batch_size
        workers = config.trainer.num_workers
        trains, val_loaders, val_domains = [], [], []
        for d, (domain, norm) in enumerate(zip(domains, norms, strict=True)):
            mean = np.array([b.mean for b in norm])
            std = np.array([b.std for b in norm])
            sources = domain.sources
            centres = _centres(sources.train, config.data.max_centres, config.trainer.seed)
            if not len(centres):
                where = f" in domain {domain.name!r}" if domain.name else ""
                raise InputError(f"no labelled pixel left for training{where}", "add labels")
            length = (config.trainer.steps_per_epoch * bs if config.trainer.steps_per_epoch
                      else len(centres))
            trains.append(LabelledCrops(sources.train, centres, crop, mean, std, nodata,
                                        length=length, balance=config.data.balance,
                                        jitter=config.data.jitter,
                                        band_dropout=config.data.band_dropout))
            val_centres = _grid_centres(sources.val, crop)
            if len(val_centres):
                val = LabelledCrops(sources.val, val_centres, crop, mean, std, nodata,
                                    augment=False)
                val_loaders.append(DataLoader(val, batch_size=bs, num_workers=workers,
                                              persistent_workers=workers > 0))
                val_domains.append(d)
        train = trains[0] if len(trains) == 1 else _PerDomain(trains)
        loader = DataLoader(train, batch_size=bs, shuffle=True, drop_last=len(train) > bs,
                            num_workers=workers, persistent_workers=workers > 0)
        monitor = "val_oa" if val_loaders else None
        trainer = build_trainer(config.trainer, out, "fine-tune", monitor=monitor,
                                callbacks=[NonFiniteLoss()])
        module = SegmentationModule(model, [s.classes for s in specs], IGNORE, config.optim,
                                    config.trainer.epochs, regularizers=regularizers,
                                    loss=config.loss,
                                    class_counts=[d.sources.class_counts() for d in domains],
                                    domains=names, val_domains=val_domains,
                                    encoder_lr_scale=config.encoder_lr_scale,
                                    ema=config.ema)
        val_arg = (val_loaders[0] if len(val_loaders) == 1 else val_loaders) or None
        with warnings.catch_warnings():  # training reads pixels: georeferencing is irrelevant
            warnings.filterwarnings("ignore", message=".*no CRS/georeferencing.*")
            warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
            warnings.filterwarnings("ignore", message=".*`validation_step` but have no .*")
            trainer.fit(module, loader, val_arg, ckpt_path=ckpt)
    if not trainer.is_global_zero:  # DDP: rank zero writes the bundle
        return out / BUNDLE
    best = out / "checkpoints" / ("best.ckpt" if monitor else "last.ckpt")
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    prefix = "ema_model.module." if config.ema else "model."  # the weight average with ema
    model.load_state_dict({k.removeprefix(prefix): v for k, v in state.items()
                           if k.startswith(prefix)})
    files = [BUNDLE] + [f"model.{n}.rsseg" for n in names[1:]]
    for d, (domain, spec, norm) in enumerate(zip(domains, specs, norms, strict=True)):
        plain = model.export(d, spec) if isinstance(model, MultiDomainModel) else model.eval()
        meta = BundleMeta(
            model=spec, bands=norm,
            classes=[ClassEntry(**record) for record in domain.sources.classes.to_records()],
            ignore_id=IGNORE, tile=config.tile, overlap=config.overlap,
            resolution=domain.sources.resolution,
            domain=domain_record(domain.name, names, files) if len(domains) > 1 else {},
        )
        save_bundle(out / files[d], plain, meta, overwrite=True)
    return out / BUNDLE


def _check_band_count(path: Path, nodata: float | None, expected: int, first: int,
                      pretrained: bool) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no CRS/georeferencing.*")
        with open_scene(path, nodata=nodata) as scene:
            count = scene.info.count
    if count != expected:
        what = ("the pretrained backbone expects" if pretrained
                else "its band normalisation (bands.json) has")
        raise InputError(f"{path} has {count} bands but {what} {expected}",
                         "fine-tune on imagery with the bands it was pretrained on"
                         if pretrained else "fix or remove the folder's bands.json")
    if count != first:
        raise InputError(f"{path} has {count} bands but the first domain's data have {first}",
                         "every domain needs the same bands (in the same order)")
