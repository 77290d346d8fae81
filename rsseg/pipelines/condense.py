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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
import yaml
from rasterio.errors import NotGeoreferencedWarning
from torch import Tensor

from rsseg.classes import IGNORE, ClassTable, read_classes
from rsseg.config import FinetuneConfig, FinetuneData
from rsseg.errors import InputError, UsageError
from rsseg.inference.device import resolve_device
from rsseg.io.atomic import atomic_dir, check_output
from rsseg.io.gdal_errors import gdal_write_errors
from rsseg.io.owned import CONDENSED, check_replaceable
from rsseg.models.bundle import BandNorm
from rsseg.pipelines.finetune import (
    FOLDER_BANDS,
    FOLDER_CLASSES,
    LabelSources,
    check_labels_hold_data,
    scene_band_norms,
    scene_sources,
    tile_sources,
)
from rsseg.regularizers.dcc import ConvNet, DCCConfig, gradient_distance, matched_parameters
from rsseg.training.data import LabelledCrops

Progress = Callable[[int, int, float], None]
"""Called as ``progress(iteration, iterations, mean matching loss)`` after each iteration."""


@dataclass
class RealPool:
    """Real crops per class index, normalised: ``x[c]`` ``(n_c, C, S, S)``, ``y[c]`` ``(n_c, S,
    S)`` int64 class indexes (255 unlabelled)."""

    x: dict[int, Tensor]
    y: dict[int, Tensor]

    def batch(self, c: int, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        order = torch.randperm(len(self.x[c]), generator=gen)[:n]
        return self.x[c][order], self.y[c][order]


def real_pool(sources: LabelSources, norms: list[BandNorm], size: int, per_class: int,
              nodata: float | None, seed: int) -> RealPool:
    """Up to ``per_class`` crops of ``size`` px centred on random labelled pixels of each class."""
    rng = np.random.default_rng(seed)
    mean = np.array([b.mean for b in norms])
    std = np.array([b.std for b in norms])
    xs: dict[int, Tensor] = {}
    ys: dict[int, Tensor] = {}
    for c in range(len(sources.classes)):
        centres = np.concatenate([
            np.column_stack([np.full(len(r), i), r, col])
            for i, (_, labels) in enumerate(sources.train)
            for r, col in [np.nonzero(labels == c)]] or [np.zeros((0, 3), dtype=np.int64)])
        if not len(centres):
            continue
        if len(centres) > per_class:
            centres = centres[rng.choice(len(centres), per_class, replace=False)]
        crops = LabelledCrops(sources.train, centres, size, mean, std, nodata, augment=False)
        items = [crops[i] for i in range(len(crops))]
        xs[c] = torch.stack([x for x, _ in items])
        ys[c] = torch.stack([y for _, y in items])
    return RealPool(xs, ys)


def masked_ce(logits: Tensor, labels: Tensor, c: int | None = None) -> Tensor:
    """Mean cross-entropy over the pixels labelled ``c`` (all labelled pixels if None)."""
    target = labels if c is None else torch.where(labels == c, labels, IGNORE)
    count = (target != IGNORE).sum()
    if not bool(count):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum") / count


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
        norms = sources.norms or scene_band_norms([p for p, _ in sources.train], nodata)
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
            images, label_maps, present = _initial(pool, config,
                                                   torch.Generator().manual_seed(config.seed),
                                                   real_labels=True)
            history: list[float] = []
        else:
            images, label_maps, present, history = _learn(pool, len(norms),
                                                          len(sources.classes), config, device,
                                                          progress)
        with gdal_write_errors(out):  # a full disk: one line, and the folder does not appear
            _write(tmp, images, label_maps, present, sources.classes, norms, config, history,
                   "random-subset" if random_subset else "dcc", time.perf_counter() - start)
    return out


def _initial(pool: RealPool, cfg: DCCConfig, gen: torch.Generator, real_labels: bool
             ) -> tuple[Tensor, Tensor, list[int]]:
    """``per_class`` real crops per class (repeated when a class has fewer), their label maps
    (real, or uniform: every pixel the tile's class) and the classes present."""
    present = sorted(pool.x)
    n = cfg.per_class
    images, maps = [], []
    for c in present:
        x, y = pool.batch(c, n, gen)
        reps = -(-n // len(x))
        x, y = x.repeat(reps, 1, 1, 1)[:n], y.repeat(reps, 1, 1)[:n]
        images.append(x)
        maps.append(y if real_labels else torch.full_like(y, c))
    return torch.cat(images), torch.cat(maps), present


def _learn(pool: RealPool, channels: int, num_classes: int, cfg: DCCConfig,
           device: torch.device, progress: Progress | None
           ) -> tuple[Tensor, Tensor, list[int], list[float]]:
    """The DCC loop (see :mod:`rsseg.regularizers.dcc`): synthetic tiles, label maps, the
    classes present (tile ``i`` belongs to ``present[i // per_class]``), loss history."""
    gen = torch.Generator().manual_seed(cfg.seed)
    n = cfg.per_class
    images, maps, present = _initial(pool, cfg, gen, real_labels=cfg.labels == "real")
    if cfg.init == "noise":
        images = torch.randn_like(images)
    syn = images.to(device).requires_grad_(True)
    syn_labels = maps.to(device)
    owner = torch.repeat_interleave(torch.tensor(present), n).to(device)  # class of each tile
    real = {c: (pool.x[c].to(device), pool.y[c].to(device)) for c in present}
    optimizer = torch.optim.SGD([syn], lr=cfg.lr_img, momentum=0.5)
    inner_loop, net_steps = cfg.loops()
    history = []
    for outer in range(cfg.iterations):
        net = ConvNet(channels, num_classes, cfg.net_width, cfg.net_depth).to(device)
        net.train()
        params = matched_parameters(net)
        net_optimizer = torch.optim.SGD(net.parameters(), lr=cfg.lr_net)
        total = 0.0
        for inner in range(inner_loop):
            joint = cfg.contrast and (outer >= cfg.outer_warmup or inner >= cfg.inner_warmup)
            loss = _matching_loss(net, params, syn, syn_labels, owner, real, present, cfg,
                                  joint, gen)
            # Only the tiles' gradient: loss.backward() would also fill the network's .grad
            # (second-order terms for every parameter) that the next network step discards.
            (syn.grad,) = torch.autograd.grad(loss, syn)
            optimizer.step()
            total += loss.item()
            if inner == inner_loop - 1:
                break
            _train_net(net, net_optimizer, syn.detach(), syn_labels, net_steps,
                       cfg.batch_train, gen)
        history.append(total / inner_loop)
        if progress:
            progress(outer + 1, cfg.iterations, history[-1])
    return syn.detach().cpu(), syn_labels.cpu(), present, history


CHUNK = 16
"""Tiles per forward pass when a gradient is taken over more tiles: the network treats every
tile on its own (instance norm, no batch statistics), so the gradient of a loss summed over
tiles is the sum of the gradients of its chunks. Chunks keep the activations (16 tiles of
64 px × 32 channels: 8 MB) in cache; whole batches of 64-112 tiles measured ~2× slower per
tile on the 2-core CPU, most of all through the matching's double backward."""


def _gradient(net: torch.nn.Module, params: list, x: Tensor, labels: Tensor, c: int | None,
              create_graph: bool = False) -> tuple[Tensor, ...]:
    """``∇ masked_ce(net(x), labels, c)`` w.r.t. ``params``, :data:`CHUNK` tiles at a time."""
    target = labels if c is None else torch.where(labels == c, labels, IGNORE)
    count = int((target != IGNORE).sum())
    if not count:  # no pixel of the class: the zero gradient, still part of the graph
        return torch.autograd.grad(masked_ce(net(x), labels, c), params,
                                   create_graph=create_graph)
    grads: tuple[Tensor, ...] = ()
    for start in range(0, len(x), CHUNK):
        part = F.cross_entropy(net(x[start:start + CHUNK]), target[start:start + CHUNK],
                               ignore_index=IGNORE, reduction="sum") / count
        g = torch.autograd.grad(part, params, create_graph=create_graph)
        grads = tuple(a + b for a, b in zip(grads, g, strict=True)) if grads else g
    return grads


def _real_gradient(net: torch.nn.Module, params: list, real: dict, c: int, cfg: DCCConfig,
                   gen: torch.Generator) -> tuple[Tensor, ...]:
    """``∇L_c(real_c)``: the CE over the class-``c`` pixels of ``batch_real`` random crops of
    class ``c``."""
    x, y = real[c]
    order = torch.randperm(len(x), generator=gen)[:cfg.batch_real].to(x.device)
    return tuple(g.detach() for g in _gradient(net, params, x[order], y[order], c))


def _mean_real_gradient(net: torch.nn.Module, params: list, real: dict, present: list[int],
                        cfg: DCCConfig, gen: torch.Generator) -> tuple[Tensor, ...]:
    """``(1/K)·Σ_c ∇L_c(real_c)``, class by class (a class's batch is one pass; one pass over
    every class's batch measured slower, see :data:`CHUNK`)."""
    total: tuple[Tensor, ...] = ()
    for c in present:
        g = _real_gradient(net, params, real, c, cfg, gen)
        total = tuple(a + b for a, b in zip(total, g, strict=True)) if total else g
    return tuple(g / len(present) for g in total)


def _matching_loss(net: torch.nn.Module, params: list, syn: Tensor, syn_labels: Tensor,
                   owner: Tensor, real: dict, present: list[int], cfg: DCCConfig, joint: bool,
                   gen: torch.Generator) -> Tensor:
    """DCC's joint matching (``joint``) or DC's class-wise matching, one synthetic update."""
    if joint:
        mean_real = _mean_real_gradient(net, params, real, present, cfg, gen)
        gw_syn = _gradient(net, params, syn, syn_labels, None, create_graph=True)
        return gradient_distance(gw_syn, mean_real)
    loss = syn.new_zeros(())
    for c in present:
        gw_real = _real_gradient(net, params, real, c, cfg, gen)
        mine = owner == c if cfg.labels == "uniform" else torch.ones_like(owner, dtype=bool)
        gw_syn = _gradient(net, params, syn[mine], syn_labels[mine], c, create_graph=True)
        loss = loss + gradient_distance(gw_syn, gw_real)
    return loss


def _train_net(net: torch.nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
               steps: int, batch: int, gen: torch.Generator) -> None:
    """``steps`` epochs of SGD on the synthetic set (DC's inner network update); a batch's
    gradient accumulates over chunks of :data:`CHUNK` tiles (the same gradient)."""
    for _ in range(steps):
        order = torch.randperm(len(x), generator=gen).to(x.device)
        for start in range(0, len(x), batch):
            chosen = order[start:start + batch]
            xb, yb = x[chosen], y[chosen]
            optimizer.zero_grad()
            count = int((yb != IGNORE).sum())
            for first in range(0, len(xb) if count else 0, CHUNK):
                (F.cross_entropy(net(xb[first:first + CHUNK]), yb[first:first + CHUNK],
                                 ignore_index=IGNORE, reduction="sum") / count).backward()
            optimizer.step()


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
    tag = json.dumps(classes.to_records())
    size = images.shape[-1]
    profile = {"driver": "GTiff", "width": size, "height": size, "compress": "deflate"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        for i, (x, y) in enumerate(zip(images.numpy(), label_maps.numpy(), strict=True)):
            class_id = int(ids[present[i // cfg.per_class]])
            stem = f"syn_{class_id:03d}_{i % cfg.per_class:04d}"
            pixels = (x * std + mean).astype(np.float32)
            with rasterio.open(folder / "images" / f"{stem}.tif", "w", count=len(norms),
                               dtype="float32", predictor=3, **profile) as dst:
                dst.write(pixels)
                for band, norm in enumerate(norms, start=1):
                    dst.set_band_description(band, norm.name)
            with rasterio.open(folder / "labels" / f"{stem}.tif", "w", count=1, dtype="uint8",
                               nodata=IGNORE, **profile) as dst:
                dst.write(lut[y.astype(np.uint8)][None])
                dst.write_colormap(1, classes.colormap())
                dst.update_tags(CLASSES=tag)
    (folder / FOLDER_CLASSES).write_text(yaml.safe_dump({"classes": classes.to_records()},
                                                        sort_keys=False))
    (folder / FOLDER_BANDS).write_text(json.dumps(
        {"bands": [b.model_dump() for b in norms]}, indent=2))
    (folder / "condense.json").write_text(json.dumps({
        "method": method, "config": cfg.model_dump(mode="json"),
        "classes": [classes.classes[c].name for c in present],
        "tiles": len(images), "loss": history,
        "seconds": round(seconds, 1),  # building the set (the learning loop for dcc)
        "threads": torch.get_num_threads(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }, indent=2))
