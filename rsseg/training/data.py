"""Datasets for the engine: pretraining views of tiles, supervised crops of labelled rasters.

Fine-tuning: :func:`crop_loaders` turns the run's labelled datasets (:class:`rsseg.labels.Domain`)
into a training loader of random crops centred on labelled pixels (one item per domain when
several) and validation loaders of grid crops holding labelled pixels.

Every item is normalised per band with the statistics that travel with the tiles and the bundle:
``(x - mean) / std`` in float32, missing band values (nodata, per band as in GDAL) set to 0 (the
band mean), as ``predict`` sees them. Arrays are ``(C, H, W)``.
Rasters are opened lazily once per DataLoader worker.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from rasterio.windows import Window
from torch.utils.data import DataLoader, Dataset

from rsseg.classes import IGNORE
from rsseg.config import FinetuneConfig
from rsseg.errors import InputError
from rsseg.io.raster import NoGeoreferencing, Scene, open_scene
from rsseg.tiling.windows import grid_windows

if TYPE_CHECKING:  # annotations only: labels pulls in the vector stack, models smp
    from rsseg.labels import Domain
    from rsseg.models.bundle import BandNorm


def normalize(pixels: np.ndarray, mean: np.ndarray, std: np.ndarray,
              missing: np.ndarray | None = None) -> np.ndarray:
    """``(C, H, W)`` any dtype → float32 ``(x - mean) / std``; values where ``missing`` (bool,
    ``(C, H, W)``) → 0."""
    mean = np.asarray(mean, dtype=np.float32)[:, None, None]
    std = np.asarray(std, dtype=np.float32)[:, None, None]
    out = (pixels.astype(np.float32) - mean) / std
    if missing is not None:
        out[missing] = 0.0
    return np.nan_to_num(out, copy=False)


def item_rng() -> np.random.Generator:
    """A generator drawn from torch's RNG: seeded by Lightning, different per worker and epoch."""
    return np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,)).item()))


class _LazyScenes:
    """Open rasters on first use in each process (rasterio handles do not cross processes)."""

    def __init__(self, nodata: float | None) -> None:
        self.nodata = nodata
        self._open: dict[Path, tuple[object, Scene]] = {}

    def __getstate__(self) -> dict:
        return {"nodata": self.nodata, "_open": {}}

    def get(self, path: Path) -> Scene:
        if path not in self._open:
            ctx = open_scene(path, nodata=self.nodata)
            with warnings.catch_warnings():  # the pipeline said so once; not once per tile
                warnings.simplefilter("ignore", NoGeoreferencing)
                self._open[path] = (ctx, ctx.__enter__())
        return self._open[path][1]

    def read(self, path: Path, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pixels ``(C, H, W)`` of ``window`` (default: all) and where a band value is missing."""
        scene = self.get(path)
        window = window or Window(0, 0, scene.info.width, scene.info.height)
        pixels = scene.read(window, boundless=True)
        return pixels, scene.band_missing(pixels)


class PretrainTiles(Dataset):
    """Unlabelled tiles → one pretext batch item each (``sampler(tile, rng, valid)``)."""

    def __init__(self, paths: Sequence[Path], mean: np.ndarray, std: np.ndarray,
                 nodata: float | None,
                 sampler: Callable[..., dict[str, np.ndarray]]) -> None:
        self.paths = list(paths)
        self.mean, self.std = mean, std
        self.sampler = sampler
        self.scenes = _LazyScenes(nodata)

    def __len__(self) -> int:
        return len(self.paths)

    def tile(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The normalised tile ``(C, H, W)`` float32 and its valid mask ``(H, W)``."""
        pixels, missing = self.scenes.read(self.paths[index])
        return normalize(pixels, self.mean, self.std, missing), ~missing.all(axis=0)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        tile, valid = self.tile(index)
        views = self.sampler(tile, item_rng(), valid)
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in views.items()}


def dihedral(x: np.ndarray, y: np.ndarray, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray]:
    """Random flip + rot90 applied to an image ``(C, H, W)`` and its labels ``(H, W)``."""
    k = int(rng.integers(4))
    x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k)
    if rng.random() < 0.5:
        x, y = x[:, :, ::-1], y[:, ::-1]
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


