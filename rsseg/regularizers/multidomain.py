"""Multi-domain fine-tuning: domain-specific batch norm, one head per domain, domain contrast.

Boutillon et al., "Multi-task, multi-domain deep segmentation with shared representations and
contrastive regularization for sparse pediatric datasets", MICCAI 2021 (arXiv 2105.10310; no
official code). docs/methods.md, "Multi-domain".

One model trains on several labelled datasets ("domains": sensors, cities, label sets) at once:

- :class:`MultiDomainModel`: the convolutions of one smp model are shared; every
  ``BatchNorm2d`` of its encoder and decoder becomes a :class:`DomainBatchNorm2d` (one BN per
  domain, the batch's domain chooses which); one segmentation head per domain (each with its
  own class count). ``model(x, domain)`` maps ``(B, C, H, W)`` → ``(B, K_domain, H, W)``.
- Each training step holds one sub-batch per domain (``batch_size`` crops each), run through
  the model separately (its domain's BN statistics and head); the supervised loss is the mean
  over domains.
- The regularizer (:class:`MultiDomain`, ``multidomain``) on pooled bottleneck features
  ``z`` = spatial mean of the deepest encoder stage ``(B, Ce)``, L2-normalised, over the step's
  ``N`` items of all domains: the margin contrastive loss of Hadsell, Chopra, LeCun (CVPR
  2006), mean over the pairs ``i < j``::

      ℓ_ij = ½·‖z_i − z_j‖²                      same domain  (pulled together)
      ℓ_ij = ½·max(0, m − ‖z_i − z_j‖)²          different domains (kept ≥ m apart)

- Bundles: one per domain, each an ordinary model (its domain's BN and head) that ``predict``
  loads like any other; ``BundleMeta.domain`` records ``{"name", "domains", "bundles"}`` and
  :func:`domain_bundle` resolves ``predict --domain NAME`` to the domain's file.

Deviations: the paper's exact distance normalisation and margin are not published with code;
``normalize`` (default on) and ``margin`` (default 1.0 on the unit sphere) are this module's
choices. One bundle file per domain (the bundle format holds one model), the first domain's
being ``model.rsseg``.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from rsseg.errors import ConfigError, InputError
from rsseg.models import parts
from rsseg.models.bundle import read_meta
from rsseg.models.factory import ModelSpec, build_model
from rsseg.registry import register
from rsseg.regularizers.base import Regularizer, RegularizerConfig, SegInfo, SegStep, tap_channels


class MultiDomainConfig(RegularizerConfig):
    """Domain contrast settings (``weight`` is its ``w`` in ``L_sup + w·L``)."""

    margin: float = Field(1.0, gt=0, le=100)
    normalize: bool = True


def domain_contrast_loss(z: Tensor, domains: Tensor, margin: float = 1.0,
                         normalize: bool = True) -> Tensor:
    """Hadsell margin contrastive loss over all pairs ``i < j`` (module docstring).

    Args:
        z: ``(N, D)`` pooled bottleneck features, ``N ≥ 2``.
        domains: ``(N,)`` int64 domain of each item.
        margin: ``m``, the distance kept between domains.
        normalize: L2-normalise ``z`` first.

    Returns:
        Scalar float32 mean over the ``N(N−1)/2`` pairs.
    """
    if z.ndim != 2 or z.shape[0] < 2 or domains.shape != z.shape[:1]:
        raise ValueError(f"domain_contrast_loss needs (N ≥ 2, D) and (N,), got "
                         f"{tuple(z.shape)}, {tuple(domains.shape)}")
    with torch.autocast(z.device.type, enabled=False):
        z = z.float()
        if normalize:
            z = F.normalize(z, dim=1)
        i, j = torch.triu_indices(len(z), len(z), offset=1, device=z.device)
        squared = (z[i] - z[j]).pow(2).sum(dim=1)
        same = domains[i] == domains[j]
        apart = torch.clamp(margin - torch.sqrt(squared + 1e-12), min=0).pow(2)
        return 0.5 * torch.where(same, squared, apart).mean()


@register
class MultiDomain(Regularizer):
    """Contrastive domain regularizer; the engine adds domain BN and heads (module docstring)."""

    name = "multidomain"
    description = ("several labelled datasets at once: domain-specific batch norm, one head per "
                   "domain, margin contrast of pooled bottleneck features between domains")
    reference = ("Boutillon et al., Multi-task, multi-domain deep segmentation with shared "
                 "representations and contrastive regularization, MICCAI 2021 (arXiv 2105.10310)")
    needs = frozenset({"labels", "domains"})
    config_class = MultiDomainConfig
    taps = frozenset({"bottleneck"})
    config: MultiDomainConfig

    def __init__(self, config: MultiDomainConfig, model: nn.Module, info: SegInfo) -> None:
        super().__init__(config, info)
        tap_channels(model, "bottleneck")  # ConfigError now for a model without an encoder

    @classmethod
    def check_data(cls, available: Collection[str]) -> None:
        if "labels" not in available:
            super().check_data(available)
        if "domains" not in available:
            raise ConfigError("method 'multidomain' trains on several labelled datasets at once "
                              "but this run has one",
                              "give two or more, e.g. --tiles A --tiles B, or a domains: list "
                              "in the config")

    def forward(self, step: SegStep) -> tuple[Tensor, dict[str, Tensor]]:
        z = torch.cat([p.features["bottleneck"].mean(dim=(2, 3)) for p in step.parts])
        domains = torch.cat([torch.full((len(p.images),), p.domain, device=z.device)
                             for p in step.parts])
        loss = domain_contrast_loss(z, domains, self.config.margin, self.config.normalize)
        return loss, {"loss_domain": loss.detach()}


# --- the model ---------------------------------------------------------------------------------

class DomainBatchNorm2d(nn.Module):
    """One ``BatchNorm2d`` per domain; ``active`` (set by :class:`MultiDomainModel`) picks it."""

    def __init__(self, bn: nn.BatchNorm2d, domains: int) -> None:
        super().__init__()
        self.bns = nn.ModuleList(copy.deepcopy(bn) for _ in range(domains))
        self.active = 0

    def forward(self, x: Tensor) -> Tensor:
        return self.bns[self.active](x)


def _split_batch_norms(module: nn.Module, domains: int) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, DomainBatchNorm2d(child, domains))
        else:
            _split_batch_norms(child, domains)


class MultiDomainModel(nn.Module):
    """Shared convolutions, per-domain batch norm and segmentation heads.

    Built from one plain model per domain (same architecture and bands, any class counts):
    the first model's encoder and decoder become the shared body (its batch norms copied per
    domain), every model contributes its ``segmentation_head``.
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(models) < 2:
            raise ValueError("a multi-domain model needs at least two domains")
        heads = [parts.smp_head(m) for m in models]
        if any(h is None for h in heads) or parts.encoder(models[0]) is None:
            raise ConfigError(f"multidomain needs an encoder-decoder architecture; "
                              f"{type(models[0]).__name__} has no segmentation head",
                              "use e.g. model.arch=unet")
        base = models[0]
        base.segmentation_head = nn.Identity()
        _split_batch_norms(base, len(models))
        self.base = base
        self.heads = nn.ModuleList(heads)
        self.decoder_tap = nn.Identity()  # its output: the decoder features (regularizer tap)

    @property
    def encoder(self) -> nn.Module:
        return self.base.encoder

    def forward(self, x: Tensor, domain: int = 0) -> Tensor:
        for module in self.base.modules():
            if isinstance(module, DomainBatchNorm2d):
                module.active = domain
        return self.heads[domain](self.decoder_tap(self.base(x)))

    def export(self, domain: int, spec: ModelSpec) -> nn.Module:
        """The plain model of ``domain`` (spec: its architecture and class count), eval mode."""
        split = {name for name, m in self.base.named_modules()
                 if isinstance(m, DomainBatchNorm2d)}
        ours = self.state_dict()
        plain = build_model(spec)
        state = {}
        for key in plain.state_dict():
            if key.startswith("segmentation_head."):
                source = f"heads.{domain}.{key.removeprefix('segmentation_head.')}"
            else:
                owner, _, leaf = key.rpartition(".")
                source = (f"base.{owner}.bns.{domain}.{leaf}" if owner in split
                          else f"base.{key}")
            state[key] = ours[source]
        plain.load_state_dict(state, strict=True)
        return plain.eval()


