"""Segmentation metrics from a confusion matrix, and a streaming accumulator to build one.

Convention: ``cm[i, j]`` counts pixels whose reference class is ``i`` and predicted class ``j``
(rows = reference, columns = prediction). All metrics are dataset-level: they come from one
global matrix summed over every evaluated pixel, never averaged per tile (the GLCNet official code
averages IoU per tile, which is biased low).

Undefined ratios (0/0) are NaN: precision of a class never predicted, recall of a class absent
from the reference. mIoU averages the per-class IoU over the classes present in the reference or
the prediction (row or column sum > 0); a class absent from both does not count.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

MAX_CLASS_ID = 1023  # keeps the (K, K) matrix small; land-cover codes (e.g. CORINE 111..523) fit


def _matrix(cm: np.ndarray) -> np.ndarray:
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a confusion matrix is square (K, K), got shape {cm.shape}")
    return cm


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def overall_accuracy(cm: np.ndarray) -> float:
    """Fraction of pixels on the diagonal; NaN for an empty matrix."""
    cm = _matrix(cm)
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def cohen_kappa(cm: np.ndarray) -> float:
    """Cohen's Kappa ``(po - pe) / (1 - pe)``; 1.0 for perfect agreement on a single class."""
    cm = _matrix(cm)
    total = cm.sum()
    if not total:
        return float("nan")
    po = np.trace(cm) / total
    pe = float((cm.sum(axis=1) * cm.sum(axis=0)).sum() / total**2)
    if pe >= 1.0:
        return 1.0 if po >= 1.0 else 0.0
    return float((po - pe) / (1.0 - pe))


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class ``precision``, ``recall``, ``f1``, ``iou``, each ``(K,)``, NaN where undefined."""
    cm = _matrix(cm)
    tp = np.diag(cm)
    ref = cm.sum(axis=1)
    pred = cm.sum(axis=0)
    precision = _ratio(tp, pred)
    recall = _ratio(tp, ref)
    return {
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * tp, ref + pred),
        "iou": _ratio(tp, ref + pred - tp),
    }


def mean_iou(cm: np.ndarray) -> float:
    """Dataset-level mIoU over the classes present in the reference or the prediction."""
    iou = per_class_scores(cm)["iou"]
    present = ~np.isnan(iou)
    return float(iou[present].mean()) if present.any() else float("nan")


@dataclass(frozen=True)
class Scores:
    """Every metric of one confusion matrix; ``class_ids[k]`` labels row/column ``k``."""

    class_ids: tuple[int, ...]
    confusion: np.ndarray
    oa: float
    kappa: float
    miou: float
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    iou: np.ndarray

    @property
    def pixels(self) -> int:
        return int(self.confusion.sum())


def scores(cm: np.ndarray, class_ids: Sequence[int] | None = None) -> Scores:
    """All metrics of ``cm``; ``class_ids`` default to ``0..K-1``."""
    cm = np.asarray(cm)
    ids = tuple(int(i) for i in class_ids) if class_ids is not None else tuple(range(len(cm)))
    if len(ids) != _matrix(cm).shape[0]:
        raise ValueError(f"{len(ids)} class ids for a {cm.shape} confusion matrix")
    return Scores(class_ids=ids, confusion=cm.astype(np.int64), oa=overall_accuracy(cm),
                  kappa=cohen_kappa(cm), miou=mean_iou(cm), **per_class_scores(cm))


class ConfusionAccumulator:
    """Streaming confusion matrix over non-negative integer class ids.

    Call :meth:`update` once per window; pixels equal to any ``ignore`` value in either array, or
    outside the optional ``valid`` mask, are skipped. The matrix grows to the largest id seen.
    """

    def __init__(self, ignore: Iterable[int] = ()) -> None:
        self.ignore = tuple(int(v) for v in ignore)
        self._cm = np.zeros((0, 0), dtype=np.int64)

    def update(self, pred: np.ndarray, ref: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add the pixels of one window; all arrays share one shape."""
        pred, ref = np.asarray(pred), np.asarray(ref)
        if pred.shape != ref.shape or (valid is not None and np.shape(valid) != ref.shape):
            raise ValueError(f"shapes differ: pred {pred.shape}, ref {ref.shape}")
        keep = np.ones(ref.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
        for value in self.ignore:
            keep &= (pred != value) & (ref != value)
        p, r = _as_ids(pred[keep]), _as_ids(ref[keep])
        if not p.size:
            return
        k = max(self._cm.shape[0], int(p.max()) + 1, int(r.max()) + 1)
        if k > self._cm.shape[0]:
            grown = np.zeros((k, k), dtype=np.int64)
            grown[: self._cm.shape[0], : self._cm.shape[1]] = self._cm
            self._cm = grown
        self._cm += np.bincount(r * k + p, minlength=k * k).reshape(k, k)

    @property
    def matrix(self) -> np.ndarray:
        """``(K, K)`` counts for class ids ``0..K-1`` (a copy)."""
        return self._cm.copy()

    def compact(self, class_ids: Iterable[int] = ()) -> tuple[tuple[int, ...], np.ndarray]:
        """Ids present in reference or prediction (plus ``class_ids``), and their sub-matrix."""
        cm = self._cm
        seen = {int(i) for i in np.flatnonzero(cm.sum(axis=0) + cm.sum(axis=1))}
        ids = tuple(sorted(seen | {int(i) for i in class_ids}))
        k = max(cm.shape[0], ids[-1] + 1) if ids else 0
        full = np.zeros((k, k), dtype=np.int64)
        full[: cm.shape[0], : cm.shape[1]] = cm
        return ids, full[np.ix_(ids, ids)]

    def scores(self, class_ids: Iterable[int] = ()) -> Scores:
        """Metrics over the compacted matrix (see :meth:`compact`)."""
        ids, cm = self.compact(class_ids)
        return scores(cm, ids)


def _as_ids(values: np.ndarray) -> np.ndarray:
    if values.size == 0:
        return values.astype(np.int64)
    if np.issubdtype(values.dtype, np.floating) and (
            not np.all(np.isfinite(values)) or np.any(values != np.round(values))):
        raise ValueError("class rasters hold whole numbers; found fractional or NaN values")
    ids = values.astype(np.int64)
    if ids.min() < 0 or ids.max() > MAX_CLASS_ID:
        bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
        raise ValueError(f"class ids run from 0 to {MAX_CLASS_ID}; found {bad}")
    return ids