class LabelledCrops(Dataset):
    """Square crops of labelled rasters, each centred on a labelled pixel.

    Training items (``augment``) draw their centre at random among all ``centres``, so an epoch
    of ``length`` items covers the whole labelled area whatever its length; evaluation items
    take centre ``index`` as it is.

    ``sources`` pairs a raster path with its label array ``(H, W)`` (uint8 class *indices*,
    ``ignore`` = unlabelled) on that raster's grid; ``centres`` lists ``(source, row, col)``
    of labelled pixels to centre crops on. Nodata pixels become ``ignore``.

    ``balance`` (training items): a centre of class ``k`` is drawn with probability
    ``∝ n_k^-balance`` (``n_k`` = centres of that class), so 0 draws every labelled pixel
    alike and 1 every class alike (class-balanced sampling of sparse, imbalanced labels).
    ``jitter`` (training items): radiometric augmentation, safe for any band count: each
    band of a crop is scaled by ``1 + a`` and shifted by ``b`` (normalised units), with
    ``a, b ~ N(0, jitter)`` drawn per band and crop; missing band values stay 0.
    ``band_dropout`` (training items): the probability that one band of a crop, drawn at
    random, is missing (0, the band mean) while the other bands stay valid, as past the edge of
    a band's footprint (e.g. a Landsat-7 band 7 frame): the model learns to classify pixels
    with a band missing, as ``predict`` will see them.
    """

    def __init__(self, sources: Sequence[tuple[Path, np.ndarray]], centres: np.ndarray,
                 crop: int, mean: np.ndarray, std: np.ndarray, nodata: float | None,
                 ignore: int = 255, augment: bool = True, length: int | None = None,
                 balance: float = 0.0, jitter: float = 0.0, band_dropout: float = 0.0
                 ) -> None:
        self.sources = list(sources)
        self.centres = centres
        self.crop, self.ignore, self.augment = crop, ignore, augment
        self.mean, self.std = mean, std
        self.length = length or len(centres)
        self.jitter, self.band_dropout = jitter, band_dropout
        self.probs = centre_weights(self.sources, centres, ignore, balance) if balance else None
        self.scenes = _LazyScenes(nodata)

    def __len__(self) -> int:
        return self.length

    def window(self, index: int, rng: np.random.Generator | None) -> tuple[int, Window]:
        """Training (``rng``): a random centre, jittered; evaluation: centre ``index``."""
        if rng is None:
            pick = index
        elif self.probs is None:
            pick = int(rng.integers(len(self.centres)))
        else:
            pick = int(rng.choice(len(self.centres), p=self.probs))
        src, row, col = (int(v) for v in self.centres[pick])
        jitter = rng.integers(-self.crop // 4, self.crop // 4 + 1, 2) if rng else (0, 0)
        top = row - self.crop // 2 + int(jitter[0])
        left = col - self.crop // 2 + int(jitter[1])
        return src, Window(left, top, self.crop, self.crop)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = item_rng() if self.augment else None
        src, window = self.window(index, rng)
        path, labels = self.sources[src]
        pixels, missing = self.scenes.read(path, window)
        y = crop_labels(labels, window, self.ignore)
        y[missing.all(axis=0)] = self.ignore
        x = normalize(pixels, self.mean, self.std)
        if rng is not None and self.band_dropout and rng.random() < self.band_dropout:
            missing[int(rng.integers(len(x)))] = True
        if rng is not None and self.jitter:
            bands = (len(x), 1, 1)
            x = x * (1 + rng.normal(0, self.jitter, bands)).astype(np.float32) \
                + rng.normal(0, self.jitter, bands).astype(np.float32)
        x[missing] = 0.0
        if rng is not None:
            x, y = dihedral(x, y, rng)
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


def centre_weights(sources: Sequence[tuple[Path, np.ndarray]], centres: np.ndarray,
                   ignore: int, balance: float) -> np.ndarray:
    """Sampling probability of each centre: ``∝ n_k^-balance`` for a centre of class ``k``."""
    classes = np.array([sources[int(s)][1][int(r), int(c)] for s, r, c in centres],
                       dtype=np.int64).reshape(-1)
    if not len(classes):
        return np.zeros(0)
    counts = np.bincount(classes, minlength=ignore + 1).astype(np.float64)
    weights = counts[classes] ** -balance
    return weights / weights.sum()


def crop_labels(labels: np.ndarray, window: Window, fill: int) -> np.ndarray:
    """``labels[window]`` with the parts outside the array filled with ``fill``."""
    out = np.full((int(window.height), int(window.width)), fill, dtype=labels.dtype)
    r0, c0 = int(window.row_off), int(window.col_off)
    rs, cs = max(r0, 0), max(c0, 0)
    re = min(r0 + int(window.height), labels.shape[0])
    ce = min(c0 + int(window.width), labels.shape[1])
    if re > rs and ce > cs:
        out[rs - r0:re - r0, cs - c0:ce - c0] = labels[rs:re, cs:ce]
    return out


Sources = Sequence[tuple[Path, np.ndarray]]


def labelled_pixels(sources: Sources, select: Callable[[np.ndarray], np.ndarray] | None = None
                    ) -> np.ndarray:
    """``(N, 3)`` int64 ``(source, row, col)`` of the pixels where ``select(labels)`` holds
    (default: every labelled pixel), source by source in row-major order."""
    parts = [np.column_stack([np.full(len(r), i), r, c])
             for i, (_, labels) in enumerate(sources)
             for r, c in [np.nonzero(labels != IGNORE if select is None else select(labels))]]
    return np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.int64)


