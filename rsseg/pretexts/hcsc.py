"""HCSC: hierarchical contrastive selective coding (MoCo + hierarchical prototypes).

Guo, Xu, Xu, Wang, Liu, Xu, Lin, Li, "HCSC: Hierarchical Contrastive Selective Coding",
CVPR 2022 (arXiv 2202.00455); official code hirl-team/HCSC (``hcsc/hcsc.py``, ``pretrain.py``).

Shapes (``B`` batch, ``D = 128``, ``K`` queue length, ``P_l`` prototypes at level ``l``):

- query ``q = head(GAP(global map of view 1))`` ``(B, D)`` from the trained model; key
  ``k = head_k(GAP(global map of view 2))`` ``(B, D)`` from a momentum copy of model and head
  (``θ_k ← m·θ_k + (1 − m)·θ``, m = 0.999, updated before each key pass); head
  ``Linear(Cg, Cg) → ReLU → Linear(Cg, 128)``; queue ``(K, D)`` of past keys.
- Hierarchical prototypes (after ``warmup_epochs``, in ``on_epoch_start``): k-means on the keys
  of the previous epoch → ``P_1`` centroids, k-means on those centroids → ``P_2``, ...; sizes
  ``N // divisor`` per level (or given); concentration ``φ_c = mean‖x − c‖ / log(n_c + 10)``,
  clipped to its 10th–90th percentile, rescaled to mean τ.
- Instance selective coding, per level: the query's cluster is its key's nearest prototype;
  each queue negative ``j`` is dropped with probability ``softmax_c(queue_j·c / φ_c)[cluster]``;
  one InfoNCE (τ) per level, summed (plain MoCo InfoNCE before the first clustering).
- Prototype selective coding, per level: query vs its prototype (positive) and the others, each
  at temperature ``φ_c``; below the top level a negative prototype is dropped with the
  probability that its parent is the positive's parent (softmax of prototype·parent / φ_parent);
  averaged over levels. Total = instance + prototype losses.

Deviations from the official code: the engine gives pretexts no dataset pass, so the keys to
cluster are those the momentum encoder produced during the previous epoch (a bank, about one
key per tile; official: a fresh pass over centre crops) and each query's cluster is its current
key's nearest prototype (official: the stored assignment of the sample index); dropped negatives
leave the denominator (the official code multiplies their logits by 0, i.e. keeps ``exp(0)``);
every prototype can be a negative (the official code omits the last one); no shuffled BN (single
process) and each DDP rank keeps its own queue (the bank is gathered before clustering); views
are GLCNet's.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from rsseg.losses.infonce import prototype_infonce, queue_infonce
from rsseg.pretexts.base import Pretext
from rsseg.pretexts.clustering import EmbeddingBank, PrototypeLevel, hierarchical_kmeans
from rsseg.pretexts.features import feature_channels, global_features
from rsseg.pretexts.heads import mlp_head
from rsseg.pretexts.views import TwoViewSampler, ViewConfig
from rsseg.registry import MethodConfig, register

MIN_POINTS_PER_CENTROID = 10


class HCSCConfig(MethodConfig):
    """HCSC settings; defaults are the paper's (prototype counts scaled to the tile count)."""

    dim: int = Field(128, ge=2, le=4096)
    queue_size: int = Field(16384, ge=1, le=1_000_000)
    momentum: float = Field(0.999, ge=0, le=1)
    tau: float = Field(0.2, gt=0, le=10)
    warmup_epochs: int = Field(20, ge=0, le=100_000)
    cluster_divisors: tuple[int, ...] = (20, 50, 150)  # P_l = N // divisor_l
    clusters: tuple[int, ...] | None = None  # explicit P_l per level (overrides divisors)
    bank_size: int = Field(65536, ge=2, le=10_000_000)  # keys kept for the next clustering
    instance_selection: bool = True
    prototype_selection: bool = True
    kmeans_iters: int = Field(20, ge=1, le=1000)
    view_size: int = Field(224, ge=16, le=4096)
    views: ViewConfig = Field(default_factory=ViewConfig)

    @field_validator("cluster_divisors", "clusters")
    @classmethod
    def _positive_increasing(cls, v: tuple[int, ...] | None, info) -> tuple[int, ...] | None:
        if v is None:
            return v
        if not v or any(x < 1 for x in v):
            raise ValueError(f"{info.field_name} must be a non-empty list of integers ≥ 1")
        order = v if info.field_name == "cluster_divisors" else tuple(-x for x in v)
        if any(b <= a for a, b in itertools.pairwise(order)):
            raise ValueError(f"{info.field_name} must give fewer prototypes at each higher level")
        return v


