"""``rsseg pretrain``: self-supervised pretraining of a segmentation model on unlabelled tiles.

tiles → normalised tiles (tile-set statistics) → the pretext's sampler (e.g. GLCNet's two views
with pixel correspondence) → Lightning (checkpoints, resume, DDP, mixed precision) → the exported
backbone with band/statistics metadata in ``RUN/backbone.safetensors``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader

from rsseg.config import PretrainConfig
from rsseg.errors import InputError
from rsseg.io.tileset import TileSet, load_tileset
from rsseg.models.backbone import BackboneMeta, decoder_keys, export_backbone
from rsseg.models.bundle import BandNorm
from rsseg.models.factory import ModelSpec, build_model, required_multiple
from rsseg.pretexts.base import DataInfo, Pretext, get_pretext
from rsseg.pretexts.compose import pretext_label, with_view_size
from rsseg.training.data import PretrainTiles
from rsseg.training.diagnostics import SpectrumMonitor
from rsseg.training.engine import build_trainer
from rsseg.training.guards import NonFiniteLoss
from rsseg.training.modules import PretrainModule
from rsseg.training.run_folder import run_folder

LOCAL_FEATURES = 64  # GLCNet builds the pretraining model with classes=64 (official code)


def band_norms(tileset: TileSet) -> list[BandNorm]:
    """The tile set's per-band normalisation, as stored in backbones and bundles."""
    return [BandNorm(name=n, mean=float(m), std=float(s))
            for n, m, s in zip(tileset.band_names, tileset.mean, tileset.std, strict=True)]


class ExportBackbone(Callback):
    """Export ``RUN/backbone.safetensors`` at the end of every epoch (rank zero), with the
    decoder when the pretext's loss reaches it (GLCNet's local branch; SimCLR's pooled ASPP does
    not), as the gradients of the first backward pass show."""

    def __init__(self, run: Path, meta: BackboneMeta) -> None:
        self.run, self.meta = run, meta
        self.decoder_trained: bool | None = None

    def on_after_backward(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.decoder_trained is None:
            decoder = decoder_keys(module.model)
            self.decoder_trained = any(p.grad is not None for k, p
                                       in module.model.named_parameters() if k in decoder)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            meta = self.meta.model_copy(update={"epochs": trainer.current_epoch + 1,
                                                "decoder": bool(self.decoder_trained)})
            export_backbone(module.model, meta, self.run)


def data_info(tileset: TileSet) -> DataInfo:
    """Band names, normalisation and "white" (255 for 8-bit tiles, else p98) of a tile set."""
    eight_bit = tileset.dtype == "uint8"
    white = tuple(255.0 if eight_bit else float(s.p98 if s.p98 is not None else (s.max or 1.0))
                  for s in tileset.stats)
    return DataInfo(tileset.band_names, tuple(map(float, tileset.mean)),
                    tuple(map(float, tileset.std)), white, eight_bit)


def diagnostic_images(dataset: PretrainTiles, count: int, size: int) -> torch.Tensor:
    """A fixed, evenly spaced sample of tiles, centre-cropped to ``size``: ``(N, C, S, S)``."""
    picks = np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int)
    tiles = []
    for i in np.unique(picks):
        tile, _ = dataset.tile(int(i))
        top, left = (tile.shape[1] - size) // 2, (tile.shape[2] - size) // 2
        tiles.append(tile[:, max(top, 0):max(top, 0) + size, max(left, 0):max(left, 0) + size])
    return torch.from_numpy(np.stack(tiles))


@dataclass
class Pretraining:
    """Everything a pretraining run trains on: model, pretext (heads) and dataset."""

    spec: ModelSpec
    model: nn.Module
    pretext: Pretext
    dataset: PretrainTiles
    tileset: TileSet

    def loader(self, config: PretrainConfig) -> DataLoader:
        batch = min(config.trainer.batch_size, len(self.dataset))
        workers = config.trainer.num_workers
        return DataLoader(self.dataset, batch_size=batch, shuffle=True, drop_last=True,
                          num_workers=workers, persistent_workers=workers > 0,
                          pin_memory=torch.cuda.is_available())


def build_pretraining(tiles_dir: str | Path, config: PretrainConfig) -> Pretraining:
    """Check the tiles against the config and build model, pretext and dataset."""
    tileset = load_tileset(tiles_dir)
    spec = ModelSpec(arch=config.model.arch, encoder=config.model.encoder,
                     in_channels=tileset.band_count, classes=LOCAL_FEATURES,
                     kwargs=config.model.kwargs)
    multiple = required_multiple(spec)
    size = config.data.view_size
    if size % multiple:
        raise InputError(f"data.view_size {size} is not a multiple of {multiple}, "
                         f"which {spec.arch}/{spec.encoder} requires",
                         f"use e.g. --set data.view_size={size // multiple * multiple or multiple}")
    if tileset.tile_size is not None and tileset.tile_size < size:
        raise InputError(f"tiles of {tileset.tile_size} px are smaller than data.view_size {size}",
                         "tile with a larger --size or lower data.view_size")
    if len(tileset.paths) < 2:
        raise InputError(f"{tiles_dir}: contrastive pretraining needs at least 2 tiles, found "
                         f"{len(tileset.paths)}", "tile more scenes or a smaller --size")
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    model = build_model(spec)
    params = with_view_size(config.pretext.name, config.pretext.params, size)
    pretext = get_pretext(config.pretext.name, model, **params)
    pretext.check_data({"two_views"})
    pretext.bind_data(data_info(tileset))
    dataset = PretrainTiles(tileset.paths, tileset.mean, tileset.std, tileset.nodata,
                            pretext.sampler())
    return Pretraining(spec, model, pretext, dataset, tileset)


def pretrain(tiles_dir: str | Path, out: str | Path, config: PretrainConfig,
             resume: bool = False, overwrite: bool = False) -> Path:
    """Pretrain ``config.model`` with ``config.pretext`` on the tiles; return the run folder."""
    out = Path(out)
    job = build_pretraining(tiles_dir, config)
    with run_folder(out, config, resume=resume, overwrite=overwrite) as ckpt:
        label = pretext_label(config.pretext.name, config.pretext.params)  # e.g. glcnet+claws
        meta = BackboneMeta(arch=job.spec.arch, encoder=job.spec.encoder,
                            kwargs=job.spec.kwargs, bands=band_norms(job.tileset),
                            pretext=label, epochs=0)
        images = diagnostic_images(job.dataset, config.data.diagnostic_samples,
                                   config.data.view_size)
        callbacks = [SpectrumMonitor(images, out), ExportBackbone(out, meta), NonFiniteLoss()]
        trainer = build_trainer(config.trainer, out, f"pretrain {label}",
                                callbacks=callbacks)
        module = PretrainModule(job.model, job.pretext, config.optim, config.trainer.epochs)
        trainer.fit(module, job.loader(config), ckpt_path=ckpt)
    return out
