"""``--preview OUT.png``: the scene's RGB beside the prediction, with a legend of the classes.

The prediction's thumbnail is gathered while the class rows stream by (every ``step``-th row
and column, :class:`ClassThumbnail`), the scene's from a decimated read
(:func:`rsseg.io.thumbnail.read_thumbnail`): memory is the thumbnail, never the scene. The RGB
is stretched per band between its 2nd and 98th percentiles of valid pixels; nodata is white.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rsseg.classes import ClassTable
from rsseg.errors import ConfigError

MAX_SIDE = 1024  # longest side of each panel, pixels
PERCENTILES = (2.0, 98.0)
_COLOUR_NAMES = {"red": (r"(?<!infra)red", r"\br\b", "b4"), "green": ("green", r"\bg\b", "b3"),
                 "blue": ("blue", r"\bb\b", "b2")}


def thumbnail_step(height: int, width: int, max_side: int = MAX_SIDE) -> int:
    """Keep every ``step``-th row and column so that the longest side is at most ``max_side``."""
    return max(1, math.ceil(max(height, width) / max_side))


def resolve_bands(names: Sequence[str], spec: str | None) -> tuple[int, ...]:
    """1-based indexes of the RGB bands (or one grey band) for the quicklook.

    ``spec`` is ``"R,G,B"`` or one band, each a band name (case-insensitive) or a 1-based index.
    Without ``spec``: bands whose names say red, green and blue (``B3_red``, ``Red``...), else the
    first three bands, else the first band in grey. Raises :class:`ConfigError` listing the
    available band names for a name that does not exist.
    """
    available = ", ".join(f"{i} {n}" for i, n in enumerate(names, start=1))
    if spec is None:
        found = [_find_colour(names, colour) for colour in ("red", "green", "blue")]
        if all(i is not None for i in found) and len(set(found)) == 3:
            return tuple(found)  # type: ignore[arg-type]
        return (1, 2, 3) if len(names) >= 3 else (1,)
    items = [s.strip() for s in spec.split(",")]
    if len(items) not in (1, 3) or not all(items):
        raise ConfigError(f"--preview-bands {spec!r}: give three bands (R,G,B) or one",
                          f"bands are {available}")
    lowered = [n.lower() for n in names]
    out = []
    for item in items:
        if item.isdigit() and 1 <= int(item) <= len(names):
            out.append(int(item))
        elif item.lower() in lowered:
            out.append(lowered.index(item.lower()) + 1)
        else:
            raise ConfigError(f"--preview-bands: no band {item!r}",
                              f"bands are {available} (names or 1-based numbers)")
    return tuple(out)


def _find_colour(names: Sequence[str], colour: str) -> int | None:
    for pattern in _COLOUR_NAMES[colour]:
        for i, name in enumerate(names, start=1):
            if re.search(pattern, name.lower().replace("_", " ")):
                return i
    return None


class ClassThumbnail:
    """Every ``step``-th row and column of class rows streamed top to bottom."""

    def __init__(self, height: int, width: int, nodata: int, step: int) -> None:
        self.step = step
        self.image = np.full((math.ceil(height / step), math.ceil(width / step)), nodata,
                             dtype=np.uint8)

    def add(self, row: int, classes: np.ndarray) -> None:
        first = -row % self.step  # first band row that is a multiple of step
        picked = classes[first::self.step, ::self.step]
        start = (row + first) // self.step
        self.image[start:start + picked.shape[0]] = picked


def stretch(pixels: np.ndarray, valid: np.ndarray,
            percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """``(C, h, w)`` any dtype → ``(h, w, C)`` float in 0..1, per-band percentile stretch.

    Nodata (``valid`` False) becomes white.
    """
    out = np.ones((*pixels.shape[1:], pixels.shape[0]), dtype=np.float32)
    for c, band in enumerate(pixels.astype(np.float64)):
        data = band[valid & np.isfinite(band)]
        if not data.size:
            continue
        low, high = np.percentile(data, percentiles)
        scaled = (band - low) / (high - low) if high > low else np.zeros_like(band) + 0.5
        out[..., c] = np.where(valid, np.clip(scaled, 0, 1), 1.0)
    return out


def render_quicklook(path: str | Path, rgb: np.ndarray, classes_image: np.ndarray,
                     classes: ClassTable, nodata: int, title: str = "",
                     band_label: str = "") -> None:
    """Write the PNG: stretched ``rgb`` ``(h, w, 3 or 1)`` | class map | legend of ``classes``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    colours = np.ones((256, 4), dtype=np.float32)  # nodata and unknown values: white
    for c in classes.classes:
        colours[c.id, :3] = np.array(c.color) / 255
    colours[nodata] = (1, 1, 1, 1)
    h, w = classes_image.shape
    panel = 5.0
    fig = Figure(figsize=(2 * panel * min(w / h, 2) + 2.6, panel + 0.6), dpi=110)
    left, right = fig.subplots(1, 2)
    image = rgb[..., 0] if rgb.shape[-1] == 1 else rgb
    left.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest",
                vmin=0, vmax=1)
    left.set_title(f"scene {band_label}".strip(), fontsize=10)
    right.imshow(colours[classes_image], interpolation="nearest")
    right.set_title("prediction", fontsize=10)
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Patch(facecolor=np.array(c.color) / 255, edgecolor="0.3", label=f"{c.id} {c.name}")
               for c in classes.classes]
    fig.subplots_adjust(left=0.01, right=0.80, top=0.88, bottom=0.02, wspace=0.03)
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(0.81, 0.5), fontsize=9,
               frameon=False, title="classes", title_fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.savefig(path, format="png")
