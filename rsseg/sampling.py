"""Choosing the points worth labelling: pure numpy, no I/O (``rsseg suggest``, active learning).

- :func:`uncertainty`: per-pixel uncertainty of blended class probabilities, margin
  ``1 - (p1 - p2)`` or normalised entropy ``H / log K``, both in ``[0, 1]``.
- :class:`RegionMean`: rows of a per-pixel score streamed top to bottom → the mean over each
  pixel's neighbourhood (``--region``: region uncertainty, a few rows behind).
- :class:`CellReducer`: rows of a scene streamed top to bottom → one candidate per
  ``cell`` × ``cell`` block: its most uncertain eligible pixel, or (random and diversity
  strategies, and the hybrid's exploration candidates) a random one.
- :class:`CandidatePool`: the best ``cap`` candidates per predicted class (one group for the
  random and diversity strategies; exploration candidates in a group of their own, kept at
  random), over any number of scenes: memory bounded by the pool, never the scene.
- :class:`NearIndex`: which pixels lie closer than a distance to given pixels (labelled ones).
- :func:`select`: N candidates, greedily, by strategy, at least a distance apart within a scene
  and spread over the predicted classes.

Strategies (:data:`STRATEGIES`): ``uncertainty`` (most uncertain first), ``diversity`` (greedy
k-center on the candidates' features: each pick the candidate farthest from the labelled and
picked points), ``hybrid`` (k-center weighted by uncertainty: gain = uncertainty × feature
distance; with an exploration share, every ``1/share``-th pick is instead the k-center pick
among random pixels, whatever their uncertainty), ``random`` (uniform over the cells, the
baseline). All but ``random`` take at most ``ceil(N / classes)`` points per predicted class while
other classes still have candidates (exploration picks are outside that quota).

Why the hybrid explores: a class the model has not learnt may be predicted as another class
with confidence, and uncertainty-led picks then never ask for it; on the NC scene from a
pretrained backbone the first hybrid asked 0 water points in 200 while random points found water
at 75 (docs/active_learning.md). Random pixels far, in feature space, from everything labelled
or picked are where such a class hides: the exploration share asks for them, as a mix of
uncertainty and diversity sampling (Ash et al. 2020, BADGE, mix both in one embedding; here they
alternate).
Ties are broken by a random key drawn from the seed, so a seed gives one answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

import numpy as np

STRATEGIES = ("uncertainty", "diversity", "hybrid", "random")
MEASURES = ("margin", "entropy")
FEATURE_STRATEGIES = ("diversity", "hybrid")  # those that need features at the candidates
DEFAULT_EXPLORE = 0.2  # hybrid: share of the points picked among random pixels (not tuned)


def uncertainty(probs: np.ndarray, measure: str = "margin"
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(K, h, w)`` probabilities → ``(uncertainty, class index, confidence)``, each ``(h, w)``:
    uncertainty float32 in ``[0, 1]``, the most probable class's index (uint8, the first on ties)
    and its probability (float32)."""
    k = probs.shape[0]
    index = np.argmax(probs, axis=0).astype(np.uint8)
    if k == 1:
        return np.zeros(probs.shape[1:], np.float32), index, probs[0].astype(np.float32)
    top = np.partition(probs, k - 2, axis=0)[k - 2:]  # second largest, largest
    confidence = top[1].astype(np.float32)
    if measure == "margin":
        score = 1 - (top[1] - top[0])
    elif measure == "entropy":
        p = np.clip(probs, 1e-12, 1)
        score = -(p * np.log(p)).sum(axis=0) / math.log(k)
    else:
        raise ValueError(f"unknown uncertainty measure {measure!r}; valid: {MEASURES}")
    return np.clip(score, 0, 1).astype(np.float32), index, confidence


