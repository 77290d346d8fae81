"""LightningModules: self-supervised pretraining with a pretext, supervised segmentation.

:class:`SegmentationModule` trains on labelled pixels with a supervised loss (cross-entropy,
class-balanced CE or focal; ``ignore_index`` elsewhere) plus any fine-tuning regularizers of the
registry (:mod:`rsseg.regularizers.base`), without a branch per method. A batch is ``(x, y)``,
or one ``(x, y)`` per domain for multi-domain models (:mod:`rsseg.regularizers.multidomain`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from rsseg.config import OptimConfig, SupervisedLoss
from rsseg.models import parts
from rsseg.regularizers.base import Regularizer, SegPart, SegStep, Stage, capture
from rsseg.training.engine import optimizer_and_schedule, schedule_clock


class PretrainModule(L.LightningModule):
    """Optimises ``pretext(batch, model)``: the model and the pretext's heads together."""

    def __init__(self, model: nn.Module, pretext: nn.Module, optim: OptimConfig,
                 epochs: int) -> None:
        super().__init__()
        self.model, self.pretext = model, pretext
        self.optim, self.epochs = optim, epochs

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, logs = self.pretext(batch, self.model)
        bs = next(iter(batch.values())).shape[0]
        self.log("loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=bs,
                 sync_dist=True)
        for key, value in logs.items():
            if key == "loss":
                continue
            self.log(key, value, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        return loss

    def on_train_epoch_start(self) -> None:
        self.pretext.on_epoch_start(self.current_epoch, self.model)

    def configure_optimizers(self) -> dict:
        return optimizer_and_schedule(self.parameters(), self.optim, self.epochs,
                                      schedule_clock(self))


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore: int) -> torch.Tensor:
    """``(K, K)`` int64 counts, rows = target, cols = prediction, ``ignore`` skipped."""
    keep = target != ignore
    idx = target[keep] * num_classes + pred[keep]
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def class_balanced_weights(counts: Sequence[int] | np.ndarray, beta: float) -> Tensor:
    """Cui et al. (CVPR 2019) weights ``(1 − β) / (1 − β^n_k)``, mean 1 over the classes.

    A class without labelled pixels gets the largest weight of the others (1 if none has any).
    """
    n = torch.as_tensor(np.asarray(counts, dtype=np.float64))
    effective = 1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n)
    weights = torch.where(n > 0, (1.0 - beta) / effective.clamp(min=1e-12), torch.nan)
    fill = weights[n > 0].max() if bool((n > 0).any()) else torch.tensor(1.0, dtype=torch.float64)
    weights = torch.nan_to_num(weights, nan=float(fill))
    return (weights / weights.mean()).float()


def focal_loss(logits: Tensor, target: Tensor, gamma: float, ignore_index: int) -> Tensor:
    """``−(1 − p_t)^γ · log p_t`` (Lin et al., ICCV 2017), mean over labelled pixels.

    Args:
        logits: ``(B, K, H, W)``; target: ``(B, H, W)`` int64, ``ignore_index`` unlabelled.
    """
    keep = target != ignore_index
    if not bool(keep.any()):
        return logits.sum() * 0.0
    log_p = F.log_softmax(logits.float(), dim=1)
    log_pt = log_p.gather(1, target.clamp(max=logits.shape[1] - 1)[:, None])[:, 0][keep]
    return (-(1 - log_pt.exp()).pow(gamma) * log_pt).mean()


class SupervisedCriterion(nn.Module):
    """The supervised loss of one domain: ``ce``, ``balanced_ce`` or ``focal``.

    ``counts``: labelled training pixels per class (for the class-balanced weights).
    """

    def __init__(self, config: SupervisedLoss, counts: Sequence[int] | np.ndarray,
                 ignore_index: int) -> None:
        super().__init__()
        self.config, self.ignore_index = config, ignore_index
        self.register_buffer("weights", class_balanced_weights(counts, config.beta),
                             persistent=False)

    def forward(self, logits: Tensor, target: Tensor, name: str | None = None) -> Tensor:
        name = name or self.config.name
        if name == "focal":
            return focal_loss(logits, target, self.config.gamma, self.ignore_index)
        if name == "balanced_ce":
            return F.cross_entropy(logits.float(), target, weight=self.weights,
                                   ignore_index=self.ignore_index)
        return F.cross_entropy(logits, target, ignore_index=self.ignore_index)