def crop_centres(sources: Sources, limit: int, seed: int) -> np.ndarray:
    """``(N, 3)`` (source, row, col) of labelled pixels, at most ``limit`` (random subset)."""
    centres = labelled_pixels(sources)
    if len(centres) > limit:
        centres = centres[np.random.default_rng(seed).choice(len(centres), limit, replace=False)]
    return centres


def grid_centres(sources: Sources, size: int) -> np.ndarray:
    """Centres of the ``size`` grid windows that hold at least one labelled pixel."""
    out = []
    for i, (_, labels) in enumerate(sources):
        rows, cols = labels.shape
        for w in grid_windows(max(cols, size), max(rows, size), size, size):
            r0, c0 = int(w.row_off), int(w.col_off)
            if (labels[r0:r0 + size, c0:c0 + size] != IGNORE).any():
                out.append((i, r0 + size // 2, c0 + size // 2))
    return np.array(out, dtype=np.int64).reshape(-1, 3)


class PerDomain(Dataset):
    """One item of every domain's dataset per index (shorter ones wrap around)."""

    def __init__(self, datasets: Sequence[Dataset]) -> None:
        self.datasets = list(datasets)

    def __len__(self) -> int:
        return max(len(d) for d in self.datasets)

    def __getitem__(self, index: int) -> tuple:
        return tuple(d[index % len(d)] for d in self.datasets)


@dataclass
class CropLoaders:
    """The loaders of a fine-tuning run; ``val_domains``: the domain of each validation loader."""

    train: DataLoader
    val: list[DataLoader]
    val_domains: list[int]


def crop_loaders(domains: Sequence[Domain], norms: Sequence[Sequence[BandNorm]],
                 config: FinetuneConfig, nodata: float | None) -> CropLoaders:
    """Training crops centred on labelled pixels (``data.max_centres`` of them; an epoch of
    ``steps_per_epoch`` batches or one item per centre), augmented as ``config.data`` says;
    validation crops on the grid of each domain's held-out labels. ``InputError`` for a domain
    without a labelled training pixel."""
    bs, workers, crop = config.trainer.batch_size, config.trainer.num_workers, config.data.crop_size
    trains, val_loaders, val_domains = [], [], []
    for d, (domain, norm) in enumerate(zip(domains, norms, strict=True)):
        mean = np.array([b.mean for b in norm])
        std = np.array([b.std for b in norm])
        sources = domain.sources
        centres = crop_centres(sources.train, config.data.max_centres, config.trainer.seed)
        if not len(centres):
            where = f" in domain {domain.name!r}" if domain.name else ""
            raise InputError(f"no labelled pixel left for training{where}", "add labels")
        length = (config.trainer.steps_per_epoch * bs if config.trainer.steps_per_epoch
                  else len(centres))
        trains.append(LabelledCrops(sources.train, centres, crop, mean, std, nodata,
                                    length=length, balance=config.data.balance,
                                    jitter=config.data.jitter,
                                    band_dropout=config.data.band_dropout))
        val_centres = grid_centres(sources.val, crop)
        if len(val_centres):
            val = LabelledCrops(sources.val, val_centres, crop, mean, std, nodata, augment=False)
            val_loaders.append(DataLoader(val, batch_size=bs, num_workers=workers,
                                          persistent_workers=workers > 0))
            val_domains.append(d)
    train = trains[0] if len(trains) == 1 else PerDomain(trains)
    loader = DataLoader(train, batch_size=bs, shuffle=True, drop_last=len(train) > bs,
                        num_workers=workers, persistent_workers=workers > 0)
    return CropLoaders(loader, val_loaders, val_domains)
