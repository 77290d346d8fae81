"""SimCLR on GLCNet's views: the instance-contrast control (docs/methods.md, "SimCLR").

Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020; as the GLCNet paper runs it: same two-view pipeline, global average
pool of the global map ``(B, Cg, h, w) → (B, Cg)``, head ``Linear(Cg, 256) → ReLU →
Linear(256, 64)``, NT-Xent τ = 0.5 (standard denominator by default, as in the SimCLR paper).
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field
from torch import Tensor, nn

from rsseg.losses.contrastive import nt_xent
from rsseg.pretexts.base import Pretext
from rsseg.pretexts.features import feature_channels, global_features
from rsseg.pretexts.heads import mlp_head
from rsseg.pretexts.views import TwoViewSampler, ViewConfig
from rsseg.registry import MethodConfig, register


class SimCLRConfig(MethodConfig):
    """SimCLR settings."""

    view_size: int = Field(224, ge=16, le=4096)  # the model decides the multiple it needs
    tau: float = Field(0.5, gt=0, le=10)
    decoupled: bool = False
    views: ViewConfig = Field(default_factory=ViewConfig)


@register
class SimCLR(Pretext):
    """SimCLR pretext; batch keys ``view1``/``view2`` ``(B, C, S, S)``."""

    name = "simclr"
    view_pipeline = True  # claws and adversarial can wrap it
    description = "instance contrast of pooled global features of two views (control baseline)"
    reference = (
        "Chen et al., A Simple Framework for Contrastive Learning of Visual Representations, "
        "ICML 2020 (arXiv 2002.05709)"
    )
    config_class = SimCLRConfig
    config: SimCLRConfig

    def __init__(self, config: SimCLRConfig, model: nn.Module) -> None:
        super().__init__(config)
        global_channels, _ = feature_channels(model)
        self.head = mlp_head(global_channels, 256, 64)

    def sampler(self) -> TwoViewSampler:
        return TwoViewSampler(self.config.view_size, self.config.views, self.radiometry)

    def forward(
        self, batch: Mapping[str, Tensor], model: nn.Module
    ) -> tuple[Tensor, dict[str, Tensor]]:
        z1 = self.head(global_features(model, batch["view1"]).mean(dim=(2, 3)))
        z2 = self.head(global_features(model, batch["view2"]).mean(dim=(2, 3)))
        loss = nt_xent(z1, z2, self.config.tau, self.config.decoupled)
        return loss, {"loss": loss.detach()}