# --- bundles -----------------------------------------------------------------------------------

def domain_record(name: str, names: Sequence[str], files: Sequence[str]) -> dict:
    """``BundleMeta.domain`` of domain ``name`` of a multi-domain run."""
    return {"name": name, "domains": list(names),
            "bundles": dict(zip(names, files, strict=True))}


def domain_bundle(path: str | Path, name: str | None) -> Path:
    """The bundle file holding domain ``name`` of the multi-domain bundle at ``path``.

    ``None`` keeps ``path``. Raises ``InputError`` naming the recorded domains when ``name``
    is not one of them (or the bundle records none).
    """
    path = Path(path)
    if name is None:
        return path
    record = read_meta(path).domain
    if record.get("name") == name:
        return path
    bundles = record.get("bundles") or {}
    if not bundles:
        raise InputError(f"{path} records no domains (it was not trained with multidomain), "
                         f"so --domain {name} cannot choose one", "leave out --domain")
    if name not in bundles:
        raise InputError(f"{path} has no domain {name!r}",
                         f"its domains: {', '.join(record.get('domains') or bundles)}")
    other = path.parent / str(bundles[name])
    if not other.is_file():
        raise InputError(f"domain {name!r} of {path} is stored in {other}, which is missing",
                         "keep the run folder's model.*.rsseg files together")
    return other
