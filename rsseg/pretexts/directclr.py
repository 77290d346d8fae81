"""DirectCLR: contrast a sub-vector of the representation itself, without a projector.

Jing, Vincent, LeCun, Tian, "Understanding Dimensional Collapse in Contrastive Self-supervised
Learning", ICLR 2022 (arXiv 2110.09348); official code facebookresearch/directclr
(``directclr/main.py``, mode ``directclr``: ``r[:, :dim]``, ``infoNCE`` at τ = 0.1, symmetric).

- global (default): ``r = GAP(global map)`` ``(B, Cg, h, w) → (B, Cg)``; ``z = r[:, :d0]``;
  ``L = ½·CE(ẑ1·ẑ2ᵀ/τ, I) + ½·CE(ẑ2·ẑ1ᵀ/τ, I)`` over the ``B×B`` cross-view logits.
- dense: box means of the local map ``(B, Cl, S, S)`` over GLCNet's matched boxes
  (``batch["patches"]`` ``(B, P, 4)``) → ``(M, Cl)``, ``z = r[:, :d0_local]``, the same loss over
  the ``M×M`` logits of the matched patches.
- both: ``λ·L_global + (1 − λ)·L_dense``.

``d0`` defaults to the paper's fraction 360/2048 of the representation's width (e.g. 45 of
DeepLabV3+'s 256 ASPP channels, 11 of the 64 decoder channels). The gradient reaches the other
dimensions only through the backbone, as in the paper.

Deviations: the representation is the segmentation model's global map (ASPP output for
DeepLabV3/V3+, deepest encoder stage otherwise) average-pooled, not ResNet's pooled 2048-d
output; views are GLCNet's (asymmetric) instead of BYOL's symmetric augmentations; the official
run's online linear classifier (a monitoring head using labels) is not used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from rsseg.errors import ConfigError
from rsseg.losses.infonce import symmetric_infonce
from rsseg.pretexts.base import Pretext
from rsseg.pretexts.features import box_mean, extract_features, feature_channels, global_features
from rsseg.pretexts.views import MatchedViewSampler, TwoViewSampler, ViewConfig
from rsseg.registry import MethodConfig, register

PAPER_FRACTION = 360 / 2048


class DirectCLRConfig(MethodConfig):
    """DirectCLR settings; defaults are the paper's."""

    variant: Literal["global", "dense", "both"] = "global"
    dims: int | None = Field(None, ge=1, le=65536)  # d0 of the global vector; None: fraction
    local_dims: int | None = Field(None, ge=1, le=65536)  # d0 of the patch vectors
    dims_fraction: float = Field(PAPER_FRACTION, gt=0, le=1)
    tau: float = Field(0.1, gt=0, le=10)
    lam: float = Field(0.5, ge=0, le=1)  # weight of the global loss when variant is "both"
    view_size: int = Field(224, ge=16, le=4096)
    patch_size: int = Field(48, ge=1, le=2048)
    patch_num: int = Field(4, ge=1, le=64)
    views: ViewConfig = Field(default_factory=ViewConfig)

    @model_validator(mode="after")
    def _consistent(self) -> DirectCLRConfig:
        if self.variant != "global" and self.patch_size > self.view_size:
            raise ValueError(f"patch_size {self.patch_size} exceeds view_size {self.view_size}")
        return self


def _sub_dims(name: str, asked: int | None, fraction: float, width: int) -> int:
    if asked is None:
        return max(1, round(fraction * width))
    if asked > width:
        raise ConfigError(f"method 'directclr': {name}={asked} exceeds the representation's "
                          f"{width} dimensions", fix=f"allowed: 1 ≤ x ≤ {width}")
    return asked


@register
class DirectCLR(Pretext):
    """DirectCLR; batch ``view1``/``view2`` ``(B, C, S, S)`` (+ ``patches`` ``(B, P, 4)``)."""

    name = "directclr"
    view_pipeline = True  # claws and adversarial can wrap it
    description = ("InfoNCE on the first d0 dims of the pooled representation, no projector "
                   "(global and dense variants)")
    reference = ("Jing, Vincent, LeCun, Tian, Understanding Dimensional Collapse in "
                 "Contrastive Self-supervised Learning, ICLR 2022 (arXiv 2110.09348)")
    config_class = DirectCLRConfig
    config: DirectCLRConfig

    def __init__(self, config: DirectCLRConfig, model: nn.Module) -> None:
        super().__init__(config)
        global_channels, local_channels = feature_channels(model)
        self.dims = _sub_dims("dims", config.dims, config.dims_fraction, global_channels)
        self.local_dims = _sub_dims("local_dims", config.local_dims, config.dims_fraction,
                                    local_channels)

    def sampler(self) -> TwoViewSampler | MatchedViewSampler:
        cfg = self.config
        if cfg.variant == "global":
            return TwoViewSampler(cfg.view_size, cfg.views, self.radiometry)
        return MatchedViewSampler(cfg.view_size, cfg.patch_size, cfg.patch_num, cfg.views,
                                  self.radiometry)

    def forward(self, batch: Mapping[str, Tensor], model: nn.Module
                ) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.config
        logs: dict[str, Tensor] = {}
        if cfg.variant == "global":
            loss = self.global_loss(global_features(model, batch["view1"]),
                                    global_features(model, batch["view2"]))
            logs["loss"] = loss.detach()
            return loss, logs
        maps1 = extract_features(model, batch["view1"])
        maps2 = extract_features(model, batch["view2"])
        loss_dense = self.dense_loss(maps1.local, maps2.local, batch["patches"])
        logs["loss_dense"] = loss_dense.detach()
        if cfg.variant == "dense":
            loss = loss_dense
        else:
            loss_global = self.global_loss(maps1.global_, maps2.global_)
            logs["loss_global"] = loss_global.detach()
            loss = cfg.lam * loss_global + (1 - cfg.lam) * loss_dense
        logs["loss"] = loss.detach()
        return loss, logs

    def global_loss(self, global1: Tensor, global2: Tensor) -> Tensor:
        """Symmetric InfoNCE of ``GAP(global map)[:, :d0]`` of ``(B, Cg, h, w)`` maps."""
        r1, r2 = global1.mean(dim=(2, 3)), global2.mean(dim=(2, 3))
        return symmetric_infonce(r1[:, : self.dims], r2[:, : self.dims], self.config.tau)

    def dense_loss(self, local1: Tensor, local2: Tensor, patches: Tensor) -> Tensor:
        """Symmetric InfoNCE of the first ``d0`` dims of matched box means (``(M, Cl)``)."""
        patches = patches.to(local1.device)
        valid = patches[..., 0] >= 0
        item = torch.arange(patches.shape[0], device=patches.device)[:, None]
        item = item.expand_as(valid)[valid]
        boxes = patches[valid]
        size = self.config.patch_size
        r1 = box_mean(local1, item, boxes[:, 0], boxes[:, 1], size)[:, : self.local_dims]
        r2 = box_mean(local2, item, boxes[:, 2], boxes[:, 3], size)[:, : self.local_dims]
        if r1.shape[0] < 2:  # nothing to contrast; keep the graph for every parameter
            return (r1.sum() + r2.sum()) * 0.0
        return symmetric_infonce(r1, r2, self.config.tau)
