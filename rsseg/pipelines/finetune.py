"""``rsseg finetune``: supervised training on sparse labels → a model bundle for ``predict``.

Labels come as a raster on the scene grid, vector points/polygons, or a tile folder where only
some tiles have masks (:mod:`rsseg.labels`). Training crops are centred on labelled pixels; the
loss ignores unlabelled and nodata pixels. A held-out part of the labels (spatial blocks of a
scene, or whole tiles/groups of a tile folder) picks the best checkpoint by validation OA, as in
GLCNet's fine-tuning protocol. ``--init RUN`` loads a pretrained backbone (encoder + ASPP) and
starts a fresh decoder and head (``init_decoder``: also the decoder, where the pretext trained it).

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

The recipe (:func:`finetune`): label sources per domain (:mod:`rsseg.labels`), their band
normalisation, model specs checked against crop size and bands, models (``--init``: the
pretrained backbone), regularizers, crop loaders (:mod:`rsseg.training.data`), fitting, the best
weights reloaded, one bundle per domain.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from rasterio.errors import NotGeoreferencedWarning
from torch import nn

from rsseg.classes import IGNORE, read_classes
from rsseg.config import FinetuneConfig, ModelConfig
from rsseg.errors import InputError, UsageError
from rsseg.io.raster import open_scene
from rsseg.labels import Domain, as_paths, check_labels_hold_data, training_domains
from rsseg.models.backbone import BackboneMeta, load_backbone, read_backbone
from rsseg.models.bundle import BandNorm, BundleMeta, ClassEntry, save_bundle
from rsseg.models.factory import ModelSpec, build_model, required_multiple
from rsseg.regularizers.base import (
    Regularizer,
    SegInfo,
    check_regularizers,
    get_regularizer,
    regularizer_class,
)
from rsseg.regularizers.multidomain import MultiDomainModel, domain_record
from rsseg.training.data import CropLoaders, crop_loaders
from rsseg.training.engine import build_trainer
from rsseg.training.guards import NonFiniteLoss
from rsseg.training.modules import SegmentationModule, trained_weights
from rsseg.training.run_folder import run_folder

BUNDLE = "model.rsseg"


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
    check_regularizers(config.regularizers)
    config = _resolve_model(config, init)
    classes = read_classes(classes_file) if classes_file else None
    domains = training_domains(config, list(scenes or []), as_paths(tiles), labels, label_column,
                               classes, nodata)
    _check_methods_have_data(config, domains)
    backbone = read_backbone(init)[1] if init else None
    norms = [backbone.bands if backbone else d.sources.band_norms(nodata) for d in domains]
    for domain in domains:
        check_labels_hold_data(domain.sources.train, nodata)
    specs = _model_specs(config, domains, norms, backbone, nodata)
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    model = _build_model(specs, init, config.init_decoder)
    names = tuple(d.name for d in domains)
    info = SegInfo(tuple(s.classes for s in specs), names, config.trainer.epochs, IGNORE)
    regularizers = [get_regularizer(name, model, info, **params)
                    for name, params in config.regularizers.items()]
    inputs = [*(scenes or []), *as_paths(tiles), *as_paths(labels), init, classes_file,
              *(p for d in config.domains for p in (d.tiles, *d.scenes, d.labels, d.classes))]
    with run_folder(out, config, resume=resume, overwrite=overwrite,
                    inputs=[p for p in inputs if p is not None]) as ckpt:
        loaders = crop_loaders(domains, norms, config, nodata)
        trainer = _fit(out, config, model, specs, domains, regularizers, loaders, ckpt)
    if not trainer.is_global_zero:  # DDP: rank zero writes the bundle
        return out / BUNDLE
    best = out / "checkpoints" / ("best.ckpt" if loaders.val else "last.ckpt")
    model.load_state_dict(trained_weights(best, ema=bool(config.ema)))
    _write_bundles(out, model, config, domains, specs, norms)
    return out / BUNDLE


def with_methods(config: FinetuneConfig, methods: Sequence[str]) -> FinetuneConfig:
    """``config`` with the ``--method`` names added to its regularizers (default params)."""
    table = dict(config.regularizers)
    for name in methods:
        table.setdefault(name, {})
    return config.model_copy(update={"regularizers": table})


def _resolve_model(cfg: FinetuneConfig, init: Path | None) -> FinetuneConfig:
    """With ``--init`` and no model chosen in the config, take the backbone's architecture."""
    if init is None or cfg.model != ModelConfig():
        return cfg
    _, meta = read_backbone(init)
    model = ModelConfig(arch=meta.arch, encoder=meta.encoder, kwargs=meta.kwargs)
    return cfg.model_copy(update={"model": model})