class SegmentationModule(L.LightningModule):
    """Supervised loss on labelled pixels plus regularizers; validation OA and Kappa.

    Args:
        model: a plain segmentation model, or a multi-domain one called as ``model(x, d)``.
        num_classes: class count (an int), or one per domain.
        ignore_index: label of unlabelled pixels.
        regularizers: fine-tuning regularizers, each adding ``w·L`` (its :class:`Stage`
            may change the weights per epoch, e.g. a contrastive first stage).
        loss: the supervised loss; class_counts: labelled training pixels per class and
            domain (class-balanced CE).
        domains: domain names (logs ``val_oa_<name>`` per domain when several);
            val_domains: the domain of each validation loader, in order.
        encoder_lr_scale: the encoder (smp ``encoder``) learns at this fraction of
            ``optim.lr``, the rest at ``optim.lr`` (discriminative fine-tuning of a
            pretrained encoder); 1: one learning rate for every parameter.
        ema: with a decay in (0, 1), an exponential moving average of the weights (and of
            the batch-norm statistics) is kept after every step in ``ema_model``; validation
            scores it, and it is the model to export. 0: no average.
    """

    def __init__(self, model: nn.Module, num_classes: int | Sequence[int], ignore_index: int,
                 optim: OptimConfig, epochs: int,
                 regularizers: Sequence[Regularizer] = (),
                 loss: SupervisedLoss | None = None,
                 class_counts: Sequence[Sequence[int]] | None = None,
                 domains: Sequence[str] = ("",),
                 val_domains: Sequence[int] | None = None,
                 encoder_lr_scale: float = 1.0, ema: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.encoder_lr_scale = encoder_lr_scale
        self.ema_model = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema),
                                        use_buffers=True).requires_grad_(False)
                          if ema else None)
        classes = [num_classes] if isinstance(num_classes, int) else list(num_classes)
        self.num_classes, self.ignore_index = classes[0], ignore_index
        self.classes = classes
        self.multi = len(classes) > 1
        self.optim, self.epochs = optim, epochs
        self.regularizers = nn.ModuleList(regularizers)
        counts = class_counts or [[1] * k for k in classes]
        self.criteria = nn.ModuleList(SupervisedCriterion(loss or SupervisedLoss(), c,
                                                          ignore_index) for c in counts)
        self.domain_names = list(domains)
        self.val_domains = list(val_domains) if val_domains is not None else [0]
        self.taps = frozenset().union(*(r.taps for r in regularizers))
        for d, k in enumerate(classes):
            self.register_buffer(f"confusion{d}", torch.zeros(k, k, dtype=torch.long),
                                 persistent=False)

    @property
    def confusion(self) -> Tensor:
        return self.confusion0

    def forward(self, x: torch.Tensor, domain: int = 0) -> torch.Tensor:
        return self.model(x, domain) if self.multi else self.model(x)

    def stages(self) -> list[Stage]:
        return [r.stage(self.current_epoch) for r in self.regularizers]

    def training_step(self, batch: Sequence, batch_idx: int) -> torch.Tensor:
        stages = self.stages()
        self._freeze_body(any(s.head_only for s in stages))
        parts = []
        for domain, (x, y) in _domain_batches(batch):
            with capture(self.model, self.taps) as features:
                logits = self(x, domain)
            parts.append(SegPart(domain, x, y, logits, dict(features)))
        override = next((s.loss for s in stages if s.loss), None)
        supervised = torch.stack([self.criteria[p.domain](p.logits, p.labels, override)
                                  for p in parts]).mean()
        factor = float(np.prod([s.supervised for s in stages])) if stages else 1.0
        loss = factor * supervised
        bs = sum(len(p.images) for p in parts)
        logs: dict[str, Tensor] = {"loss_supervised": supervised.detach()}
        step = SegStep(parts, self.ignore_index)
        for reg, stage in zip(self.regularizers, stages, strict=True):
            weight = reg.config.weight if stage.weight is None else stage.weight
            if weight == 0:
                continue
            term, reg_logs = reg(step)
            loss = loss + weight * term
            logs.update(reg_logs)
        self.log("loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=bs,
                 sync_dist=True)
        if self.regularizers:
            for key, value in logs.items():
                self.log(key, value, on_step=False, on_epoch=True, batch_size=bs,
                         sync_dist=True)
        return loss

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        if self.ema_model is not None:
            self.ema_model.update_parameters(self.model)

    def trained_model(self) -> nn.Module:
        """The model to score and export: the weight average with ``ema``, else the model."""
        return self.model if self.ema_model is None else self.ema_model.module

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int,
                        dataloader_idx: int = 0) -> None:
        x, y = batch
        domain = self.val_domains[dataloader_idx]
        model = self.trained_model()
        pred = (model(x, domain) if self.multi else model(x)).argmax(1)
        confusion = getattr(self, f"confusion{domain}")
        confusion += confusion_matrix(pred, y, self.classes[domain], self.ignore_index)

    def on_validation_epoch_end(self) -> None:
        scores = {}
        for domain in sorted(set(self.val_domains)):
            confusion = getattr(self, f"confusion{domain}")
            cm = self.trainer.strategy.reduce(confusion.float(), reduce_op="sum")
            total = cm.sum().clamp(min=1)
            oa = cm.diag().sum() / total
            expected = (cm.sum(0) * cm.sum(1)).sum() / total**2
            kappa = (oa - expected) / (1 - expected).clamp(min=1e-12)
            scores[domain] = (oa, kappa)
            confusion.zero_()
        oa = torch.stack([s[0] for s in scores.values()]).mean()
        kappa = torch.stack([s[1] for s in scores.values()]).mean()
        self.log_dict({"val_oa": oa, "val_kappa": kappa}, prog_bar=True)
        if self.multi:
            self.log_dict({f"val_oa_{self.domain_names[d]}": s[0] for d, s in scores.items()})

    def configure_optimizers(self) -> dict:
        params = [p for name, p in self.named_parameters() if not name.startswith("ema_model.")]
        encoder = set(map(id, parts.encoder_parameters(self.model)))
        if self.encoder_lr_scale == 1 or not encoder:
            return optimizer_and_schedule(params, self.optim, self.epochs, schedule_clock(self))
        groups = [{"params": [p for p in params if id(p) in encoder],
                   "lr": self.optim.lr * self.encoder_lr_scale},
                  {"params": [p for p in params if id(p) not in encoder]}]
        return optimizer_and_schedule(groups, self.optim, self.epochs, schedule_clock(self))

    def _freeze_body(self, freeze: bool) -> None:
        """``freeze``: only the segmentation head(s) learn, the rest is frozen with its
        batch-norm statistics (eval mode), as in a second, classifier-only stage."""
        if not freeze and not getattr(self, "_frozen", False):
            return
        head = {id(p) for m in parts.head_modules(self.model) for p in m.parameters()}
        for param in self.model.parameters():
            param.requires_grad_(not freeze or id(param) in head)
        self._frozen = freeze
        if freeze:
            self.model.eval()
            for module in parts.head_modules(self.model):
                module.train()


def trained_weights(checkpoint: Path, ema: bool) -> dict[str, Tensor]:
    """The model's weights in a :class:`SegmentationModule` checkpoint: the weight average with
    ``ema``, else the model's own."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    prefix = "ema_model.module." if ema else "model."
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def _domain_batches(batch: Sequence) -> list[tuple[int, tuple[Tensor, Tensor]]]:
    """``(x, y)`` → ``[(0, (x, y))]``; one ``(x, y)`` per domain → ``[(d, (x_d, y_d)), ...]``."""
    if isinstance(batch[0], Tensor):
        return [(0, (batch[0], batch[1]))]
    return [(d, (x, y)) for d, (x, y) in enumerate(batch)]
