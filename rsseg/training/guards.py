"""Training guards: stop a run that can only produce a wrong model, with one line saying why.

:class:`NonFiniteLoss` stops training at the first NaN/inf loss, before the optimizer applies
it (so no checkpoint holds the poisoned weights), naming the likely cause from what it sees: a
batch with non-finite or absurd inputs (pixels not declared nodata, non-finite statistics),
weights that already diverged (learning rate), or else a batch without a labelled pixel that
holds data (an all-nodata scene or label set).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from rsseg.errors import InputError

EXTREME = 1e4  # normalised input values beyond this are not imagery


def _tensors(batch: object) -> Iterator[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, Mapping):
        for value in batch.values():
            yield from _tensors(value)
    elif isinstance(batch, (list, tuple)):
        for value in batch:
            yield from _tensors(value)


def _finite(tensors: Iterator[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def likely_cause(batch: object, module: torch.nn.Module) -> tuple[str, str]:
    """``(cause, fix)`` of a non-finite loss on ``batch``."""
    inputs = [t for t in _tensors(batch) if t.is_floating_point()]
    if not _finite(iter(inputs)):
        return ("the batch holds NaN/inf input values: pixels that are not declared nodata, or "
                "non-finite band statistics", "declare them nodata (--nodata) or fix the data")
    if any(bool((t.abs() > EXTREME).any()) for t in inputs):
        return (f"the batch holds values over {EXTREME:.0e} standard deviations from their band "
                "mean: inf or garbage pixels that are not declared nodata?",
                "declare them nodata (--nodata) or fix the data")
    if not _finite(p.detach() for p in module.parameters()):
        return ("the weights diverged", "lower optim.lr (e.g. --set optim.lr=1e-4) or use "
                                        "trainer.precision 32-true")
    return ("no labelled pixel of the batch holds data, or a band is constant: an all-nodata "
            "scene, wrong --nodata, or labels outside the data?",
            "check the scene's nodata and statistics (gdalinfo -stats) and the labels")


class NonFiniteLoss(Callback):
    """Raise :class:`InputError` at the first non-finite training loss (see the module)."""

    def __init__(self) -> None:
        self._batch: object = None

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule,
                             batch: object, batch_idx: int) -> None:
        self._batch = batch

    def on_before_backward(self, trainer: L.Trainer, module: L.LightningModule,
                           loss: torch.Tensor) -> None:
        if bool(torch.isfinite(loss.detach()).all()):
            return
        cause, fix = likely_cause(self._batch, module)
        value = float(loss.detach().float().reshape(-1)[0])
        raise InputError(f"training stopped at epoch {trainer.current_epoch}, step "
                         f"{trainer.global_step}: the loss is {value} ({cause})", fix)
