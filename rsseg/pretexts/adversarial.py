"""ARIEL-style adversarial view + information regularizer, wrapped around another pretext.

Feng, Jing, Ji, Tong, "Adversarial Graph Contrastive Learning with Information
Regularization", WWW 2022 (arXiv 2202.06491); official code Shengyu-Feng/ARIEL (``train.py``:
``loss1 + λ·clamp(2·simi1 − simi2.detach() − simi3.detach(), 0)`` plus ``ε·loss(z1, z_adv)``).

The wrapped pretext (``base``, e.g. ``glcnet``: its global and local losses) supplies the
contrastive loss ``L_ctr(batch)``; the adversarial view replaces its view 2:

- ``x0`` ``(B, C, S, S)``: view 2's geometry (crop, flip, rot90) without its photometric change,
  so GLCNet's patch correspondences still hold for ``x0 + δ``.
- PGD on the frozen model (``model`` and base heads in eval mode, no parameter gradient):
  ``δ_0 = 0``, K steps of ``δ ← clip(δ + β·sign(∇δ L_ctr(v1, x0 + δ)), −ε, ε)``, ε = 0.04 in
  normalised units, β = ε/4; ``x_adv = x0 + δ``.
- ``L = L_ctr(v1, v2) + w_adv·L_ctr(v1, x_adv) + λ·mean(max(0, 2·s12 − s10 − s20))`` with
  ``s_ab = exp(cos(r_a, r_b)/τ)`` of each item's pooled global vectors ``r`` ``(B, Cg)`` of
  v1, v2 and x0 (s10, s20 detached); defaults w_adv 0.5, λ 0 (the regularizer costs three more
  forward passes and is skipped at λ = 0).

Deviations: ARIEL attacks graphs (edges and features) and weights the adversarial loss by ε;
here the perturbation is on pixels with its own weight ``w_adv``, and the regularizer's
similarities use pooled global features rather than the base's projected vectors. Only bases
with GLCNet's view pipeline and a stateless forward can be wrapped (their loss is evaluated
K + 2 times per step).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from rsseg.losses.infonce import information_regularizer, positive_similarity
from rsseg.pretexts.base import Pretext
from rsseg.pretexts.compose import Wrapper, base_views
from rsseg.pretexts.features import global_features
from rsseg.pretexts.views import Radiometry, ViewConfig, make_view_pair, sample_patches
from rsseg.registry import MethodConfig, register


class AdversarialConfig(MethodConfig):
    """ARIEL-style settings; ``base``/``base_params`` name and configure the wrapped pretext."""

    base: str = "glcnet"
    base_params: dict[str, Any] = Field(default_factory=dict)
    eps: float = Field(0.04, gt=0, le=10)
    steps: int = Field(3, ge=1, le=50)
    step_size: float | None = Field(None, gt=0, le=10)  # β; None: eps / 4
    w_adv: float = Field(0.5, ge=0, le=100)
    lam: float = Field(0.0, ge=0, le=100)
    tau: float = Field(0.5, gt=0, le=10)  # temperature of the regularizer's similarities
    view_size: int | None = Field(None, ge=16, le=4096)  # passed on to the base


@dataclass(frozen=True)
class AdversarialSampler:
    """The base's items (``view1``, ``view2`` [, ``patches``]) plus ``view0`` ``(C, S, S)``."""

    size: int
    views: ViewConfig = field(default_factory=ViewConfig)
    patch_size: int | None = None
    patch_num: int | None = None
    radiometry: Radiometry | None = None

    def __call__(self, tile: np.ndarray, rng: np.random.Generator,
                 valid: np.ndarray | None = None) -> dict[str, np.ndarray]:
        t = make_view_pair(tile, rng, self.size, self.views, valid, self.radiometry)
        item = {"view1": t.view1, "view2": t.view2, "view0": t.view0}
        if self.patch_size is not None and self.patch_num is not None:
            item["patches"] = sample_patches(t.index1, t.index2, self.patch_size,
                                             self.patch_num, rng)
        return item


@register
class Adversarial(Wrapper):
    """Wraps ``base``; batch = the base's keys + ``view0`` ``(B, C, S, S)``."""

    name = "adversarial"
    description = ("ARIEL-style PGD view on the frozen model + information regularizer, "
                   "around a base pretext (default glcnet)")
    reference = ("Feng et al., Adversarial Graph Contrastive Learning with Information "
                 "Regularization, WWW 2022 (arXiv 2202.06491)")
    config_class = AdversarialConfig
    config: AdversarialConfig
    stateful = True  # runs the base several times per step: cannot itself be wrapped
    stateless_base = True
    needs_views_for = "to build the clean view x0"
    base: Pretext

    def __init__(self, config: AdversarialConfig, model: nn.Module) -> None:
        super().__init__(config, model, config.view_size)

    def sampler(self) -> AdversarialSampler:
        return AdversarialSampler(**base_views(self.base.sampler()))  # with the tiles' data

    def attack(self, batch: Mapping[str, Tensor], model: nn.Module) -> Tensor:
        """PGD view ``x0 + δ`` ``(B, C, S, S)`` maximising the base loss; model frozen, eval."""
        cfg = self.config
        step = cfg.step_size if cfg.step_size is not None else cfg.eps / 4
        x0 = batch["view0"].detach()
        modes = [(m, m.training) for m in (model, self.base)]
        for m, _ in modes:
            m.eval()
        try:
            delta = torch.zeros_like(x0, requires_grad=True)
            for _ in range(cfg.steps):
                loss, _ = self.base({**batch, "view2": x0 + delta}, model)
                (grad,) = torch.autograd.grad(loss, delta)
                delta = (delta + step * grad.sign()).clamp(-cfg.eps, cfg.eps)
                delta = delta.detach().requires_grad_(True)
        finally:
            for m, was in modes:
                m.train(was)
        return (x0 + delta).detach()

    def forward(self, batch: Mapping[str, Tensor], model: nn.Module
                ) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.config
        with torch.enable_grad():
            x_adv = self.attack(batch, model)
        loss_clean, base_logs = self.base(batch, model)
        loss_adv, _ = self.base({**batch, "view2": x_adv}, model)
        loss = loss_clean + cfg.w_adv * loss_adv
        logs = {k: v for k, v in base_logs.items() if k != "loss"}
        logs.update(loss_clean=loss_clean.detach(), loss_adv=loss_adv.detach())
        if cfg.lam > 0:
            r = [global_features(model, batch[k]).mean(dim=(2, 3))
                 for k in ("view1", "view2", "view0")]
            s12 = positive_similarity(r[0], r[1], cfg.tau)
            s10 = positive_similarity(r[0], r[2], cfg.tau)
            s20 = positive_similarity(r[1], r[2], cfg.tau)
            loss_info = information_regularizer(s12, s10, s20)
            logs["loss_info"] = loss_info.detach()
            loss = loss + cfg.lam * loss_info
        logs["loss"] = loss.detach()
        return loss, logs