def _check_methods_have_data(config: FinetuneConfig, domains: list[Domain]) -> None:
    """Every regularizer finds the data it needs; several datasets need one that uses them."""
    available = {"labels"} | ({"domains"} if len(domains) > 1 else set())
    for name in config.regularizers:
        regularizer_class(name).check_data(available)
    if len(domains) > 1 and not any("domains" in regularizer_class(n).needs
                                    for n in config.regularizers):
        raise UsageError(f"{len(domains)} labelled datasets given: training on several at once "
                         "is the multidomain method", "add --method multidomain, or give one")


def _model_specs(config: FinetuneConfig, domains: list[Domain], norms: list[list[BandNorm]],
                 backbone: BackboneMeta | None, nodata: float | None) -> list[ModelSpec]:
    """One model spec per domain, checked: the crop size suits the model, every domain's data
    have the bands the normalisation (or the pretrained backbone) expects."""
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
    return specs


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


def _build_model(specs: list[ModelSpec], init: Path | None, decoder: bool) -> nn.Module:
    """The model to train: one per spec (several: a multi-domain model), the first with the
    pretrained backbone of ``init`` (and its pretrained decoder if ``decoder``)."""
    models = [build_model(spec) for spec in specs]
    if init:
        load_backbone(models[0], specs[0], init, decoder=decoder)
    return models[0] if len(models) == 1 else MultiDomainModel(models)


def _fit(out: Path, config: FinetuneConfig, model: nn.Module, specs: list[ModelSpec],
         domains: list[Domain], regularizers: list[Regularizer], loaders: CropLoaders,
         ckpt: Path | None) -> L.Trainer:
    """Train (best checkpoint by validation OA when there is a validation set)."""
    monitor = "val_oa" if loaders.val else None
    trainer = build_trainer(config.trainer, out, "fine-tune", monitor=monitor,
                            callbacks=[NonFiniteLoss()])
    module = SegmentationModule(model, [s.classes for s in specs], IGNORE, config.optim,
                                config.trainer.epochs, regularizers=regularizers,
                                loss=config.loss,
                                class_counts=[d.sources.class_counts() for d in domains],
                                domains=tuple(d.name for d in domains),
                                val_domains=loaders.val_domains,
                                encoder_lr_scale=config.encoder_lr_scale, ema=config.ema)
    val_arg = (loaders.val[0] if len(loaders.val) == 1 else loaders.val) or None
    with warnings.catch_warnings():  # training reads pixels: georeferencing is irrelevant
        warnings.filterwarnings("ignore", message=".*no CRS/georeferencing.*")
        warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
        warnings.filterwarnings("ignore", message=".*`validation_step` but have no .*")
        trainer.fit(module, loaders.train, val_arg, ckpt_path=ckpt)
    return trainer


def _write_bundles(out: Path, model: nn.Module, config: FinetuneConfig, domains: list[Domain],
                   specs: list[ModelSpec], norms: list[list[BandNorm]]) -> None:
    """One bundle per domain: ``model.rsseg``, then ``model.<domain>.rsseg``."""
    names = tuple(d.name for d in domains)
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
