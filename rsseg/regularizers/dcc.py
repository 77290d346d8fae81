"""DCC: dataset condensation with contrastive signals, for segmentation (docs/methods.md, "DCC").

Lee, Chun, Jung, Yun, Yoon, "Dataset Condensation with Contrastive Signals", ICML 2022
(code: Saehyung-Lee/DCC), building on Zhao, Mopuri, Bilen, "Dataset Condensation with Gradient
Matching", ICLR 2021 (DC). A data *tool* (``rsseg condense``, :mod:`rsseg.pipelines.condense`):
it learns a small synthetic labelled tile set whose training gradients match the real set's.

Segmentation form: ``per_class`` synthetic tiles per class, each ``(C, size, size)`` in the
normalised band space, with a *fixed* label map (``labels="uniform"``: every pixel of a class-``c``
tile is ``c``; ``"real"``: the label map of the real crop the tile started from). A pixel is a
sample: real class-``c`` gradients come from crops centred on class-``c`` pixels with the
cross-entropy masked to the pixels labelled ``c`` (per-class masked CE).

Each outer iteration draws a fresh random :class:`ConvNet` (DC's ConvNet without pooling, so
that it predicts every pixel); ``inner_loop`` times: update the synthetic tiles by gradient
matching (SGD, ``lr_img``, momentum 0.5), then train the network ``net_steps`` epochs on the
synthetic set (SGD, ``lr_net``). Matching:

- DC (warm-up, and ``contrast=False``): ``Σ_c D(∇L_c(syn_c), ∇L_c(real_c))``, class by class;
- DCC (``contrast=True`` once ``outer ≥ outer_warmup`` or ``inner ≥ inner_warmup``):
  ``D(∇L(all synthetic pixels), (1/K)·Σ_c ∇L_c(real_c))``: the joint loss over all synthetic
  classes against the mean of the per-class real gradients, keeping between-class contrast.

``D`` is :func:`gradient_distance`: over layers and output units ``Σ (1 − cos)`` of the
gradient rows; bias and normalisation parameters (1-D) are excluded, as in DC's ``'ours'``.

Deviations: no differentiable Siamese augmentation (DCC's DSA variant), ConvNet without pooling
(dense output), ``inner_loop``/``net_steps`` default to DC's table for the nearest
images-per-class value (DC defines it for 1, 10, 20, 30, 40, 50 only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import Field
from torch import Tensor, nn

from rsseg.registry import MethodConfig, register

# DC's get_loops: images per class → (inner_loop, net_steps) as DCC uses them.
DC_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


class DCCConfig(MethodConfig):
    """``rsseg condense`` settings (defaults: the DCC paper's, sized for ~10 tiles per class)."""

    per_class: int = Field(10, ge=1, le=1000)  # synthetic tiles per class
    size: int = Field(32, ge=8, le=1024)  # synthetic tile side (px)
    labels: Literal["uniform", "real"] = "uniform"
    init: Literal["real", "noise"] = "real"
    iterations: int = Field(1000, ge=1, le=1_000_000)  # outer loop: fresh networks
    inner_loop: int | None = Field(None, ge=1, le=10_000)  # None: DC's table
    net_steps: int | None = Field(None, ge=0, le=10_000)  # epochs on synthetic data per step
    outer_warmup: int = Field(250, ge=0)
    inner_warmup: int = Field(10, ge=0)
    contrast: bool = True  # False: plain DC (class-wise matching throughout)
    lr_img: float = Field(0.1, gt=0, le=100)
    lr_net: float = Field(0.01, gt=0, le=10)
    batch_real: int = Field(256, ge=1, le=100_000)  # real crops per class per matching step
    batch_train: int = Field(256, ge=1, le=100_000)  # synthetic tiles per network step
    real_pool: int = Field(512, ge=1, le=1_000_000)  # real crops per class kept in memory
    net_width: int = Field(128, ge=4, le=1024)
    net_depth: int = Field(3, ge=1, le=8)
    label_fraction: float = Field(1.0, gt=0, le=1)  # of labelled tiles used (tile folders)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def loops(self) -> tuple[int, int]:
        """``(inner_loop, net_steps)``: the configured values, else DC's for ``per_class``."""
        nearest = min(DC_LOOPS, key=lambda k: (abs(k - self.per_class), k))
        inner, steps = DC_LOOPS[nearest]
        return (self.inner_loop or inner,
                steps if self.net_steps is None else self.net_steps)


@register
class DCC:
    """Registry record of the ``rsseg condense`` tool (the work is in the condense pipeline)."""

    name: ClassVar[str] = "dcc"
    kind: ClassVar[str] = "tool"
    description: ClassVar[str] = ("rsseg condense: a small synthetic labelled tile set by "
                                  "contrastive gradient matching; fine-tune on it with --tiles")
    reference: ClassVar[str] = ("Lee et al., Dataset Condensation with Contrastive Signals, "
                                "ICML 2022 (arXiv 2202.02916)")
    needs: ClassVar[frozenset[str]] = frozenset({"labels"})
    config_class: ClassVar[type[DCCConfig]] = DCCConfig


class ConvNet(nn.Module):
    """DC's ConvNet for dense prediction: ``depth × [3×3 conv → instance norm → ReLU]`` at full
    resolution, then a 1×1 classifier: ``(B, C, H, W)`` → ``(B, K, H, W)``.

    Instance norm is ``GroupNorm(width, width)`` with affine parameters, as in DC's code.
    """

    def __init__(self, channels: int, classes: int, width: int = 128, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Conv2d(channels if i == 0 else width, width, 3, padding=1),
                       nn.GroupNorm(width, width, affine=True), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(width, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def matched_parameters(net: nn.Module) -> list[nn.Parameter]:
    """The parameters whose gradients are matched: weights of ≥ 2 dimensions (convolutions,
    linear layers); biases and normalisation parameters are left out."""
    return [p for p in net.parameters() if p.ndim > 1]


def gradient_distance(gw_syn: Sequence[Tensor], gw_real: Sequence[Tensor]) -> Tensor:
    """DC/DCC layer-wise distance ``Σ_layers Σ_units (1 − cos(g_syn[u], g_real[u]))``.

    Each gradient is viewed as ``(output units, rest)`` (a conv weight ``(O, I, h, w)`` as
    ``(O, I·h·w)``); ``cos = a·b / (‖a‖·‖b‖ + 1e-6)``. 1-D gradients (bias, norm) count 0.
    """
    total = gw_real[0].new_zeros(())
    for gs, gr in zip(gw_syn, gw_real, strict=True):
        if gr.ndim < 2:
            continue
        gs, gr = gs.reshape(gs.shape[0], -1), gr.reshape(gr.shape[0], -1)
        cos = (gs * gr).sum(dim=1) / (gs.norm(dim=1) * gr.norm(dim=1) + 1e-6)
        total = total + (1 - cos).sum()
    return total
