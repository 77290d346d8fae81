"""``rsseg condense``: labelled tiles or scene → a small synthetic tile set (DCC).

The algorithm and its settings are in :mod:`rsseg.regularizers.dcc` (specified in
docs/methods.md, "DCC"). Output folder (what ``rsseg finetune --tiles`` reads)::

    OUT/images/syn_<id>_<k>.tif   float32 synthetic tiles, the real data's radiometry
    OUT/labels/syn_<id>_<k>.tif   uint8 label maps (class ids, 255 unlabelled)
    OUT/classes.yaml              the class table (names and colours)
    OUT/bands.json                the real data's band normalisation, used by finetune so
                                  that a model trained here normalises real scenes alike
    OUT/condense.json             config, classes condensed, the matching-loss history and the
                                  seconds it took (with the torch threads)

``random_subset=True`` (``rsseg condense --random-subset``) writes the baseline of the DCC paper
instead: as many real crops, chosen at random, in the same format.

Synthetic tiles are written as ``x·std + mean`` of their normalised values, so ``finetune``
with ``bands.json`` sees exactly the learned tensors.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rsseg.classes import IGNORE, ClassTable, read_classes, write_classes
from rsseg.config import FinetuneConfig, FinetuneData
from rsseg.errors import InputError, UsageError
from rsseg.inference.device import resolve_device
from rsseg.io.atomic import atomic_dir, check_output
from rsseg.io.gdal_errors import gdal_write_errors
from rsseg.io.owned import CONDENSED, check_replaceable
from rsseg.io.raster import write_plain_tile
from rsseg.labels import (
    FOLDER_CLASSES,
    LabelSources,
    check_labels_hold_data,
    scene_sources,
    tile_sources,
    write_folder_norms,
)
from rsseg.models.bundle import BandNorm
from rsseg.regularizers.dcc import DCCConfig, Progress, RealPool, initial_set, learn
from rsseg.training.data import LabelledCrops, labelled_pixels


def real_pool(sources: LabelSources, norms: list[BandNorm], size: int, per_class: int,
              nodata: float | None, seed: int) -> RealPool:
    """Up to ``per_class`` crops of ``size`` px centred on random labelled pixels of each class."""
    rng = np.random.default_rng(seed)
    mean = np.array([b.mean for b in norms])
    std = np.array([b.std for b in norms])
    xs: dict[int, Tensor] = {}
    ys: dict[int, Tensor] = {}
    for c in range(len(sources.classes)):
        centres = labelled_pixels(sources.train, lambda labels, c=c: labels == c)
        if not len(centres):
            continue
        if len(centres) > per_class:
            centres = centres[rng.choice(len(centres), per_class, replace=False)]
        crops = LabelledCrops(sources.train, centres, size, mean, std, nodata, augment=False)
        items = [crops[i] for i in range(len(crops))]
        xs[c] = torch.stack([x for x, _ in items])
        ys[c] = torch.stack([y for _, y in items])
    return RealPool(xs, ys)


def condense(out: str | Path, config: DCCConfig, *, scenes: list[Path] | None = None,
             tiles: Path | None = None, labels: Path | None = None,
             label_column: str | None = None, classes_file: Path | None = None,
             nodata: float | None = None, overwrite: bool = False,
             random_subset: bool = False, progress: Progress | None = None) -> Path:
    """Condense the labelled data into a synthetic tile set at ``out``; return ``out``.

    ``random_subset``: write instead the baseline DCC is compared with, as many *real* crops
    (``per_class`` per class, ``size`` px, centred on random labelled pixels, with their real
    labels) in the same format.
    """
    out = Path(out)
    if bool(scenes) == bool(tiles):
        raise UsageError("give either --scene (with --labels) or --tiles",
                         "e.g. --tiles labelled_tiles/")
    if scenes and labels is None:
        raise UsageError("--scene needs --labels (a label raster or a vector file)")
    inputs = [p for p in (*(scenes or []), tiles, labels, classes_file) if p is not None]
    check_output(out, overwrite)
    if out.exists():
        check_replaceable(out, CONDENSED, inputs)
    device = resolve_device(config.device)
    data_cfg = FinetuneConfig(data=FinetuneData(val_fraction=0.0,
                                                label_fraction=config.label_fraction),
                              trainer={"seed": config.seed})
    classes = read_classes(classes_file) if classes_file else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no CRS/georeferencing.*")
        sources = (scene_sources(list(scenes), labels, label_column, classes, nodata, data_cfg)
                   if scenes else tile_sources(Path(tiles), classes, data_cfg))
        norms = sources.band_norms(nodata)
        check_labels_hold_data(sources.train, nodata)
        pool = real_pool(sources, norms, config.size, config.real_pool, nodata, config.seed)
    if not pool.x:
        raise InputError("no labelled pixel to condense", "add labels")
    missing = [sources.classes.classes[c].name for c in range(len(sources.classes))
               if c not in pool.x]
    if missing:
        warnings.warn(f"class(es) {', '.join(missing)} have no labelled pixel and get no "
                      "synthetic tile", UserWarning, stacklevel=2)
    with atomic_dir(out, overwrite, CONDENSED, inputs) as tmp:
        start = time.perf_counter()
        torch.manual_seed(config.seed)
        if random_subset:
            images, label_maps, present = initial_set(pool, config,
                                                   torch.Generator().manual_seed(config.seed),
                                                   real_labels=True)
            history: list[float] = []
        else:
            images, label_maps, present, history = learn(pool, len(norms),
                                                          len(sources.classes), config, device,
                                                          progress)
        with gdal_write_errors(out):  # a full disk: one line, and the folder does not appear
            _write(tmp, images, label_maps, present, sources.classes, norms, config, history,
                   "random-subset" if random_subset else "dcc", time.perf_counter() - start)
    return out


def _write(folder: Path, images: Tensor, label_maps: Tensor, present: list[int],
           classes: ClassTable, norms: list[BandNorm], cfg: DCCConfig,
           history: list[float], method: str, seconds: float) -> None:
    (folder / "images").mkdir()
    (folder / "labels").mkdir()
    mean = np.array([b.mean for b in norms], dtype=np.float32)[:, None, None]
    std = np.array([b.std for b in norms], dtype=np.float32)[:, None, None]
    ids = np.array(classes.ids, dtype=np.uint8)
    lut = np.full(256, IGNORE, dtype=np.uint8)
    lut[:len(ids)] = ids
    for i, (x, y) in enumerate(zip(images.numpy(), label_maps.numpy(), strict=True)):
        class_id = int(ids[present[i // cfg.per_class]])
        stem = f"syn_{class_id:03d}_{i % cfg.per_class:04d}"
        write_plain_tile(folder / "images" / f"{stem}.tif", (x * std + mean).astype(np.float32),
                         band_names=[b.name for b in norms], predictor=3)
        write_plain_tile(folder / "labels" / f"{stem}.tif", lut[y.astype(np.uint8)][None],
                         nodata=IGNORE, legend=classes)
    write_classes(folder / FOLDER_CLASSES, classes)
    write_folder_norms(folder, norms)
    (folder / "condense.json").write_text(json.dumps({
        "method": method, "config": cfg.model_dump(mode="json"),
        "classes": [classes.classes[c].name for c in present],
        "tiles": len(images), "loss": history,
        "seconds": round(seconds, 1),  # building the set (the learning loop for dcc)
        "threads": torch.get_num_threads(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }, indent=2))
