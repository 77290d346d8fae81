"""Collapse diagnostic during pretraining (DirectCLR; docs/methods.md, "Collapse diagnostic").

Each epoch, embed a fixed sample of tiles with the pretext's ``embed`` (global vectors and
sampled decoder pixels), and record the singular-value spectrum and effective rank
``exp(H(s / Σs))``. ``RUN/spectrum.csv`` holds one row per epoch and kind, ``RUN/spectrum.png``
the spectra, and the effective ranks go to the CSV log, so a collapsing run is visible.
"""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import matplotlib
import torch
from lightning.pytorch.callbacks import Callback

from rsseg.losses.diagnostics import effective_rank, embedding_spectrum

matplotlib.use("Agg")
import matplotlib.pyplot as plt


class SpectrumMonitor(Callback):
    """Log the embedding spectrum and effective rank of ``images`` ``(N, C, H, W)`` per epoch."""

    def __init__(self, images: torch.Tensor, run: Path) -> None:
        self.images, self.run = images, run
        self.history: dict[str, list[tuple[int, list[float]]]] = {}

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        was_training = module.model.training
        module.model.eval()
        with torch.no_grad():
            embeddings = module.pretext.embed(self.images.to(module.device), module.model)
        module.model.train(was_training)
        for kind, z in embeddings.items():
            spectrum = embedding_spectrum(z.float()).cpu()
            rank = effective_rank(spectrum)
            module.log(f"effective_rank_{kind}", rank, rank_zero_only=True)
            self.history.setdefault(kind, []).append((trainer.current_epoch, spectrum.tolist()))
            if trainer.is_global_zero:
                self._append_csv(trainer.current_epoch, kind, rank, spectrum.tolist())
        if trainer.is_global_zero:
            self._plot()

    def _append_csv(self, epoch: int, kind: str, rank: float, spectrum: list[float]) -> None:
        path = self.run / "spectrum.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["epoch", "kind", "effective_rank", "dims", "singular_values"])
            writer.writerow([epoch, kind, f"{rank:.4f}", len(spectrum),
                             " ".join(f"{s:.6g}" for s in spectrum)])

    def _plot(self) -> None:
        fig, axes = plt.subplots(1, len(self.history), figsize=(4.5 * len(self.history), 3.2),
                                 squeeze=False)
        for ax, (kind, rows) in zip(axes[0], sorted(self.history.items()), strict=True):
            cmap = plt.get_cmap("viridis")
            for i, (epoch, spectrum) in enumerate(rows):
                colour = cmap(i / max(len(rows) - 1, 1))
                ax.semilogy([max(s, 1e-12) for s in spectrum], color=colour,
                            label=f"epoch {epoch}" if i in (0, len(rows) - 1) else None)
            ax.set_title(f"{kind} embedding spectrum")
            ax.set_xlabel("singular value index")
            ax.legend(fontsize=7)
        fig.tight_layout()
        tmp = self.run / "spectrum.tmp.png"
        fig.savefig(tmp, dpi=90)
        plt.close(fig)
        tmp.replace(self.run / "spectrum.png")
