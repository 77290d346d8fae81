"""CLAWS: contrast under a hard attention mask, negatives drawn within weak clusters.

Herrera-Gerena, Sundaresan, Hernández-Guzmán, et al., "CLAWS: Contrastive Learning with hard
Attention and Weak Supervision", arXiv 2112.00847 (no official code).

Shapes: views ``(B, C, S, S)``, masks ``(B, S, S)`` float (1 = attended), global map
``(B, Cg, h, w)``.

- Hard attention mask per tile (``mask``): ``ndvi`` = ``(NIR − red)/(NIR + red) > t`` on the
  de-normalised bands named ``red_band``/``nir_band``; ``none`` = every valid pixel. It
  follows the views' geometry through their source-pixel ids; a view whose mask covers less
  than ``min_fraction`` falls back to its valid pixels.
- Each view is multiplied by its mask (background = band mean, 0 in normalised units), and the
  global map is masked-average-pooled ``Σ m·F / Σ m`` with ``m`` the mask's area fraction per
  feature cell → ``(B, Cg)``; head ``Linear(Cg, 256) → ReLU → Linear(256, 64)``.
- Weak supervision: k-means (``clusters``) on the pooled view-1 vectors of the previous epoch
  (re-clustered each epoch after ``warmup_epochs``); each item's cluster is its nearest
  centroid, and NT-Xent (τ, standard denominator) only takes negatives from the anchor's
  cluster — the anchor-weighted mean of SimCLR on each cluster's sub-batch.

Around another pretext (``base``, e.g. ``glcnet``; ``rsseg pretrain --method glcnet --method
claws``): the views are drawn by the base's view pipeline (its ``view_size`` and ``views``), both
are multiplied by their masks before the base sees them, matched patches (GLCNet's local branch)
are centred only on pixels attended in view 1 (any matched pixel when none is), and
``L = L_base(masked views) + weight·L_claws`` with ``L_claws`` the clustered masked contrast
above (``weight`` 0: the masking alone). The base must use GLCNet's two-view pipeline (the
pretexts with ``view_pipeline``: ``rsseg.pretexts.compose.wrappable()``).

Deviations: the paper builds whole batches within one class; the engine draws random batches,
so here each batch is split into its clusters (same hard, same-cluster negatives, smaller
sub-batches: use a large batch). Tile-level weak labels are not read; clusters are k-means
pseudo-labels; pretraining has no labels, so no mask is drawn from them.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from rsseg.errors import ConfigError
from rsseg.losses.infonce import grouped_nt_xent
from rsseg.pretexts.base import DataInfo
from rsseg.pretexts.clustering import EmbeddingBank, kmeans
from rsseg.pretexts.compose import Wrapper, base_views
from rsseg.pretexts.features import feature_channels, global_features
from rsseg.pretexts.heads import mlp_head
from rsseg.pretexts.views import Radiometry, ViewConfig, make_view_pair, sample_patches
from rsseg.registry import MethodConfig, register


class CLAWSConfig(MethodConfig):
    """CLAWS settings."""

    mask: Literal["ndvi", "none"] = "ndvi"
    red_band: str = "red"  # band name (exact, or a word of it: "red" matches "B3_red")
    nir_band: str = "nir"
    ndvi_threshold: float = Field(0.2, ge=-1, le=1)
    min_fraction: float = Field(0.01, ge=0, le=1)
    clusters: int = Field(4, ge=1, le=4096)  # 1: no weak supervision (masked SimCLR)
    warmup_epochs: int = Field(1, ge=0, le=100_000)
    bank_size: int = Field(16384, ge=2, le=10_000_000)
    tau: float = Field(0.5, gt=0, le=10)
    view_size: int = Field(224, ge=16, le=4096)
    views: ViewConfig = Field(default_factory=ViewConfig)
    base: str | None = None  # a pretext to wrap (e.g. glcnet): masked views go through it
    base_params: dict[str, Any] = Field(default_factory=dict)
    weight: float = Field(1.0, ge=0, le=100)  # with a base: weight of the clustered contrast


def find_band(names: Collection[str], wanted: str, role: str) -> int:
    """Index of the band called ``wanted``: exact name, else the one band with that word.

    ``ConfigError`` naming the bands there are when none (or several) match.
    """
    names = list(names)
    exact = [i for i, n in enumerate(names) if n.lower() == wanted.lower()]
    if len(exact) == 1:
        return exact[0]
    words = [i for i, n in enumerate(names)
             if wanted.lower() in re.split(r"[^a-z0-9]+", n.lower())]
    if len(words) == 1:
        return words[0]
    shown = ", ".join(repr(n) for n in names)
    if not words:
        raise ConfigError(f"method 'claws': the NDVI mask needs a {role} band {wanted!r}, but "
                          f"the tiles have only {shown}",
                          fix=f"set {role.replace('-', '').lower()}_band to one of them, or "
                          "use mask: none")
    raise ConfigError(f"method 'claws': {role} band {wanted!r} is ambiguous among {shown}",
                      fix="give the full band name")


@dataclass(frozen=True)
class MaskedViewSampler:
    """Two views and their hard-attention masks: ``view1/view2`` ``(C, S, S)`` float32,
    ``mask1/mask2`` ``(S, S)`` float32 (1 attended, 0 ignored); with ``patch_size`` and
    ``patch_num`` also GLCNet's ``patches`` ``(P, 4)``, centred on pixels attended in view 1."""

    size: int
    views: ViewConfig = field(default_factory=ViewConfig)
    mask: str = "none"
    red: int = -1  # band indices and (mean, std) of red and NIR, for mask="ndvi"
    nir: int = -1
    red_norm: tuple[float, float] = (0.0, 1.0)
    nir_norm: tuple[float, float] = (0.0, 1.0)
    threshold: float = 0.2
    min_fraction: float = 0.01
    patch_size: int | None = None
    patch_num: int | None = None
    radiometry: Radiometry | None = None

    def tile_mask(self, tile: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        """``(H, W)`` bool attention mask of the whole tile."""
        ok = np.ones(tile.shape[1:], dtype=bool) if valid is None else valid.astype(bool)
        if self.mask == "ndvi":
            red = tile[self.red] * self.red_norm[1] + self.red_norm[0]
            nir = tile[self.nir] * self.nir_norm[1] + self.nir_norm[0]
            with np.errstate(divide="ignore", invalid="ignore"):
                ndvi = (nir - red) / (nir + red)
            return ok & (np.nan_to_num(ndvi, nan=-np.inf) > self.threshold)
        return ok

    def __call__(self, tile: np.ndarray, rng: np.random.Generator,
                 valid: np.ndarray | None = None) -> dict[str, np.ndarray]:
        pair = make_view_pair(tile, rng, self.size, self.views, valid, self.radiometry)
        attend = self.tile_mask(np.asarray(tile, dtype=np.float32), valid).ravel()
        out = {"view1": pair.view1, "view2": pair.view2}
        for key, index in (("mask1", pair.index1), ("mask2", pair.index2)):
            seen = index >= 0
            m = np.zeros(index.shape, dtype=bool)
            m[seen] = attend[index[seen]]
            if m.mean() < self.min_fraction:  # nothing (or too little) to attend: whole view
                m = seen
            out[key] = m.astype(np.float32)
        if self.patch_size is not None and self.patch_num is not None:
            args = (pair.index1, pair.index2, self.patch_size, self.patch_num)
            patches = sample_patches(*args, rng, allowed=out["mask1"] > 0)
            if (patches[:, 0] < 0).all():  # no attended box centre: any matched one
                patches = sample_patches(*args, rng)
            out["patches"] = patches
        return out


def masked_pool(features: Tensor, mask: Tensor) -> Tensor:
    """``Σ m·F / Σ m`` over space with ``m`` the mask's area fraction per feature cell.

    Args:
        features: ``(B, C, h, w)``; mask: ``(B, S, S)`` in {0, 1}.

    Returns:
        ``(B, C)`` float32; an item with an empty mask gets the plain spatial mean.
    """
    m = F.adaptive_avg_pool2d(mask[:, None].float(), features.shape[-2:])  # (B, 1, h, w)
    total = m.sum(dim=(2, 3))  # (B, 1)
    pooled = (features.float() * m).sum(dim=(2, 3)) / total.clamp(min=1e-6)
    return torch.where(total > 1e-6, pooled, features.float().mean(dim=(2, 3)))


@register
class CLAWS(Wrapper):
    """CLAWS pretext; batch keys ``view1/view2`` ``(B, C, S, S)``, ``mask1/mask2`` ``(B, S, S)``
    (+ ``patches`` ``(B, P, 4)`` around a base with matched patches)."""

    name = "claws"
    description = ("contrast of hard-attention-masked views (NDVI or none), negatives within "
                   "k-means clusters")
    reference = ("Herrera-Gerena et al., CLAWS: Contrastive Learning with hard Attention and "
                 "Weak Supervision, arXiv 2112.00847")
    config_class = CLAWSConfig
    config: CLAWSConfig
    stateful = True
    needs_views_for = "to mask its views"

    def __init__(self, config: CLAWSConfig, model: nn.Module) -> None:
        super().__init__(config, model, config.view_size)
        global_channels, _ = feature_channels(model)
        own = self.base is None or config.weight > 0  # the clustered contrast is computed
        self.head = mlp_head(global_channels, 256, 64) if own else None
        self.bank = EmbeddingBank(config.bank_size, global_channels)
        self.register_buffer("centroids", torch.zeros(config.clusters, global_channels))
        self.register_buffer("clustered", torch.zeros((), dtype=torch.bool))
        self._bands: dict[str, object] | None = None

    def bind_data(self, info: DataInfo) -> None:
        """Find the red and NIR bands (``mask: ndvi``); ConfigError naming the bands there are."""
        super().bind_data(info)
        if self.config.mask != "ndvi":
            return
        red = find_band(info.band_names, self.config.red_band, "red")
        nir = find_band(info.band_names, self.config.nir_band, "NIR")
        self._bands = {"red": red, "nir": nir,
                       "red_norm": (float(info.mean[red]), float(info.std[red])),
                       "nir_norm": (float(info.mean[nir]), float(info.std[nir]))}

    def sampler(self) -> MaskedViewSampler:
        cfg = self.config
        bands: dict[str, object] = {}
        if cfg.mask == "ndvi":
            if self._bands is None:
                raise ConfigError("method 'claws' with mask: ndvi needs the tiles' band names "
                                  "(bind_data was not called)", fix="or use mask: none")
            bands = self._bands
        views = ({"size": cfg.view_size, "views": cfg.views, "radiometry": self.radiometry}
                 if self.base is None else base_views(self.base.sampler()))
        return MaskedViewSampler(mask=cfg.mask, threshold=cfg.ndvi_threshold,
                                 min_fraction=cfg.min_fraction,
                                 **views, **bands)

    @torch.no_grad()
    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        """k-means on the previous epoch's pooled vectors (from ``warmup_epochs`` on)."""
        super().on_epoch_start(epoch, model)
        vectors = self.bank.recent()
        self.bank.reset_recent()
        k = self.config.clusters
        if epoch < self.config.warmup_epochs or k < 2 or vectors.shape[0] < 2 * k:
            return
        self.centroids.copy_(kmeans(vectors, k, seed=epoch).centroids)
        self.clustered.fill_(True)

    def groups(self, pooled: Tensor) -> Tensor:
        """``(B,)`` nearest cluster of each pooled vector ``(B, Cg)`` (0 before any clustering)."""
        if not bool(self.clustered):
            return torch.zeros(pooled.shape[0], dtype=torch.long, device=pooled.device)
        z = F.normalize(pooled.detach().float(), dim=1)
        return torch.cdist(z, self.centroids.to(z.device)).argmin(dim=1)

    def forward(self, batch: Mapping[str, Tensor], model: nn.Module
                ) -> tuple[Tensor, dict[str, Tensor]]:
        m1, m2 = batch["mask1"], batch["mask2"]
        x1 = batch["view1"] * m1[:, None].to(batch["view1"].dtype)
        x2 = batch["view2"] * m2[:, None].to(batch["view2"].dtype)
        logs: dict[str, Tensor] = {"mask_fraction": m1.float().mean().detach()}
        losses: list[Tensor] = []
        if self.base is not None:
            loss_base, base_logs = self.base({**batch, "view1": x1, "view2": x2}, model)
            logs.update({k: v for k, v in base_logs.items() if k != "loss"})
            logs["loss_base"] = loss_base.detach()
            losses.append(loss_base)
        if self.head is not None:
            loss_claws, claws_logs = self.clustered_loss(x1, x2, m1, m2, model)
            logs.update(claws_logs)
            weight = self.config.weight if self.base is not None else 1.0
            losses.append(weight * loss_claws)
        loss = losses[0] if len(losses) == 1 else losses[0] + losses[1]
        logs["loss"] = loss.detach()
        return loss, logs

    def clustered_loss(self, x1: Tensor, x2: Tensor, m1: Tensor, m2: Tensor, model: nn.Module
                       ) -> tuple[Tensor, dict[str, Tensor]]:
        """NT-Xent of masked-pooled projected vectors, negatives within the anchor's cluster."""
        assert self.head is not None
        pooled1 = masked_pool(global_features(model, x1), m1)
        pooled2 = masked_pool(global_features(model, x2), m2)
        groups = self.groups(pooled1)
        loss = grouped_nt_xent(self.head(pooled1), self.head(pooled2), groups, self.config.tau)
        self.bank.add(F.normalize(pooled1.detach(), dim=1))
        same = (groups[:, None] == groups[None, :]).float().sum(dim=1) - 1
        return loss, {"loss_claws": loss.detach(), "negatives_per_anchor": (2 * same).mean()}
