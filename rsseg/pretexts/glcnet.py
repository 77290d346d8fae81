"""GLCNet: global style contrast + local matching contrast.

Li, Li, Tao, Zhou, Huang, "Global and Local Contrastive Self-Supervised Learning for Semantic
Segmentation of HR Remote Sensing Images", IEEE TGRS 60, 2022 (arXiv 2106.10605); official code
GeoX-Lab/G-RSIM, ``T-SS-GLCNet/models/GLCNet.py``.

- Global: style = mean‖variance of the global map ``(B, Cg, h, w) → (B, 2Cg)``, head
  ``Linear(2Cg, 256) → ReLU → Linear(256, 64)``, NT-Xent(τ_g) over the ``2B`` vectors.
- Local: box means of the local map ``(B, Cl, S, S)`` over ``patch_size`` boxes matched between
  the views (``batch["patches"]``, drawn by ``views.sample_patches`` in the data workers), head
  ``Linear(Cl, Cl) → ReLU → Linear(Cl, Cl)``, NT-Xent(τ_l) over the ``2M`` patch vectors
  (``M ≤ B·patch_num``; negatives: every other patch of every image and view).
- ``L = λ·L_global + (1 − λ)·L_local``; with one branch switched off, that branch's loss alone.

Deviations from the official code: the network is smp's DeepLabV3+ (its decoder fuses with a
separable 3×3 conv and adds one after ASPP; the official decoder uses two plain 3×3 convs);
the style variance is the population variance; patch boxes never overlap and missing patches
are dropped rather than repeated (see ``views.sample_patches``); the two views go through the
model as two batches (as officially, so batch-norm statistics stay per view).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from rsseg.losses.contrastive import nt_xent
from rsseg.pretexts.base import Pretext
from rsseg.pretexts.features import (
    box_mean,
    extract_features,
    feature_channels,
    global_features,
    style_vector,
)
from rsseg.pretexts.heads import mlp_head
from rsseg.pretexts.views import MatchedViewSampler, ViewConfig
from rsseg.registry import MethodConfig, register


class GLCNetConfig(MethodConfig):
    """GLCNet settings; defaults reproduce the paper."""

    view_size: int = Field(224, ge=16, le=4096)  # the model decides the multiple it needs
    patch_size: int = Field(48, ge=1, le=2048)
    patch_num: int = Field(4, ge=1, le=64)
    lam: float = Field(0.5, ge=0, le=1)
    tau_global: float = Field(0.5, gt=0, le=10)
    tau_local: float = Field(0.5, gt=0, le=10)
    decoupled: bool = True
    use_style: bool = True
    use_global: bool = True
    use_local: bool = True
    views: ViewConfig = Field(default_factory=ViewConfig)

    @model_validator(mode="after")
    def _consistent(self) -> GLCNetConfig:
        if not (self.use_global or self.use_local):
            raise ValueError("use_global and use_local cannot both be false")
        if self.patch_size > self.view_size:
            raise ValueError(f"patch_size {self.patch_size} exceeds view_size {self.view_size}")
        return self


@register
class GLCNet(Pretext):
    """GLCNet; batch keys ``view1``/``view2`` ``(B, C, S, S)``, ``patches`` ``(B, P, 4)``."""

    name = "glcnet"
    view_pipeline = True  # claws and adversarial can wrap it
    description = "global style + local matching contrast on two views with pixel correspondence"
    reference = (
        "Li et al., Global and Local Contrastive Self-Supervised Learning for Semantic "
        "Segmentation of HR Remote Sensing Images, IEEE TGRS 2022 (arXiv 2106.10605)"
    )
    config_class = GLCNetConfig
    config: GLCNetConfig

    def __init__(self, config: GLCNetConfig, model: nn.Module) -> None:
        super().__init__(config)
        global_channels, local_channels = feature_channels(model)
        style_dim = 2 * global_channels if config.use_style else global_channels
        self.global_head = mlp_head(style_dim, 256, 64) if config.use_global else None
        self.local_head = (
            mlp_head(local_channels, local_channels, local_channels) if config.use_local else None
        )

    def sampler(self) -> MatchedViewSampler:
        cfg = self.config
        return MatchedViewSampler(cfg.view_size, cfg.patch_size, cfg.patch_num, cfg.views,
                                  self.radiometry)

    def forward(
        self, batch: Mapping[str, Tensor], model: nn.Module
    ) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.config
        if self.local_head is None:
            global1 = global_features(model, batch["view1"])
            global2 = global_features(model, batch["view2"])
        else:
            maps1 = extract_features(model, batch["view1"])
            maps2 = extract_features(model, batch["view2"])
            global1, global2 = maps1.global_, maps2.global_
        logs: dict[str, Tensor] = {}
        losses: list[Tensor] = []
        if self.global_head is not None:
            loss_global = self.global_loss(global1, global2)
            logs["loss_global"] = loss_global.detach()
            losses.append(loss_global)
        if self.local_head is not None:
            loss_local, matched = self.local_loss(maps1.local, maps2.local, batch["patches"])
            logs["loss_local"] = loss_local.detach()
            per_item = matched / batch["patches"].shape[0]
            logs["patches_per_item"] = torch.tensor(per_item, device=loss_local.device)
            losses.append(loss_local)
        loss = cfg.lam * losses[0] + (1 - cfg.lam) * losses[1] if len(losses) == 2 else losses[0]
        logs["loss"] = loss.detach()
        return loss, logs

    def global_loss(self, global1: Tensor, global2: Tensor) -> Tensor:
        """NT-Xent of the projected style (or, without style, mean) vectors of ``(B, Cg, h, w)``."""
        assert self.global_head is not None
        if self.config.use_style:
            pooled1, pooled2 = style_vector(global1), style_vector(global2)
        else:
            pooled1, pooled2 = global1.mean(dim=(2, 3)), global2.mean(dim=(2, 3))
        z1, z2 = self.global_head(pooled1), self.global_head(pooled2)
        return nt_xent(z1, z2, self.config.tau_global, self.config.decoupled)

    def local_loss(self, local1: Tensor, local2: Tensor, patches: Tensor) -> tuple[Tensor, int]:
        """NT-Xent of projected box means over matched boxes, and the number ``M`` of boxes.

        Args:
            local1, local2: ``(B, Cl, S, S)`` local maps of the two views.
            patches: ``(B, P, 4)`` int64 ``(y1, x1, y2, x2)`` box corners, rows of -1 unused.
        """
        assert self.local_head is not None
        patches = patches.to(local1.device)
        valid = patches[..., 0] >= 0  # (B, P)
        item = torch.arange(patches.shape[0], device=patches.device)[:, None].expand_as(valid)
        item, boxes = item[valid], patches[valid]  # (M,), (M, 4)
        size = self.config.patch_size
        q = self.local_head(box_mean(local1, item, boxes[:, 0], boxes[:, 1], size))
        k = self.local_head(box_mean(local2, item, boxes[:, 2], boxes[:, 3], size))
        matched = boxes.shape[0]
        if matched < 2:  # nothing to contrast; keep the graph so every parameter gets a gradient
            return (q.sum() + k.sum()) * 0.0, matched
        return nt_xent(q, k, self.config.tau_local, self.config.decoupled), matched
