"""``rsseg finetune``: supervised training on sparse labels → a model bundle for ``predict``.

Labels come as a raster on the scene grid, vector points/polygons, or a tile folder where only
some tiles have masks (:mod:`rsseg.labels`). Training crops are centred on labelled pixels; the
loss ignores unlabelled and nodata pixels. A held-out part of the labels (spatial blocks of a
scene, or whole tiles/groups of a tile folder) picks the best checkpoint by validation OA, as in
GLCNet's fine-tuning protocol. ``--init RUN`` loads a pretrained backbone (encoder + ASPP) and
starts a fresh decoder and head.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from rasterio.windows import Window
from torch.utils.data import DataLoader

from rsseg.classes import IGNORE, ClassTable, read_classes
from rsseg.config import FinetuneConfig, ModelConfig
from rsseg.errors import InputError, UsageError
from rsseg.io.raster import open_scene
from rsseg.labels import load_labels, load_tile_folder, read_tile_labels, split_by_group
from rsseg.models.backbone import load_backbone, read_backbone
from rsseg.models.bundle import BandNorm, BundleMeta, ClassEntry, save_bundle
from rsseg.models.factory import ModelSpec, build_model, required_multiple
from rsseg.tiling.stats import RunningStats
from rsseg.tiling.windows import grid_windows
from rsseg.training.data import LabelledCrops
from rsseg.training.engine import build_trainer
from rsseg.training.modules import SegmentationModule
from rsseg.training.run_folder import prepare_run

BUNDLE = "model.rsseg"


@dataclass
class LabelSources:
    """Rasters with label arrays of class *indexes* (``(H, W)`` uint8, 255 unlabelled)."""

    train: list[tuple[Path, np.ndarray]]
    val: list[tuple[Path, np.ndarray]]
    classes: ClassTable
    resolution: float | None


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


def scene_sources(scenes: list[Path], labels: Path, column: str | None,
                  classes: ClassTable | None, nodata: float | None, cfg: FinetuneConfig
                  ) -> LabelSources:
    """Sparse labels on each scene's grid (one label raster: one scene; vectors: any)."""
    if column is None and len(scenes) > 1:
        raise UsageError("a label raster belongs to one scene grid but several --scene were given",
                         "pass one --scene, or vector labels with --label-column")
    found = []
    for path in scenes:
        with open_scene(path, nodata=nodata) as scene:
            found.append((path, load_labels(labels, scene.info, column, classes=classes),
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


def _union(tables: list[ClassTable]) -> ClassTable:
    """Every class of ``tables`` (the first definition of an id wins)."""
    by_id = {}
    for table in tables:
        for c in table.classes:
            by_id.setdefault(c.id, c)
    return ClassTable(tuple(by_id.values()))


def tile_sources(folder: Path, classes: ClassTable | None, cfg: FinetuneConfig) -> LabelSources:
    """The labelled subset of a tile folder, split by tile (or ``data.group``) into train/val."""
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

    return LabelSources(arrays(train_tiles), arrays(val_tiles), table, None)


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
                    stats.update(pixels, scene.valid_mask(pixels))
    return [BandNorm(name=d["name"], mean=d["mean"] or 0.0, std=d["std"] or 1.0)
            for d in stats.to_dicts(names)]


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


def finetune(out: str | Path, config: FinetuneConfig, *, scenes: list[Path] | None = None,
             tiles: Path | None = None, labels: Path | None = None,
             label_column: str | None = None, classes_file: Path | None = None,
             nodata: float | None = None, init: Path | None = None,
             resume: bool = False, overwrite: bool = False) -> Path:
    """Fine-tune on sparse labels; return the path of the written model bundle."""
    out = Path(out)
    if bool(scenes) == bool(tiles):
        raise UsageError("give either --scene (with --labels) or --tiles",
                         "e.g. --scene scene.tif --labels labels.tif")
    if scenes and labels is None:
        raise UsageError("--scene needs --labels (a label raster or a vector file)")
    config = _resolve_model(config, init)
    classes = read_classes(classes_file) if classes_file else None
    sources = (scene_sources(list(scenes), labels, label_column, classes, nodata, config)
               if scenes else tile_sources(Path(tiles), classes, config))
    paths = [p for p, _ in sources.train + sources.val]
    backbone = read_backbone(init)[1] if init else None
    norms = backbone.bands if backbone else scene_band_norms(paths, nodata)
    spec = ModelSpec(arch=config.model.arch, encoder=config.model.encoder,
                     in_channels=len(norms), classes=len(sources.classes),
                     kwargs=config.model.kwargs)
    crop = config.data.crop_size
    multiple = required_multiple(spec)
    if crop % multiple:
        raise InputError(f"data.crop_size {crop} is not a multiple of {multiple}, which "
                         f"{spec.arch}/{spec.encoder} requires",
                         f"use e.g. --set data.crop_size={max(crop // multiple, 1) * multiple}")
    with open_scene(paths[0], nodata=nodata) as scene:
        if scene.info.count != spec.in_channels:
            raise InputError(f"{paths[0]} has {scene.info.count} bands but the pretrained "
                             f"backbone expects {spec.in_channels}",
                             "fine-tune on imagery with the bands it was pretrained on")
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    model = build_model(spec)
    if init:
        load_backbone(model, spec, init)
    ckpt = prepare_run(out, config, resume=resume, overwrite=overwrite)

    mean = np.array([b.mean for b in norms])
    std = np.array([b.std for b in norms])
    centres = _centres(sources.train, config.data.max_centres, config.trainer.seed)
    if not len(centres):
        raise InputError("no labelled pixel left for training", "add labels")
    bs = config.trainer.batch_size
    length = (config.trainer.steps_per_epoch * bs if config.trainer.steps_per_epoch
              else len(centres))
    train = LabelledCrops(sources.train, centres, crop, mean, std, nodata, length=length)
    workers = config.trainer.num_workers
    loader = DataLoader(train, batch_size=bs, shuffle=True, drop_last=len(train) > bs,
                        num_workers=workers, persistent_workers=workers > 0)
    val_centres = _grid_centres(sources.val, crop)
    val_loader = None
    if len(val_centres):
        val = LabelledCrops(sources.val, val_centres, crop, mean, std, nodata, augment=False)
        val_loader = DataLoader(val, batch_size=bs, num_workers=workers,
                                persistent_workers=workers > 0)
    monitor = "val_oa" if val_loader is not None else None
    trainer = build_trainer(config.trainer, out, "fine-tune", monitor=monitor)
    module = SegmentationModule(model, len(sources.classes), IGNORE, config.optim,
                                config.trainer.epochs)
    trainer.fit(module, loader, val_loader, ckpt_path=ckpt)
    if not trainer.is_global_zero:  # DDP: rank zero writes the bundle
        return out / BUNDLE
    best = out / "checkpoints" / ("best.ckpt" if monitor else "last.ckpt")
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    meta = BundleMeta(
        model=spec, bands=norms,
        classes=[ClassEntry(**record) for record in sources.classes.to_records()],
        ignore_id=IGNORE, tile=config.tile, overlap=config.overlap,
        resolution=sources.resolution,
    )
    return save_bundle(out / BUNDLE, model.eval(), meta, overwrite=True)