@dataclass(frozen=True)
class Candidates:
    """Candidate points, one entry per point (parallel 1-D arrays)."""

    scene: np.ndarray  # int32, index of the scene
    row: np.ndarray  # int32 pixel row in the scene
    col: np.ndarray  # int32 pixel column
    uncertainty: np.ndarray  # float32 in [0, 1]
    predicted: np.ndarray  # int16 class index (model channel)
    confidence: np.ndarray  # float32, probability of the predicted class
    key: np.ndarray  # float32 random key in [0, 1): tie-breaks and the random order
    explore: np.ndarray  # bool: drawn at random for the hybrid's exploration share

    def __len__(self) -> int:
        return len(self.row)

    def take(self, index: np.ndarray) -> Candidates:
        return Candidates(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @classmethod
    def empty(cls) -> Candidates:
        return cls.concat([])

    @classmethod
    def concat(cls, parts: Sequence[Candidates]) -> Candidates:
        dtypes = {"scene": np.int32, "row": np.int32, "col": np.int32,
                  "uncertainty": np.float32, "predicted": np.int16, "confidence": np.float32,
                  "key": np.float32, "explore": np.bool_}
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts]).astype(dtype)
                      if parts else np.zeros(0, dtype) for name, dtype in dtypes.items()})


class RegionMean:
    """Rows of a per-pixel score streamed top to bottom → the mean score over each pixel's
    ``(2r + 1)²`` neighbourhood of valid pixels, ``r`` rows behind.

    Region uncertainty: a lone uncertain pixel (a class edge, where every model hesitates and a
    mixed pixel's answer is least reliable) ranks below a pixel inside an uncertain region
    (a class the model confuses), as region scores rank regions in Mackowiak et al. 2018
    (CEREALS) and Kasarla et al. 2019; here the point asked is still one pixel. Arrays passed
    with the rows (class index, confidence, eligibility) come out with them, delayed alike.
    Holds ``2r`` rows besides the rows not yet out.
    """

    def __init__(self, radius: int) -> None:
        if radius < 1:
            raise ValueError(f"radius {radius} must be at least 1 (0: use the scores as they are)")
        self.radius = radius
        self._top = 0  # scene row of the first buffered row
        self._out = 0  # next scene row to come out
        self._rows: list[tuple[np.ndarray, ...]] = []

    def add(self, row: int, score: np.ndarray, valid: np.ndarray, *passed: np.ndarray
            ) -> Iterator[tuple]:
        """Take rows ``row .. row + h`` (``(h, W)`` score, valid mask, passed arrays); yield
        ``(first row, (n, W) mean score, *passed rows)`` for the rows whose neighbourhood is
        complete."""
        if row != self._top + sum(r[0].shape[0] for r in self._rows):
            raise ValueError(f"rows must come in order: got row {row}")
        self._rows.append((score, valid, *passed))
        yield from self._emit(final=False)

    def finish(self) -> Iterator[tuple]:
        """Yield the last rows (their neighbourhoods end at the scene's bottom)."""
        yield from self._emit(final=True)

    def _emit(self, final: bool) -> Iterator[tuple]:
        if not self._rows:
            return
        stacked = [np.concatenate(parts) for parts in zip(*self._rows, strict=True)]
        self._rows = [tuple(stacked)]
        n, r = stacked[0].shape[0], self.radius
        stop = self._top + n if final else self._top + n - r
        if stop <= self._out:
            return
        a, b = self._out - self._top, stop - self._top  # rows out, in buffer rows
        lo, hi = max(a - r, 0), min(b + r, n)
        weight = stacked[1][lo:hi].astype(np.float64)
        total = _box_sum(stacked[0][lo:hi] * weight, r, a - lo, b - lo)
        count = _box_sum(weight, r, a - lo, b - lo)
        mean = np.where(count > 0, total / np.maximum(count, 1), 0).astype(np.float32)
        yield (self._out, mean, *(x[a:b] for x in stacked[2:]))
        keep = max(b - r, 0)
        self._rows = [tuple(x[keep:] for x in stacked)] if keep < n else []
        self._top += keep
        self._out = stop


