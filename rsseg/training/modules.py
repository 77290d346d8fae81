"""LightningModules: self-supervised pretraining with a pretext, supervised segmentation."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from rsseg.config import OptimConfig
from rsseg.training.engine import optimizer_and_schedule


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
        return optimizer_and_schedule(self.parameters(), self.optim, self.epochs)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore: int) -> torch.Tensor:
    """``(K, K)`` int64 counts, rows = target, cols = prediction, ``ignore`` skipped."""
    keep = target != ignore
    idx = target[keep] * num_classes + pred[keep]
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


class SegmentationModule(L.LightningModule):
    """Cross-entropy on labelled pixels (``ignore_index`` elsewhere); validation OA and Kappa."""

    def __init__(self, model: nn.Module, num_classes: int, ignore_index: int,
                 optim: OptimConfig, epochs: int) -> None:
        super().__init__()
        self.model = model
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.optim, self.epochs = optim, epochs
        self.register_buffer("confusion", torch.zeros(num_classes, num_classes, dtype=torch.long),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
                      ) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self.model(x), y, ignore_index=self.ignore_index)
        self.log("loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(x),
                 sync_dist=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        pred = self.model(x).argmax(1)
        self.confusion += confusion_matrix(pred, y, self.num_classes, self.ignore_index)

    def on_validation_epoch_end(self) -> None:
        cm = self.trainer.strategy.reduce(self.confusion.float(), reduce_op="sum")
        total = cm.sum().clamp(min=1)
        oa = cm.diag().sum() / total
        expected = (cm.sum(0) * cm.sum(1)).sum() / total**2
        kappa = (oa - expected) / (1 - expected).clamp(min=1e-12)
        self.log_dict({"val_oa": oa, "val_kappa": kappa}, prog_bar=True)
        self.confusion.zero_()

    def configure_optimizers(self) -> dict:
        return optimizer_and_schedule(self.parameters(), self.optim, self.epochs)