@register
class HCSC(Pretext):
    """HCSC pretext; batch keys ``view1``/``view2`` ``(B, C, S, S)``."""

    name = "hcsc"
    view_pipeline = True  # claws and adversarial can wrap it
    description = ("momentum encoder + queue, hierarchical k-means prototypes re-clustered each "
                   "epoch, instance and prototype selective coding")
    reference = ("Guo et al., HCSC: Hierarchical Contrastive Selective Coding, CVPR 2022 "
                 "(arXiv 2202.00455)")
    config_class = HCSCConfig
    config: HCSCConfig
    stateful = True

    def __init__(self, config: HCSCConfig, model: nn.Module) -> None:
        super().__init__(config)
        global_channels, _ = feature_channels(model)
        self.head = mlp_head(global_channels, global_channels, config.dim)
        self.key_model = copy.deepcopy(model)
        self.key_head = copy.deepcopy(self.head)
        for p in [*self.key_model.parameters(), *self.key_head.parameters()]:
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(config.queue_size, config.dim),
                                                  dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.bank = EmbeddingBank(config.bank_size, config.dim)
        self.levels: list[PrototypeLevel] = []

    def sampler(self) -> TwoViewSampler:
        return TwoViewSampler(self.config.view_size, self.config.views, self.radiometry)

    def cluster_sizes(self, n: int) -> list[int]:
        """Prototype counts for ``n`` keys: levels with 2 ≤ P ≤ n / 10, decreasing."""
        cfg = self.config
        wanted = cfg.clusters or tuple(n // d for d in cfg.cluster_divisors)
        sizes: list[int] = []
        for k in wanted:
            limit = n // MIN_POINTS_PER_CENTROID if not sizes else sizes[-1] - 1
            if 2 <= k <= limit:
                sizes.append(k)
        return sizes

    @torch.no_grad()
    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        """Re-cluster the previous epoch's keys (from ``warmup_epochs`` on)."""
        keys = self.bank.recent()
        self.bank.reset_recent()
        if epoch < self.config.warmup_epochs:
            return
        sizes = self.cluster_sizes(keys.shape[0])
        self.levels = (hierarchical_kmeans(keys, sizes, self.config.tau, seed=epoch,
                                           iters=self.config.kmeans_iters) if sizes else [])

    @torch.no_grad()
    def _momentum_update(self, model: nn.Module) -> None:
        m = self.config.momentum
        for pairs in (zip(self.key_model.parameters(), model.parameters(), strict=True),
                      zip(self.key_head.parameters(), self.head.parameters(), strict=True)):
            for key, live in pairs:
                key.mul_(m).add_(live.detach(), alpha=1 - m)

    @torch.no_grad()
    def keys(self, view: Tensor) -> Tensor:
        """``(B, D)`` normalised keys of the momentum encoder."""
        return F.normalize(self.key_head(global_features(self.key_model, view).mean(dim=(2, 3)))
                           .float(), dim=1)

    def forward(self, batch: Mapping[str, Tensor], model: nn.Module
                ) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.config
        q = F.normalize(self.head(global_features(model, batch["view1"]).mean(dim=(2, 3)))
                        .float(), dim=1)
        self._momentum_update(model)
        k = self.keys(batch["view2"])
        queue = self.queue.clone()
        logs: dict[str, Tensor] = {}
        levels = [self._on_device(level, q.device) for level in self.levels]
        if not levels:
            loss_instance = queue_infonce(q, k, queue, cfg.tau)
            loss_proto = q.new_zeros(())
        else:
            labels = [(k @ level.centroids.T).argmax(dim=1) for level in levels]  # (B,) each
            loss_instance = q.new_zeros(())
            kept = []
            for level, label in zip(levels, labels, strict=True):
                keep = (self.select_instances(queue, level, label) if cfg.instance_selection
                        else None)
                if keep is not None:
                    kept.append(keep.float().mean())
                loss_instance = loss_instance + queue_infonce(q, k, queue, cfg.tau, keep)
            loss_proto = q.new_zeros(())
            for i, (level, label) in enumerate(zip(levels, labels, strict=True)):
                keep = None
                if cfg.prototype_selection and i + 1 < len(levels):
                    keep = self.select_prototypes(level, levels[i + 1], label)
                loss_proto = loss_proto + prototype_infonce(q, level.centroids, label, level.phi,
                                                            keep)
            loss_proto = loss_proto / len(levels)
            if kept:
                logs["kept_negatives"] = torch.stack(kept).mean()
        self._enqueue(k)
        self.bank.add(k)
        loss = loss_instance + loss_proto
        logs.update(loss=loss.detach(), loss_instance=loss_instance.detach(),
                    loss_prototype=loss_proto.detach(),
                    prototype_levels=torch.tensor(float(len(levels)), device=q.device))
        return loss, logs

    @staticmethod
    def select_instances(queue: Tensor, level: PrototypeLevel, label: Tensor) -> Tensor:
        """``(B, K)`` bool: keep queue negative ``j`` for query ``n`` with probability
        ``1 − softmax_c(queue_j·c / φ_c)[label_n]`` (clamped to ≤ 0.999, as officially)."""
        posterior = torch.softmax(queue @ level.centroids.T / level.phi.clamp(min=1e-3), dim=1)
        p_keep = (1 - posterior[:, label].T).clamp(0.0, 0.999)  # (B, K)
        return torch.bernoulli(p_keep).bool()

    @staticmethod
    def select_prototypes(level: PrototypeLevel, upper: PrototypeLevel, label: Tensor) -> Tensor:
        """``(B, P)`` bool: keep negative prototype ``c`` for query ``n`` with probability
        ``1 − softmax_u(c·u / φ_u)[parent(label_n)]`` (clamped to [1e-4, 0.999])."""
        assert level.parent is not None
        parent_prob = torch.softmax(level.centroids @ upper.centroids.T / upper.phi, dim=1)
        p_keep = (1 - parent_prob[:, level.parent[label]].T).clamp(1e-4, 0.999)  # (B, P)
        return torch.bernoulli(p_keep).bool()

    @torch.no_grad()
    def _enqueue(self, k: Tensor) -> None:
        size = self.queue.shape[0]
        k = k[-size:]
        rows = (self.queue_ptr + torch.arange(k.shape[0], device=k.device)) % size
        self.queue[rows] = k.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + k.shape[0]) % size)

    @staticmethod
    def _on_device(level: PrototypeLevel, device: torch.device) -> PrototypeLevel:
        if level.centroids.device == device:
            return level
        parent = level.parent.to(device) if level.parent is not None else None
        return PrototypeLevel(level.centroids.to(device), level.phi.to(device), parent)