def _box_sum(x: np.ndarray, r: int, a: int, b: int) -> np.ndarray:
    """Sums of ``x`` over the ``(2r + 1)²`` box around each pixel of rows ``a .. b`` (clipped to
    ``x``): ``(b - a, W)``."""
    h, w = x.shape
    cols = np.cumsum(np.pad(x, ((0, 0), (r + 1, r))), axis=1)
    x = cols[:, 2 * r + 1:] - cols[:, :w]
    rows = np.concatenate([np.zeros((1, w)), np.cumsum(x, axis=0)])
    j = np.arange(a, b)
    return rows[np.minimum(j + r + 1, h)] - rows[np.maximum(j - r, 0)]


class CellReducer:
    """Rows of one scene in order → one candidate per ``cell`` × ``cell`` block of eligible pixels.

    ``by_uncertainty``: a block's candidate is its most uncertain eligible pixel; otherwise a
    random one (marked ``explore`` when ``explore``). Random keys come from ``rng`` one block row
    at a time, so they depend on the seed and the scene only (not on how the rows arrive). Holds
    less than one block row.
    """

    def __init__(self, width: int, cell: int, by_uncertainty: bool, rng: np.random.Generator,
                 scene: int = 0, explore: bool = False) -> None:
        if explore and by_uncertainty:
            raise ValueError("exploration candidates are random ones, not the most uncertain")
        self.width = width
        self.cell = cell
        self.by_uncertainty = by_uncertainty
        self.rng = rng
        self.scene = scene
        self.explore = explore
        self.eligible = 0  # eligible pixels seen
        self._top = 0  # scene row of the first buffered row
        self._rows: list[tuple[np.ndarray, ...]] = []

    def add(self, row: int, score: np.ndarray, index: np.ndarray, confidence: np.ndarray,
            eligible: np.ndarray) -> Iterator[Candidates]:
        """Take rows ``row .. row + h`` (``(h, W)`` arrays); yield the candidates of every block
        row they complete."""
        if row != self._top + sum(r[0].shape[0] for r in self._rows):
            raise ValueError(f"rows must come in order: got row {row}")
        self.eligible += int(eligible.sum())
        self._rows.append((score, index, confidence, eligible))
        while sum(r[0].shape[0] for r in self._rows) >= self.cell:
            yield self._reduce(self._pop(self.cell))

    def finish(self) -> Iterator[Candidates]:
        """Yield the candidates of the last, shorter block row."""
        rows = sum(r[0].shape[0] for r in self._rows)
        if rows:
            yield self._reduce(self._pop(rows))

    def _pop(self, n: int) -> tuple[np.ndarray, ...]:
        stacked = [np.concatenate(parts) for parts in zip(*self._rows, strict=True)]
        self._rows = [tuple(a[n:] for a in stacked)] if stacked[0].shape[0] > n else []
        return tuple(a[:n] for a in stacked)

    def _reduce(self, arrays: tuple[np.ndarray, ...]) -> Candidates:
        score, index, confidence, eligible = arrays
        h, w, c = score.shape[0], self.width, self.cell
        key = self.rng.random((h, w), dtype=np.float32)
        priority = np.where(eligible, score if self.by_uncertainty else -key, -np.inf)
        blocks = -(-w // c)
        padded = np.full((h, blocks * c), -np.inf, dtype=np.float64)
        padded[:, :w] = priority
        best = padded.reshape(h, blocks, c).transpose(1, 0, 2).reshape(blocks, h * c).argmax(1)
        rows, cols = best // c, np.arange(blocks) * c + best % c
        keep = cols < w
        rows, cols = rows[keep], cols[keep]
        keep = eligible[rows, cols]
        rows, cols = rows[keep], cols[keep]
        top = self._top
        self._top += h
        n = len(rows)
        return Candidates(np.full(n, self.scene, np.int32), (rows + top).astype(np.int32),
                          cols.astype(np.int32), score[rows, cols].astype(np.float32),
                          index[rows, cols].astype(np.int16),
                          confidence[rows, cols].astype(np.float32), key[rows, cols],
                          np.full(n, self.explore))


class CandidatePool:
    """The best ``cap`` candidates of each group: by uncertainty per predicted class
    (``by_uncertainty``), else by random key in one group; exploration candidates by random key
    in a group of their own. Pruned as it grows."""

    def __init__(self, cap: int, by_uncertainty: bool) -> None:
        self.cap = cap
        self.by_uncertainty = by_uncertainty
        self._parts: list[Candidates] = []
        self._size = 0
        self._groups = 1
        self._explore = False  # exploration candidates seen

    def add(self, part: Candidates) -> None:
        self._parts.append(part)
        self._size += len(part)
        if len(part):
            self._explore |= bool(part.explore.any())
            classes = int(part.predicted.max()) + 1 if self.by_uncertainty else 1
            self._groups = max(self._groups, classes + self._explore)
        if self._size > 2 * self.cap * self._groups:
            self._parts = [self.candidates()]
            self._size = len(self._parts[0])

    def candidates(self) -> Candidates:
        """The kept candidates, best first within each group, groups in class order (the
        exploration group first)."""
        pool = Candidates.concat(self._parts)
        group = pool.predicted if self.by_uncertainty else np.zeros(len(pool), np.int16)
        group = np.where(pool.explore, -1, group)
        priority = np.where(self.by_uncertainty & ~pool.explore, pool.uncertainty, -pool.key)
        order = np.lexsort((pool.key, -priority, group))  # group, then best, then key
        rank = np.arange(len(order)) - np.searchsorted(group[order], group[order])
        return pool.take(order[rank < self.cap])


class NearIndex:
    """Pixels ``(row, col)`` of one scene binned in cells of ``radius``; :meth:`near` tells
    which query pixels lie closer than ``radius`` to one of them."""

    _STRIDE = 1 << 32  # row cell * stride + column cell: one int64 key per cell

    def __init__(self, rows: np.ndarray, cols: np.ndarray, radius: float) -> None:
        self.radius = float(radius)
        points = np.column_stack([rows, cols]).astype(np.float64)
        if self.radius <= 0 or not len(points):
            self._keys = np.zeros(0, np.int64)
            return
        keys = self._key(np.floor(points / self.radius).astype(np.int64))
        order = np.argsort(keys, kind="stable")
        self._points = points[order]
        self._keys, self._start, self._count = np.unique(keys[order], return_index=True,
                                                         return_counts=True)

    def _key(self, cells: np.ndarray) -> np.ndarray:
        return cells[:, 0] * self._STRIDE + cells[:, 1]

    def near(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Bool per query pixel: closer than ``radius`` to an indexed pixel."""
        out = np.zeros(len(rows), dtype=bool)
        if not len(self._keys) or not len(rows):
            return out
        query = np.column_stack([rows, cols]).astype(np.float64)
        cells = np.floor(query / self.radius).astype(np.int64)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                keys = self._key(cells + np.array([dr, dc]))
                pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
                for i in np.flatnonzero((self._keys[pos] == keys) & ~out):
                    start = self._start[pos[i]]
                    points = self._points[start:start + self._count[pos[i]]]
                    out[i] = bool((((points - query[i]) ** 2).sum(1) < self.radius ** 2).any())
        return out


def min_distances(features: np.ndarray, centres: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """``(N,)`` Euclidean distance of each row of ``features`` ``(N, D)`` to its nearest row of
    ``centres`` ``(M, D)``; ``inf`` when there is none."""
    out = np.full(len(features), np.inf, dtype=np.float32)
    if not len(centres):
        return out
    c2 = (centres.astype(np.float32) ** 2).sum(1)
    for start in range(0, len(features), chunk):
        f = features[start:start + chunk].astype(np.float32)
        d2 = (f ** 2).sum(1)[:, None] + c2[None] - 2 * f @ centres.astype(np.float32).T
        out[start:start + chunk] = np.sqrt(np.clip(d2.min(1), 0, None))
    return out


def unit_rows(features: np.ndarray) -> np.ndarray:
    """``features`` ``(N, D)`` as float32 rows of unit length (zero rows stay zero)."""
    feats = features.astype(np.float32)
    return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)


def select(pool: Candidates, n: int, strategy: str, min_distance: Sequence[float],
           features: np.ndarray | None = None, centres: np.ndarray | None = None,
           explore: float = 0.0) -> np.ndarray:
    """Indexes of up to ``n`` pool candidates in the order they were picked (rank 1 first).

    ``min_distance``: per scene, the least distance between two picked pixels of that scene
    (pixels). ``features`` ``(len(pool), D)`` for ``diversity``/``hybrid``, compared as unit
    vectors (cosine geometry); ``centres`` ``(M, D)``: features of points already labelled, which
    count as picked for the feature distance. ``explore`` (``hybrid``): the share of the picks
    made by k-center among the pool's exploration candidates (picks ``1/explore``,
    ``2/explore``, …), the others by uncertainty × distance among the rest; either kind stands
    in for the other when it has no candidate left.
    Fewer than ``n`` come back when no candidate is left at ``min_distance``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid: {STRATEGIES}")
    if not 0 <= explore <= 1:
        raise ValueError(f"exploration share {explore} is not in [0, 1]")
    order = np.argsort(pool.key, kind="stable")  # ties go to the lower key
    cands = pool.take(order)
    alive = np.ones(len(cands), dtype=bool)
    distance = np.full(len(cands), 2.0, dtype=np.float32)  # unit vectors lie at most 2 apart
    feats = None
    if strategy in FEATURE_STRATEGIES:
        if features is None:
            raise ValueError(f"strategy {strategy!r} needs features")
        feats = unit_rows(features[order])
        if centres is not None and len(centres):
            distance = np.minimum(distance, min_distances(feats, unit_rows(centres)))
    share = explore if strategy == "hybrid" else 0.0
    spread = strategy != "random"
    classes = len(np.unique(cands.predicted[~cands.explore])) if len(cands) else 1
    quota = math.ceil(n / max(classes, 1)) if spread else n
    taken = np.zeros(int(cands.predicted.max(initial=0)) + 1, dtype=np.int64)
    radius = np.asarray(min_distance, dtype=np.float64)[cands.scene] if len(cands) else None
    picks: list[int] = []
    while len(picks) < n:
        exploring = math.floor((len(picks) + 1) * share) > math.floor(len(picks) * share)
        exploit = alive & ~cands.explore & (taken[cands.predicted] < quota)
        explorable = alive & cands.explore
        if not exploit.any() and quota < n and (alive & ~cands.explore).any():
            quota = n  # every class with candidates left is at its share: lift it
            continue
        by_distance = explorable.any() and (exploring or not exploit.any())
        allowed = explorable if by_distance else exploit
        if not allowed.any():
            break
        gain = {"uncertainty": cands.uncertainty, "diversity": distance,
                "hybrid": cands.uncertainty * distance,
                "random": -np.arange(len(cands), dtype=np.float32)}[strategy]
        i = int(np.argmax(np.where(allowed, distance if by_distance else gain, -np.inf)))
        picks.append(i)
        alive[i] = False
        if not by_distance:
            taken[cands.predicted[i]] += 1
        same = cands.scene == cands.scene[i]
        d2 = (cands.row - cands.row[i]).astype(np.float64) ** 2 + \
            (cands.col - cands.col[i]).astype(np.float64) ** 2
        alive &= ~(same & ((d2 < radius ** 2) | (d2 == 0)))  # an exploration twin included
        if feats is not None:
            distance = np.minimum(distance, np.sqrt(((feats - feats[i]) ** 2).sum(1)))
    return order[np.asarray(picks, dtype=np.int64)]
