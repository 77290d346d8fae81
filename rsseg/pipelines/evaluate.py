"""Compare a class raster with a reference on the same grid, window by window.

A pixel counts when it is valid in both rasters (not nodata), equals none of the ignore values in
either, and (with ``exclude``) is not labelled in the exclude raster, e.g. the training pixels.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from rsseg.classes import ClassTable, default_color, raster_classes
from rsseg.errors import InputError
from rsseg.grid import check_same_grid
from rsseg.io.raster import Scene, SceneInfo, open_scene
from rsseg.metrics import ConfusionAccumulator, Scores

WINDOW_PIXELS = 1 << 20  # pixels per row band read at once


@dataclass(frozen=True)
class Evaluation:
    """Scores and what was compared; ``names[k]``, ``colors[k]`` go with ``scores.class_ids[k]``."""

    pred: Path
    reference: Path
    scores: Scores
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    excluded: int  # pixels that would count but for ``exclude``

    def to_json(self) -> dict:
        """``{oa, kappa, miou, per_class, confusion, classes, pixels, excluded, ...}``.

        ``confusion[i][j]``: reference class ``classes[i]``, predicted ``classes[j]``. Undefined
        values (e.g. precision of a class never predicted) are null.
        """
        s = self.scores
        classes = [{"id": i, "name": n, "color": list(c)}
                   for i, n, c in zip(s.class_ids, self.names, self.colors, strict=True)]
        per_class = [
            {"id": i, "name": n, "precision": _num(s.precision[k]), "recall": _num(s.recall[k]),
             "f1": _num(s.f1[k]), "iou": _num(s.iou[k]),
             "reference_pixels": int(s.confusion[k].sum()),
             "predicted_pixels": int(s.confusion[:, k].sum())}
            for k, (i, n) in enumerate(zip(s.class_ids, self.names, strict=True))]
        return {
            "pred": str(self.pred), "reference": str(self.reference),
            "oa": _num(s.oa), "kappa": _num(s.kappa), "miou": _num(s.miou),
            "miou_convention": "dataset-level: IoU per class from the global confusion matrix, "
                               "averaged over classes present in reference or prediction",
            "pixels": s.pixels, "excluded": self.excluded,
            "classes": classes, "per_class": per_class, "confusion": s.confusion.tolist(),
        }


def evaluate(pred: str | Path, reference: str | Path, ignore: Iterable[int] = (),
             exclude: str | Path | None = None, classes: ClassTable | None = None) -> Evaluation:
    """Score ``pred`` against ``reference``; class names from ``classes``, pred, or reference."""
    pred, reference = Path(pred), Path(reference)
    ignore = list(ignore)
    acc = ConfusionAccumulator()
    excluded = 0
    with open_scene(pred) as p, open_scene(reference) as r:
        for scene in (p, r):
            _check_single_band(scene.info)
        check_same_grid(p.info, r.info, "resample the prediction onto the reference grid")
        carried = raster_classes(p)
        if classes is not None and carried is not None:
            _warn_renamed(classes, carried, pred)
        names_from = classes or carried or raster_classes(r)
        with open_scene(exclude) if exclude is not None else nullcontext() as x:
            if x is not None:
                check_same_grid(p.info, x.info, "give an exclude raster on the prediction grid")
            for window in _row_bands(p.info):
                pp, rr = p.read(window), r.read(window)
                valid = p.valid_mask(pp) & r.valid_mask(rr)
                valid &= ~np.isin(pp[0], ignore) & ~np.isin(rr[0], ignore)
                if x is not None:
                    drop = valid & _labelled(x, window)
                    excluded += int(drop.sum())
                    valid &= ~drop
                try:
                    acc.update(pp[0], rr[0], valid)
                except ValueError as err:
                    raise InputError(f"{pred.name} / {reference.name}: {err}",
                                     "compare class rasters (whole-number class ids)") from None
    scores = acc.scores()
    if not scores.pixels:
        raise InputError(f"no pixel of {pred.name} and {reference.name} is valid in both "
                         "(after nodata, --ignore and --exclude)", "check the inputs and flags")
    names = tuple(names_from.name_of(i) if names_from else f"class {i}" for i in scores.class_ids)
    colors_of = {c.id: c.color for c in names_from.classes} if names_from else {}
    colors = tuple(colors_of.get(i, default_color(i)) for i in scores.class_ids)
    return Evaluation(pred, reference, scores, names, colors, excluded)


def _warn_renamed(given: ClassTable, carried: ClassTable, pred: Path) -> None:
    """Warn when ``--classes`` names an id otherwise than the prediction itself does: the two
    number their classes differently, and the scores would compare unrelated classes."""
    theirs = {c.id: c.name for c in carried.classes}
    clashes = [f"id {c.id}: {c.name!r} in --classes, {theirs[c.id]!r} in {pred.name}"
               for c in given.classes
               if c.id in theirs and c.name.casefold() != theirs[c.id].casefold()]
    if clashes:
        warnings.warn(f"--classes and the prediction name ids differently ({'; '.join(clashes[:3])}"
                      f"{'; ...' if len(clashes) > 3 else ''}); check that they number the same "
                      "classes", UserWarning, stacklevel=3)


def _check_single_band(info: SceneInfo) -> None:
    if info.count != 1:
        raise InputError(f"{info.path}: a class raster has one band, this has {info.count}",
                         "give single-band class rasters")


def _row_bands(info: SceneInfo) -> Iterator[Window]:
    """Full-width windows of whole block rows, about :data:`WINDOW_PIXELS` each."""
    block = max(1, info.block_shape[0])
    rows = max(block, (WINDOW_PIXELS // max(1, info.width)) // block * block)
    for top in range(0, info.height, rows):
        yield Window(0, top, info.width, min(rows, info.height - top))


def _labelled(scene: Scene, window: Window) -> np.ndarray:
    """Pixels the exclude raster labels: any value other than its nodata (0 when undeclared)."""
    band = scene.read(window)[0]
    unlabelled = scene.info.nodata if scene.info.nodata is not None else 0
    return scene.valid_mask(band[None]) & (band != unlabelled)


def _num(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 6)
