"""The one training engine: a Lightning Trainer configured from :class:`TrainerConfig`.

Pretraining and fine-tuning differ only in their LightningModule; checkpoints, resume, the CSV
log, the loss plot, mixed precision (``bf16-mixed``: autocast to bfloat16 on CPU and GPU;
``16-mixed``: float16 with loss scaling, GPU only), channels-last memory format, DDP over
devices/nodes and wall-clock budgets (``trainer.max_time``: :class:`TimeBudget`) come from here.
"""

from __future__ import annotations

import csv
import logging
import math
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar, Timer
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


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``: a duration as a user reads it (below 10 s: ``0.42s``)."""
    if seconds < 10:
        return f"{seconds:.2g}s" if seconds < 1 else f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _suggested_budget(step: float, steps: int = 10) -> str:
    """A ``--max-time`` value for about ``steps`` steps of ``step`` seconds, rounded up."""
    total = step * steps
    if total < 60:
        return f"{math.ceil(total)}s"
    if total < 3600:
        return f"{math.ceil(total / 60)}m"
    return f"{math.ceil(total / 3600)}h"


class TimeBudget(Timer):
    """Lightning's :class:`Timer` for ``trainer.max_time``, plus what rsseg needs of it.

    As the Timer, it stops training after the optimizer step that reaches the budget (mid-epoch:
    the epoch-end hooks still run, so ``last.ckpt`` and the exported outputs are written) and
    keeps its elapsed time in the checkpoint, so a ``--resume``d run continues the clock. It is
    also the clock of the LR schedule (:meth:`elapsed`) and refuses a budget shorter than the
    first optimizer step (one line, naming the step's duration and a budget to pass).
    """

    def __init__(self, max_time: float) -> None:
        super().__init__(duration=timedelta(seconds=max_time), interval="step", verbose=False)
        self.max_time = max_time
        self._step_start: float | None = None
        self._checked = False
        self._trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def elapsed(self) -> float:
        """Training seconds so far, this run and the runs it resumes (rank zero's in DDP)."""
        seconds = self.time_elapsed()
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            seconds = float(trainer.strategy.broadcast(seconds))
        return seconds

    def on_fit_start(self, trainer: L.Trainer, *args: object, **kwargs: object) -> None:
        super().on_fit_start(trainer, *args, **kwargs)  # stops a resumed run that has no time left
        spent = self.time_elapsed()
        if spent >= self.max_time and trainer.is_global_zero:
            warnings.warn(f"the resumed run already spent its time budget ({format_duration(spent)}"
                          f" of {format_duration(self.max_time)}): nothing left to train; "
                          "resume with a longer --max-time", UserWarning, stacklevel=2)

    def on_train_batch_start(self, trainer: L.Trainer, *args: object, **kwargs: object) -> None:
        if not self._checked:
            self._step_start = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, *args: object, **kwargs: object) -> None:
        if not self._checked and self._step_start is not None:
            self._checked = True
            step = float(trainer.strategy.broadcast(time.monotonic() - self._step_start))
            if step > self.max_time:
                raise ConfigError(
                    f"one training step takes {format_duration(step)} here, longer than the "
                    f"whole time budget of {format_duration(self.max_time)}",
                    f"pass e.g. --max-time {_suggested_budget(step)} for about 10 steps")
        super().on_train_batch_end(trainer, *args, **kwargs)


def time_budget(trainer: L.Trainer | None) -> TimeBudget | None:
    """The trainer's :class:`TimeBudget`, if its run has ``trainer.max_time``."""
    callbacks = trainer.callbacks if trainer is not None else []
    return next((c for c in callbacks if isinstance(c, TimeBudget)), None)


class BudgetProgressBar(RichProgressBar):
    """Lightning's Rich progress bar; with a time budget it also shows the time ``left``."""

    def get_metrics(self, trainer: L.Trainer, module: L.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, module)
        budget = time_budget(trainer)
        if budget is not None:
            metrics["left"] = format_duration(max(budget.time_remaining() or 0.0, 0.0))
        return metrics


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
    """A Trainer that checkpoints ``last.ckpt`` each epoch (and ``best.ckpt`` by ``monitor``);
    with ``cfg.max_time`` it stops there (:class:`TimeBudget`), ``cfg.epochs`` staying a bound."""
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
        callbacks=[*ckpts, LossPlot(run, title), BudgetProgressBar(leave=True),
                   *([ChannelsLast()] if cfg.channels_last else []),
                   *([TimeBudget(cfg.max_time)] if cfg.max_time else []), *(callbacks or [])],
        log_every_n_steps=cfg.log_every_n_steps,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=run,
    )


@dataclass(frozen=True)
class ScheduleClock:
    """What a time-budgeted LR schedule reads: the budget (s), the run's elapsed training time
    (s, a function) and the optimizer steps that ``epochs`` allow."""

    max_time: float
    elapsed: Callable[[], float]
    total_steps: int


def schedule_clock(module: L.LightningModule) -> ScheduleClock | None:
    """The clock of ``module``'s trainer when its run has a time budget, else None."""
    trainer = module._trainer  # None outside fit (``module.trainer`` raises)
    budget = time_budget(trainer)
    if budget is None:
        return None
    steps = trainer.estimated_stepping_batches
    total = int(steps) if math.isfinite(steps) else 2**62
    return ScheduleClock(budget.max_time, budget.elapsed, max(total, 1))


def _schedule_factor(optim: OptimConfig, epochs: int, base_lr: float, progress: float) -> float:
    """The LR factor of a group at ``base_lr`` after ``progress`` ∈ [0, 1] of the schedule."""
    if optim.schedule == "cosine":
        floor = min(optim.min_lr / base_lr, 1.0) if base_lr > 0 else 0.0
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if optim.schedule == "exponential":
        return optim.gamma ** (progress * epochs)
    return 1.0


def optimizer_and_schedule(params, optim: OptimConfig, epochs: int,
                           clock: ScheduleClock | None = None) -> dict:
    """Adam with the configured schedule: cosine to ``min_lr``, ×gamma per epoch, or constant.

    Without ``clock``: per epoch over ``epochs``. With it (a time budget): per optimizer step,
    at progress ``max(step / total_steps, elapsed / max_time)``, so the schedule completes at
    the budget (cosine at its floor, exponential at ``gamma**epochs``) or at the last epoch,
    whichever comes first, whatever the machine's speed.
    """
    opt = torch.optim.Adam(params, lr=optim.lr, betas=optim.betas,
                           weight_decay=optim.weight_decay)
    if clock is not None:
        seen: dict[int, float] = {}

        def progress(step: int) -> float:
            if step not in seen:  # once per step for all groups (one broadcast under DDP)
                seen.clear()
                by_time = clock.elapsed() / clock.max_time if step > 0 else 0.0
                seen[step] = min(max(step / clock.total_steps, by_time), 1.0)
            return seen[step]

        def factor(base_lr: float) -> Callable[[int], float]:
            return lambda step: _schedule_factor(optim, epochs, base_lr, progress(step))

        # closures, not objects: LambdaLR keeps no state of them in checkpoints
        sched = torch.optim.lr_scheduler.LambdaLR(opt, [factor(g["lr"]) for g in opt.param_groups])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
    if optim.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=optim.min_lr)
    elif optim.schedule == "exponential":
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=optim.gamma)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
