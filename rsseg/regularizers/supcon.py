"""SupCon: pixel-level supervised contrast on labelled pixels (docs/methods.md, "SupCon").

References: Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020 (the loss); Chen,
Zhuang, Chang, "SuperCon: Supervised contrastive learning for imbalanced skin lesion
classification", arXiv 2202.05685 (two stages: contrastive representation, then an
imbalance-aware classifier); pixel-level form with class-balanced and hard anchors and a
per-class memory as in Wang et al., "Exploring Cross-Image Pixel Contrast for Semantic
Segmentation", ICCV 2021.

Per training step:

1. Decoder features ``(B, Cd, h, w)`` (the input of the segmentation head) at the labelled
   pixels only (labels and predictions resized to ``h×w`` by nearest neighbour).
2. Anchors, class-balanced: for every class present, ``anchors_per_class`` pixels, a
   ``hard_fraction`` of them hard (the model's prediction there is wrong) and the rest easy;
   when one kind runs short the other fills in; a class with fewer labelled pixels gives all.
   Several domains (``multidomain``) share one index space: domain ``d``'s class ``k`` is
   ``offset_d + k``.
3. Projection ``1×1 conv(Cd → Cd) → ReLU → 1×1 conv(Cd → proj_dim)`` and L2 normalisation:
   ``z`` ``(N, proj_dim)``.
4. SupCon (τ 0.07): with contrast set ``A`` = the anchors plus the memory bank,
   ``ℓ_i = −1/|P(i)| · Σ_{p∈P(i)} log( exp(z_i·z_p/τ) / Σ_{a∈A∖{i}} exp(z_i·z_a/τ) )``,
   ``P(i)`` = members of ``A∖{i}`` of ``i``'s class; the loss is the mean over anchors with at
   least one positive (0 when none has one).
5. Optional per-class memory bank (``bank_size`` > 0): the step's anchor embeddings are
   enqueued, detached, into a FIFO per class, so rare classes find positives in later steps.

Uses: ``CE + w·L_supcon`` throughout (default), or ``two_stage``: the first
``stage1_fraction`` of the epochs train encoder, decoder and projection on ``L_supcon`` alone,
the rest train only the segmentation head(s) with an imbalance-aware loss (class-balanced CE or
focal), everything else frozen (batch-norm statistics included).

Deviations: Khosla's ``τ/τ_base`` factor is omitted (it is 1 at τ = τ_base = 0.07); the
projection has no batch norm (it runs on the sampled pixels only); the bank stores sampled
anchors rather than Wang et al.'s per-image class means.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from rsseg.registry import register
from rsseg.regularizers.base import (
    Regularizer,
    RegularizerConfig,
    SegInfo,
    SegStep,
    Stage,
    tap_channels,
)


class SupConConfig(RegularizerConfig):
    """SupCon settings (``weight`` is ``w`` in ``CE + w·L_supcon``)."""

    tau: float = Field(0.07, gt=0, le=10)
    proj_dim: int = Field(128, ge=2, le=4096)
    anchors_per_class: int = Field(64, ge=2, le=100_000)
    hard_fraction: float = Field(0.5, ge=0, le=1)
    bank_size: int = Field(0, ge=0, le=1_000_000)  # per class; 0 = no memory bank
    two_stage: bool = False
    stage1_fraction: float = Field(0.5, gt=0, lt=1)  # of the epochs, contrastive stage
    classifier_loss: Literal["balanced_ce", "focal"] = "balanced_ce"  # second stage


def supcon_loss(z: Tensor, labels: Tensor, tau: float = 0.07, bank_z: Tensor | None = None,
                bank_labels: Tensor | None = None) -> Tensor:
    """Supervised contrastive loss of anchors ``z`` against themselves and a bank.

    Args:
        z: ``(N, D)`` anchor embeddings (L2-normalised inside).
        labels: ``(N,)`` int64 class of each anchor.
        tau: temperature.
        bank_z: optional ``(M, D)`` extra contrast samples (normalised inside, no gradient
            needed); bank_labels: their ``(M,)`` classes.

    Returns:
        Scalar float32 mean of ``ℓ_i`` over anchors with a positive (module docstring); 0 (with
        a gradient path) when no anchor has one.
    """
    if z.ndim != 2 or labels.shape != z.shape[:1]:
        raise ValueError(f"supcon_loss needs (N, D) and (N,), got {tuple(z.shape)}, "
                         f"{tuple(labels.shape)}")
    with torch.autocast(z.device.type, enabled=False):
        anchors = F.normalize(z.float(), dim=1)
        contrast, contrast_labels = anchors, labels
        if bank_z is not None and bank_z.shape[0]:
            contrast = torch.cat([anchors, F.normalize(bank_z.float(), dim=1)])
            contrast_labels = torch.cat([labels, bank_labels.to(labels)])
        n = anchors.shape[0]
        logits = anchors @ contrast.T / tau  # (N, N + M)
        own = torch.zeros_like(logits, dtype=torch.bool)
        own[:, :n] = torch.eye(n, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(own, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        positive = (labels[:, None] == contrast_labels[None, :]) & ~own
        count = positive.sum(dim=1)
        has = count > 0
        if not has.any():
            return anchors.sum() * 0.0
        mean_log = log_prob.masked_fill(~positive, 0.0).sum(dim=1)[has] / count[has]
        return -mean_log.mean()


def sample_anchors(labels: Tensor, pred: Tensor, per_class: int, hard_fraction: float,
                   ignore_index: int = 255, generator: torch.Generator | None = None
                   ) -> Tensor:
    """Class-balanced anchor pixels, part of them hard.

    Args:
        labels: ``(P,)`` int64 class per pixel, ``ignore_index`` where unlabelled.
        pred: ``(P,)`` int64 predicted class per pixel.
        per_class: anchors per class present; hard_fraction: share of misclassified ones.

    Returns:
        ``(N,)`` int64 indexes into the ``P`` pixels, grouped by class (ascending).
    """
    chosen = []
    for c in torch.unique(labels[labels != ignore_index]).tolist():
        pixels = torch.nonzero(labels == c).flatten()
        wrong = pred[pixels] != c
        hard, easy = pixels[wrong], pixels[~wrong]
        n_hard = min(len(hard), round(per_class * hard_fraction))
        n_easy = min(len(easy), per_class - n_hard)
        n_hard = min(len(hard), per_class - n_easy)  # hard fills in for missing easy ones
        for group, k in ((hard, n_hard), (easy, n_easy)):
            if k:
                order = torch.randperm(len(group), generator=generator,
                                       device=group.device)[:k]
                chosen.append(group[order])
    if not chosen:
        return torch.zeros(0, dtype=torch.long, device=labels.device)
    return torch.cat(chosen)


@register
class SupCon(Regularizer):
    """Pixel-level supervised contrast on decoder features (see the module docstring)."""

    name = "supcon"
    description = ("pixel supervised contrast on labelled pixels: class-balanced hard anchors, "
                   "optional memory bank; CE + w·L or two stages")
    reference = ("Chen, Zhuang, Chang, SuperCon, arXiv 2202.05685; Khosla et al., Supervised "
                 "Contrastive Learning, NeurIPS 2020")
    needs = frozenset({"labels"})
    config_class = SupConConfig
    taps = frozenset({"decoder"})
    config: SupConConfig

    def __init__(self, config: SupConConfig, model: nn.Module, info: SegInfo) -> None:
        super().__init__(config, info)
        channels = tap_channels(model, "decoder")
        self.head = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.ReLU(),
                                  nn.Conv2d(channels, config.proj_dim, 1))
        total = sum(info.classes)
        self.stateful = config.bank_size > 0
        self.register_buffer("bank", torch.zeros(total, config.bank_size, config.proj_dim))
        self.register_buffer("bank_count", torch.zeros(total, dtype=torch.long))
        self.register_buffer("bank_next", torch.zeros(total, dtype=torch.long))

    def project(self, features: Tensor) -> Tensor:
        """``(N, Cd)`` pixel features → ``(N, proj_dim)`` L2-normalised embeddings."""
        return F.normalize(self.head(features[:, :, None, None]).flatten(1), dim=1)

    def forward(self, step: SegStep) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.config
        embeddings, classes = [], []
        offsets = self.info.class_offsets
        for part in step.parts:
            features = part.features["decoder"]
            size = features.shape[-2:]
            labels = _resize_ids(part.labels, size)
            pred = _resize_ids(part.logits.detach().argmax(1), size)
            index = sample_anchors(labels.flatten(), pred.flatten(), cfg.anchors_per_class,
                                   cfg.hard_fraction, step.ignore_index)
            flat = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
            embeddings.append(self.project(flat[index]))
            classes.append(labels.flatten()[index] + offsets[part.domain])
        z, y = torch.cat(embeddings), torch.cat(classes)
        bank_z, bank_y = self._bank()
        loss = supcon_loss(z, y, cfg.tau, bank_z, bank_y)
        if cfg.bank_size and self.training:
            self._enqueue(z.detach(), y)
        return loss, {"loss_supcon": loss.detach(),
                      "supcon_anchors": torch.tensor(float(len(y)), device=z.device)}

    def stage(self, epoch: int) -> Stage:
        if not self.config.two_stage:
            return Stage()
        first = max(1, round(self.config.stage1_fraction * self.info.epochs))
        if epoch < first:
            return Stage(supervised=0.0, weight=1.0)
        return Stage(supervised=1.0, weight=0.0, head_only=True,
                     loss=self.config.classifier_loss)

    def _bank(self) -> tuple[Tensor | None, Tensor | None]:
        if not self.config.bank_size or not int(self.bank_count.sum()):
            return None, None
        slots = torch.arange(self.config.bank_size, device=self.bank.device)
        filled = slots[None, :] < self.bank_count[:, None]  # (K, S)
        labels = torch.arange(len(self.bank), device=self.bank.device)[:, None].expand_as(filled)
        return self.bank[filled], labels[filled]

    @torch.no_grad()
    def _enqueue(self, z: Tensor, labels: Tensor) -> None:
        size = self.config.bank_size
        for c in torch.unique(labels).tolist():
            rows = z[labels == c][-size:]
            slots = (self.bank_next[c] + torch.arange(len(rows), device=z.device)) % size
            self.bank[c, slots] = rows.to(self.bank.dtype)
            self.bank_next[c] = (self.bank_next[c] + len(rows)) % size
            self.bank_count[c] = torch.clamp(self.bank_count[c] + len(rows), max=size)


def _resize_ids(ids: Tensor, size: torch.Size) -> Tensor:
    """``(B, H, W)`` int64 class ids → ``(B, h, w)`` by nearest neighbour (as is if equal)."""
    if ids.shape[-2:] == size:
        return ids
    out = F.interpolate(ids[:, None].float(), size=tuple(size), mode="nearest")
    return out[:, 0].long()
