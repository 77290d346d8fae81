"""The pretext interface: a self-supervised objective for ``rsseg pretrain``.

A pretext is one module in ``rsseg/pretexts/`` holding one ``Pretext`` subclass registered in
the method registry (:mod:`rsseg.registry`, ``@register``). The engine never branches on the
method:

    pretext = get_pretext(name, model, **cfg)           # ConfigError on a bad name/key/value
    pretext.check_data({"two_views"})                    # before training: labels? domains?
    pretext.bind_data(DataInfo(bands, mean, std))        # optional: the tiles' named bands
    sampler = pretext.sampler()                          # picklable; the dataset calls it in
    item = sampler(tile, rng, valid)                     # workers: dict of numpy arrays
    loss, logs = pretext(batch, model)                   # batch = default_collate(items)
    pretext.on_epoch_start(epoch, model)                 # per-epoch work (clustering, ...)
    embeddings = pretext.embed(images, model)            # {"global": (N, D), "local": (M, Cl)}

``pretext`` is an ``nn.Module`` holding only its own heads; the segmentation model is passed in
on each call and never stored, so the optimizer takes ``model`` and ``pretext`` parameters and
the exported weights are the model's alone. Pretexts that wrap another one, and the combination
of several ``--method`` names, are in :mod:`rsseg.pretexts.compose`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from rsseg.pretexts.features import extract_features
from rsseg.pretexts.views import Radiometry
from rsseg.registry import MethodConfig, check_needs, method_class, method_names, parse_config


@dataclass(frozen=True)
class DataInfo:
    """What a pretext may need to know about the tiles: band names and their normalisation.

    Tiles reach the sampler normalised as ``(x - mean) / std`` per band; ``mean``/``std`` undo
    that (e.g. for a spectral index on the original values).
    """

    band_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    white: tuple[float, ...] | None = None  # per band: 255 for 8-bit data, else its p98
    eight_bit: bool = False

    def __post_init__(self) -> None:
        if not len(self.band_names) == len(self.mean) == len(self.std):
            raise ValueError("DataInfo needs one name, mean and std per band")

    def radiometry(self) -> Radiometry:
        """What the views' photometric change needs to work on raw values."""
        white = self.white or tuple(m + 2 * s for m, s in zip(self.mean, self.std, strict=True))
        return Radiometry.of_bands(self.band_names, self.mean, self.std, white, self.eight_bit)


class Sampler(Protocol):
    """Dataset-side recipe of a pretext, run in DataLoader workers (must be picklable).

    Args:
        tile: ``(C, H, W)`` normalised float32 tile.
        rng: the only source of randomness (seed it per worker and item).
        valid: optional ``(H, W)`` bool mask of usable (non-nodata) pixels.

    Returns:
        One batch item: a dict of numpy arrays with fixed shapes.
    """

    def __call__(
        self, tile: np.ndarray, rng: np.random.Generator, valid: np.ndarray | None = None
    ) -> dict[str, np.ndarray]: ...


class Pretext(nn.Module, ABC):
    """One self-supervised objective. Subclasses are built as ``cls(config, model)``.

    Class attributes: ``name`` (registry key), ``kind`` ("pretext"), ``description`` (one line),
    ``reference`` (paper), ``needs`` (subset of ``DATA_NEEDS``), ``config_class``, ``stateful``
    (True when ``forward`` also updates state such as a queue, a bank or a momentum encoder, so
    it must run exactly once per training step), ``view_pipeline`` (True when ``sampler()``
    draws GLCNet's two views, a ``TwoViewSampler`` or ``MatchedViewSampler``: a wrapper of
    :mod:`rsseg.pretexts.compose` can then mask or perturb them).
    """

    name: ClassVar[str]
    kind: ClassVar[str] = "pretext"
    description: ClassVar[str]
    reference: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset({"two_views"})
    config_class: ClassVar[type[MethodConfig]]
    stateful: ClassVar[bool] = False
    view_pipeline: ClassVar[bool] = False
    embed_grid: ClassVar[int] = 4  # local embeddings: decoder pixels on a 4×4 grid per tile

    def __init__(self, config: MethodConfig) -> None:
        super().__init__()
        self.config = config
        self.radiometry: Radiometry | None = None  # set by bind_data

    @classmethod
    def check_data(cls, available: Collection[str]) -> None:
        """Raise ``ConfigError`` unless every kind of data the method needs is available."""
        check_needs(cls.name, cls.needs, available)

    @abstractmethod
    def sampler(self) -> Sampler:
        """The recipe the dataset applies to each tile to build this pretext's batch items."""

    @abstractmethod
    def forward(
        self, batch: Mapping[str, Tensor], model: nn.Module
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar loss and detached scalar logs (e.g. ``{"loss_global": ...}``) for one batch."""

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        """Hook before each epoch; pretexts with per-epoch work override it."""

    def bind_data(self, info: DataInfo) -> None:
        """Hook before ``sampler()``: the tiles' band names and normalisation (default: keep the
        radiometry that view samplers need to change colours on raw values).

        Raises ``ConfigError`` when the data cannot serve the config (e.g. a missing band).
        """
        self.radiometry = info.radiometry()

    @torch.no_grad()
    def embed(self, images: Tensor, model: nn.Module) -> dict[str, Tensor]:
        """Representations for the collapse diagnostic (call with the model in eval mode).

        Args:
            images: ``(B, C, H, W)`` normalised tiles.

        Returns:
            ``"global"``: ``(B, Cg)`` spatial mean of the global features; ``"local"``:
            ``(B·g², Cl)`` local features at a fixed ``g×g`` grid of pixels per tile.
        """
        maps = extract_features(model, images)
        h, w = maps.local.shape[-2:]
        g = self.embed_grid
        rows = ((torch.arange(g) + 0.5) * h / g).long()
        cols = ((torch.arange(g) + 0.5) * w / g).long()
        local = maps.local[:, :, rows[:, None], cols[None, :]]  # (B, Cl, g, g)
        return {
            "global": maps.global_.mean(dim=(2, 3)),
            "local": local.permute(0, 2, 3, 1).reshape(-1, local.shape[1]),
        }


def pretext_names() -> list[str]:
    """Every registered pretext name, sorted."""
    return method_names("pretext")


def pretext_class(name: str) -> type[Pretext]:
    """The pretext class registered as ``name``; ``ConfigError`` listing valid names if none."""
    return method_class(name, "pretext")


def get_pretext(name: str, model: nn.Module, **cfg: Any) -> Pretext:
    """Build pretext ``name`` for ``model`` from config keys ``cfg`` (defaults for the rest)."""
    config = parse_config(name, cfg)
    return pretext_class(name)(config, model)  # type: ignore[call-arg]
