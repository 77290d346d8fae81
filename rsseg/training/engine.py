"""The one training engine: a Lightning Trainer configured from :class:`TrainerConfig`.

Pretraining and fine-tuning differ only in their LightningModule; checkpoints, resume, the CSV
log, the loss plot, mixed precision (``bf16-mixed``: autocast to bfloat16 on CPU and GPU;
``16-mixed``: float16 with loss scaling, GPU only), channels-last memory format and DDP over
devices/nodes come from here.
"""

from __future__ import annotations

import csv
import logging
import warnings
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger

from rsseg.config import OptimConfig, TrainerConfig
from rsseg.errors import ConfigError
from rsseg.inference.device import bf16_supported
from rsseg.training.plots import plot_losses


class LossPlot(Callback):
    """Redraw ``RUN/loss.png`` from the CSV log after every epoch (rank zero only).

    Lightning logs epoch-level values after the callbacks' epoch-end hooks, so the plot is
    drawn when the next epoch starts and when training ends.
    """

    def __init__(self, run: Path, title: str) -> None:
        self.run, self.title = run, title

    def _plot(self, trainer: L.Trainer) -> None:
        if trainer.is_global_zero:
            trainer.logger.save()
            plot_losses(self.run / "metrics.csv", self.run / "loss.png", self.title)

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._plot(trainer)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._plot(trainer)


class RunLogger(CSVLogger):
    """Lightning's CSV logger writing ``RUN/metrics.csv``, keeping the rows of a resumed run.

    (Lightning's writer deletes an existing metrics file when it starts.)
    """

    def __init__(self, run: Path) -> None:
        path = run / "metrics.csv"
        with path.open() if path.is_file() else nullcontext([]) as f:
            self._previous = [{k: v for k, v in row.items() if v != ""}
                              for row in csv.DictReader(f)] if path.is_file() else []
        super().__init__(save_dir=run, name="", version="")

    @property
    def experiment(self):
        exp = super().experiment
        if self._previous:
            exp.metrics[:0], self._previous = self._previous, []
        return exp


class ChannelsLast(Callback):
    """Put the module's 4-D weights in channels-last (NHWC) memory format before training:
    convolutions then take oneDNN's/cuDNN's NHWC kernels (and their outputs stay NHWC)."""

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        module.to(memory_format=torch.channels_last)


def check_precision(precision: str, accelerator: str) -> None:
    """``16-mixed`` needs a GPU (ConfigError); ``bf16-mixed`` on a CPU without native bf16
    (AVX-512 BF16/AMX) runs emulated, slower than ``32-true``: one warning line."""
    on_gpu = accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())
    if precision == "16-mixed" and not on_gpu:
        raise ConfigError("trainer.precision 16-mixed needs a GPU",
                          "use bf16-mixed or 32-true on CPU")
    if precision == "bf16-mixed" and not on_gpu and not bf16_supported(torch.device("cpu")):
        warnings.warn(f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bf16 "
                      "(AVX-512 BF16/AMX): bf16-mixed runs emulated, several times slower than "
                      "32-true",
                      UserWarning, stacklevel=2)


def resolve_accelerator(name: str) -> str:
    """Map ``auto|cpu|cuda|gpu`` to Lightning's names; a missing GPU is a clear error."""
    if name in ("cuda", "gpu"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but no CUDA GPU is available",
                              "use --device cpu or auto")
        return "gpu"
    return name


def build_trainer(cfg: TrainerConfig, run: Path, title: str,
                  monitor: str | None = None, callbacks: list[Callback] | None = None
                  ) -> L.Trainer:
    """A Trainer that checkpoints ``last.ckpt`` each epoch (and ``best.ckpt`` by ``monitor``)."""
    # last.ckpt after every epoch, so a stopped run resumes from its last finished epoch.
    # (save_last=True with save_top_k=0 writes it only when training ends, as of Lightning 2.6.)
    ckpts = [ModelCheckpoint(dirpath=run / "checkpoints", filename="last", save_top_k=1,
                             every_n_epochs=1, enable_version_counter=False)]
    if monitor:
        ckpts.append(ModelCheckpoint(dirpath=run / "checkpoints", filename="best",
                                     monitor=monitor, mode="max", save_top_k=1,
                                     enable_version_counter=False))
    accelerator = resolve_accelerator(cfg.accelerator)
    check_precision(cfg.precision, accelerator)
    distributed = cfg.devices > 1 or cfg.num_nodes > 1
    # Some pretexts leave parts of the model without gradient (SimCLR: decoder and head), so
    # DDP must look for unused parameters unless the user picked a strategy.
    strategy = ("ddp_find_unused_parameters_true" if distributed and cfg.strategy == "auto"
                else cfg.strategy)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    for noise in (".*does not have many workers.*", ".*exists and is not empty.*",
                  ".*smaller than the logging interval.*", ".*LeafSpec.*"):
        warnings.filterwarnings("ignore", noise)
    return L.Trainer(
        max_epochs=cfg.epochs,
        limit_train_batches=cfg.steps_per_epoch,
        accelerator=accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=strategy,
        precision=cfg.precision,
        logger=RunLogger(run),
        callbacks=[*ckpts, LossPlot(run, title), RichProgressBar(leave=True),
                   *([ChannelsLast()] if cfg.channels_last else []), *(callbacks or [])],
        log_every_n_steps=cfg.log_every_n_steps,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=run,
    )


def optimizer_and_schedule(params, optim: OptimConfig, epochs: int) -> dict:
    """Adam with the configured per-epoch schedule (cosine to ``min_lr`` or ×gamma)."""
    opt = torch.optim.Adam(params, lr=optim.lr, betas=optim.betas,
                           weight_decay=optim.weight_decay)
    if optim.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=optim.min_lr)
    elif optim.schedule == "exponential":
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=optim.gamma)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
