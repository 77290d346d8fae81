"""DCC: dataset condensation with contrastive signals, for segmentation (docs/methods.md, "DCC").

Lee, Chun, Jung, Yun, Yoon, "Dataset Condensation with Contrastive Signals", ICML 2022
(code: Saehyung-Lee/DCC), building on Zhao, Mopuri, Bilen, "Dataset Condensation with Gradient
Matching", ICLR 2021 (DC). A data *tool* (``rsseg condense``): :func:`learn` learns a small
synthetic labelled tile set whose training gradients match the real set's (:class:`RealPool`,
real crops per class); :mod:`rsseg.pipelines.condense` reads the labelled data and writes the set.

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

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from rsseg.classes import IGNORE
from rsseg.registry import MethodConfig, register

Progress = Callable[[int, int, float], None]
"""Called as ``progress(iteration, iterations, mean matching loss)`` after each iteration."""

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
    """Registry record of the ``rsseg condense`` tool (the algorithm is :func:`learn`)."""

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


CHUNK = 16
"""Tiles per forward pass when a gradient is taken over more tiles: the network treats every
tile on its own (instance norm, no batch statistics), so the gradient of a loss summed over
tiles is the sum of the gradients of its chunks. Chunks keep the activations (16 tiles of
64 px × 32 channels: 8 MB) in cache; whole batches of 64-112 tiles measured ~2× slower per
tile on the 2-core CPU, most of all through the matching's double backward."""


@dataclass
class RealPool:
    """Real crops per class index, normalised: ``x[c]`` ``(n_c, C, S, S)``, ``y[c]`` ``(n_c, S,
    S)`` int64 class indexes (255 unlabelled)."""

    x: dict[int, Tensor]
    y: dict[int, Tensor]

    def batch(self, c: int, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        order = torch.randperm(len(self.x[c]), generator=gen)[:n]
        return self.x[c][order], self.y[c][order]


def class_target(labels: Tensor, c: int | None) -> Tensor:
    """``labels`` with every pixel not labelled ``c`` unlabelled (all labels if ``c`` is None)."""
    return labels if c is None else torch.where(labels == c, labels, IGNORE)


def masked_ce(logits: Tensor, labels: Tensor, c: int | None = None) -> Tensor:
    """Mean cross-entropy over the pixels labelled ``c`` (all labelled pixels if None)."""
    target = class_target(labels, c)
    count = (target != IGNORE).sum()
    if not bool(count):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum") / count


def chunk_losses(net: nn.Module, x: Tensor, target: Tensor, count: int) -> Iterator[Tensor]:
    """The masked cross-entropy of ``net(x)`` over ``count`` labelled pixels of ``target``,
    :data:`CHUNK` tiles at a time: the chunks' terms, which sum to :func:`masked_ce`."""
    for start in range(0, len(x), CHUNK):
        yield F.cross_entropy(net(x[start:start + CHUNK]), target[start:start + CHUNK],
                              ignore_index=IGNORE, reduction="sum") / count


def initial_set(pool: RealPool, cfg: DCCConfig, gen: torch.Generator, real_labels: bool
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


def learn(pool: RealPool, channels: int, num_classes: int, cfg: DCCConfig,
           device: torch.device, progress: Progress | None
           ) -> tuple[Tensor, Tensor, list[int], list[float]]:
    """The DCC loop (module docstring): synthetic tiles, label maps, the
    classes present (tile ``i`` belongs to ``present[i // per_class]``), loss history."""
    gen = torch.Generator().manual_seed(cfg.seed)
    n = cfg.per_class
    images, maps, present = initial_set(pool, cfg, gen, real_labels=cfg.labels == "real")
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
            loss = matching_loss(net, params, syn, syn_labels, owner, real, present, cfg,
                                  joint, gen)
            # Only the tiles' gradient: loss.backward() would also fill the network's .grad
            # (second-order terms for every parameter) that the next network step discards.
            (syn.grad,) = torch.autograd.grad(loss, syn)
            optimizer.step()
            total += loss.item()
            if inner == inner_loop - 1:
                break
            train_net(net, net_optimizer, syn.detach(), syn_labels, net_steps,
                       cfg.batch_train, gen)
        history.append(total / inner_loop)
        if progress:
            progress(outer + 1, cfg.iterations, history[-1])
    return syn.detach().cpu(), syn_labels.cpu(), present, history


def gradient(net: torch.nn.Module, params: list, x: Tensor, labels: Tensor, c: int | None,
              create_graph: bool = False) -> tuple[Tensor, ...]:
    """``∇ masked_ce(net(x), labels, c)`` w.r.t. ``params``, :data:`CHUNK` tiles at a time."""
    target = class_target(labels, c)
    count = int((target != IGNORE).sum())
    if not count:  # no pixel of the class: the zero gradient, still part of the graph
        return torch.autograd.grad(masked_ce(net(x), labels, c), params,
                                   create_graph=create_graph)
    grads: tuple[Tensor, ...] = ()
    for part in chunk_losses(net, x, target, count):
        g = torch.autograd.grad(part, params, create_graph=create_graph)
        grads = tuple(a + b for a, b in zip(grads, g, strict=True)) if grads else g
    return grads


def real_gradient(net: torch.nn.Module, params: list, real: dict, c: int, cfg: DCCConfig,
                   gen: torch.Generator) -> tuple[Tensor, ...]:
    """``∇L_c(real_c)``: the CE over the class-``c`` pixels of ``batch_real`` random crops of
    class ``c``."""
    x, y = real[c]
    order = torch.randperm(len(x), generator=gen)[:cfg.batch_real].to(x.device)
    return tuple(g.detach() for g in gradient(net, params, x[order], y[order], c))


def mean_real_gradient(net: torch.nn.Module, params: list, real: dict, present: list[int],
                        cfg: DCCConfig, gen: torch.Generator) -> tuple[Tensor, ...]:
    """``(1/K)·Σ_c ∇L_c(real_c)``, class by class (a class's batch is one pass; one pass over
    every class's batch measured slower, see :data:`CHUNK`)."""
    total: tuple[Tensor, ...] = ()
    for c in present:
        g = real_gradient(net, params, real, c, cfg, gen)
        total = tuple(a + b for a, b in zip(total, g, strict=True)) if total else g
    return tuple(g / len(present) for g in total)


def matching_loss(net: torch.nn.Module, params: list, syn: Tensor, syn_labels: Tensor,
                   owner: Tensor, real: dict, present: list[int], cfg: DCCConfig, joint: bool,
                   gen: torch.Generator) -> Tensor:
    """DCC's joint matching (``joint``) or DC's class-wise matching, one synthetic update."""
    if joint:
        mean_real = mean_real_gradient(net, params, real, present, cfg, gen)
        gw_syn = gradient(net, params, syn, syn_labels, None, create_graph=True)
        return gradient_distance(gw_syn, mean_real)
    loss = syn.new_zeros(())
    for c in present:
        gw_real = real_gradient(net, params, real, c, cfg, gen)
        mine = owner == c if cfg.labels == "uniform" else torch.ones_like(owner, dtype=bool)
        gw_syn = gradient(net, params, syn[mine], syn_labels[mine], c, create_graph=True)
        loss = loss + gradient_distance(gw_syn, gw_real)
    return loss


def train_net(net: torch.nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
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
            for part in chunk_losses(net, xb, yb, count) if count else ():
                part.backward()
            optimizer.step()
