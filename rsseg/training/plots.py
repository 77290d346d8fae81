"""Loss plots for run folders (matplotlib, headless)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def read_metrics(csv_path: Path) -> dict[str, list[tuple[float, float]]]:
    """Lightning's CSV log as ``{column: [(epoch, value), ...]}`` for epoch-level columns."""
    series: dict[str, list[tuple[float, float]]] = {}
    if not csv_path.is_file():
        return series
    with csv_path.open() as f:
        for row in csv.DictReader(f):
            epoch = row.get("epoch")
            for key, value in row.items():
                if key in ("epoch", "step") or not value or not epoch:
                    continue
                if key.endswith("_epoch") or key.startswith("val_") or key == "effective_rank":
                    series.setdefault(key, []).append((float(epoch), float(value)))
    return series


def plot_losses(csv_path: Path, png_path: Path, title: str) -> None:
    """Draw every epoch-level series of the CSV log into one PNG (one panel per series)."""
    series = read_metrics(csv_path)
    if not series:
        return
    fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3.2), squeeze=False)
    for ax, (name, points) in zip(axes[0], sorted(series.items()), strict=True):
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", markersize=3)
        ax.set_title(name.removesuffix("_epoch"))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = png_path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(png_path)
