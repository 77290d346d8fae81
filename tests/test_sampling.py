"""rsseg.sampling: uncertainty, one candidate per block, the pool, distances, greedy selection."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rsseg.sampling import (
    CandidatePool,
    Candidates,
    CellReducer,
    NearIndex,
    RegionMean,
    min_distances,
    select,
    uncertainty,
)


def test_uncertainty_margin_and_entropy() -> None:
    probs = np.array([[0.5, 1.0, 0.2], [0.5, 0.0, 0.7], [0.0, 0.0, 0.1]])[:, None, :]
    margin, index, conf = uncertainty(probs, "margin")
    np.testing.assert_allclose(margin[0], [1.0, 0.0, 0.5], atol=1e-6)
    assert index[0].tolist() == [0, 0, 1]
    np.testing.assert_allclose(conf[0], [0.5, 1.0, 0.7], atol=1e-6)
    entropy, _, _ = uncertainty(np.full((4, 1, 1), 0.25), "entropy")
    assert entropy[0, 0] == pytest.approx(1.0)
    assert uncertainty(probs, "entropy")[0][0, 1] == pytest.approx(0.0, abs=1e-6)


def _reduce(score: np.ndarray, eligible: np.ndarray, chunks: list[int], by_uncertainty: bool,
            cell: int = 4) -> Candidates:
    reducer = CellReducer(score.shape[1], cell, by_uncertainty, np.random.default_rng(0))
    parts, row = [], 0
    index = np.zeros(score.shape, np.uint8)
    for h in chunks:
        parts += reducer.add(row, score[row:row + h], index[row:row + h],
                             score[row:row + h], eligible[row:row + h])
        row += h
    parts += reducer.finish()
    assert reducer.eligible == int(eligible.sum())
    return Candidates.concat(parts)


def test_one_candidate_per_block_whatever_the_bands() -> None:
    rng = np.random.default_rng(1)
    score = rng.random((10, 11)).astype(np.float32)
    eligible = rng.random((10, 11)) > 0.3
    eligible[:4, :4] = False  # a block with no eligible pixel gives no candidate
    for by_uncertainty in (True, False):
        a = _reduce(score, eligible, [10], by_uncertainty)
        b = _reduce(score, eligible, [3, 1, 5, 1], by_uncertainty)  # other band heights
        for name in ("row", "col", "key"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert eligible[a.row, a.col].all()
        blocks = {(r // 4, c // 4) for r, c in zip(a.row, a.col, strict=True)}
        assert len(blocks) == len(a) == 8  # 3 x 3 blocks, the empty one left out
    best = _reduce(score, eligible, [10], True)
    for r, c in zip(best.row, best.col, strict=True):  # the most uncertain eligible pixel
        r0, c0 = r // 4 * 4, c // 4 * 4
        block = np.where(eligible[r0:r0 + 4, c0:c0 + 4], score[r0:r0 + 4, c0:c0 + 4], -1)
        assert score[r, c] == block.max()


def test_region_mean_is_the_neighbourhood_mean_whatever_the_bands() -> None:
    rng = np.random.default_rng(3)
    score = rng.random((23, 17)).astype(np.float32)
    valid = rng.random((23, 17)) > 0.25
    valid[:6, :6] = False  # a nodata corner: its pixels have no neighbour to average
    passed = rng.integers(0, 9, (23, 17))
    r = 2
    naive = np.zeros(score.shape)
    for i in range(23):
        for j in range(17):
            box = np.s_[max(i - r, 0):i + r + 1, max(j - r, 0):j + r + 1]
            naive[i, j] = score[box][valid[box]].mean() if valid[box].any() else 0
    for chunks in ([23], [1] * 23, [4, 1, 11, 7], [2, 21]):
        region, out, row = RegionMean(r), [], 0
        for h in chunks:
            out += region.add(row, score[row:row + h], valid[row:row + h], passed[row:row + h])
            row += h
        out += region.finish()
        assert [o[0] for o in out] == list(np.cumsum([0, *[len(o[1]) for o in out[:-1]]]))
        np.testing.assert_allclose(np.concatenate([o[1] for o in out]), naive, atol=1e-6)
        np.testing.assert_array_equal(np.concatenate([o[2] for o in out]), passed)


def _candidates(n: int, seed: int = 0, classes: int = 3, size: int = 100) -> Candidates:
    rng = np.random.default_rng(seed)
    return Candidates(np.zeros(n, np.int32), rng.integers(0, size, n).astype(np.int32),
                      rng.integers(0, size, n).astype(np.int32),
                      rng.random(n).astype(np.float32),
                      rng.integers(0, classes, n).astype(np.int16),
                      rng.random(n).astype(np.float32), rng.random(n).astype(np.float32),
                      np.zeros(n, bool))


def test_pool_keeps_the_most_uncertain_per_class() -> None:
    cands = _candidates(500)
    pool = CandidatePool(cap=10, by_uncertainty=True)
    for start in range(0, 500, 37):
        pool.add(cands.take(np.arange(start, min(start + 37, 500))))
    kept = pool.candidates()
    assert len(kept) == 30
    for k in range(3):
        expected = np.sort(cands.uncertainty[cands.predicted == k])[-10:]
        np.testing.assert_array_equal(np.sort(kept.uncertainty[kept.predicted == k]), expected)
    randoms = CandidatePool(cap=10, by_uncertainty=False)
    randoms.add(cands)
    np.testing.assert_array_equal(randoms.candidates().key, np.sort(cands.key)[:10])


def test_near_index_matches_brute_force() -> None:
    rng = np.random.default_rng(2)
    labelled = rng.integers(0, 60, (40, 2))
    query = rng.integers(0, 60, (300, 2))
    for radius in (0.5, 3.0, 7.5):
        got = NearIndex(labelled[:, 0], labelled[:, 1], radius).near(query[:, 0], query[:, 1])
        d = np.sqrt(((query[:, None] - labelled[None]) ** 2).sum(-1)).min(1)
        np.testing.assert_array_equal(got, d < radius)
    assert not NearIndex(labelled[:, 0], labelled[:, 1], 0).near(query[:, 0], query[:, 1]).any()


def test_min_distances() -> None:
    feats = np.array([[0.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(min_distances(feats, np.array([[0.0, 1.0], [3.0, 0.0]])),
                               [1.0, 4.0], atol=1e-5)
    assert np.isinf(min_distances(feats, np.zeros((0, 2)))).all()


@pytest.mark.parametrize("strategy", ["uncertainty", "diversity", "hybrid", "random"])
def test_select_apart_spread_and_deterministic(strategy: str) -> None:
    cands = _candidates(400, seed=3)
    feats = np.random.default_rng(4).normal(size=(400, 8))
    picks = select(cands, 12, strategy, [6.0], feats)
    assert len(picks) == len(set(picks.tolist())) == 12
    rows, cols = cands.row[picks].astype(float), cands.col[picks].astype(float)
    d = np.sqrt((rows[:, None] - rows) ** 2 + (cols[:, None] - cols) ** 2)
    assert d[~np.eye(12, dtype=bool)].min() >= 6.0
    np.testing.assert_array_equal(picks, select(cands, 12, strategy, [6.0], feats))
    if strategy != "random":  # at most ceil(12 / 3) per predicted class while others remain
        assert np.bincount(cands.predicted[picks], minlength=3).max() <= math.ceil(12 / 3)
    if strategy == "uncertainty":
        assert cands.uncertainty[picks[0]] == cands.uncertainty.max()


def test_select_returns_fewer_when_nothing_fits_apart() -> None:
    cands = _candidates(200, seed=5, size=10)  # a 10 x 10 px area
    assert len(select(cands, 50, "uncertainty", [8.0])) < 50


def test_labelled_centres_push_diversity_away() -> None:
    """Features already labelled count as picked: k-center starts away from them."""
    cands = _candidates(4)
    feats = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.2]])
    first = select(cands, 1, "diversity", [0.0], feats, centres=np.array([[1.0, 0.05]]))[0]
    assert first == 3


def test_hybrid_explores_among_random_pixels_by_feature_distance() -> None:
    """With share 1/3, picks 3 and 6 are exploration candidates, each the one farthest in
    feature space from everything picked; the others are uncertain ones; the pool keeps the
    exploration candidates in a group of their own, by random key."""
    cands = _candidates(60, seed=6)
    explore = np.arange(60) >= 40
    cands = Candidates(**{**{f: getattr(cands, f) for f in
                             ("scene", "row", "col", "predicted", "confidence", "key")},
                          "uncertainty": np.where(explore, 0.01, cands.uncertainty),
                          "explore": explore})
    feats = np.random.default_rng(7).normal(size=(60, 6)) + 5 * np.eye(6)[1]
    feats[45] = -np.eye(6)[1]  # one exploration candidate unlike everything else
    picks = select(cands, 6, "hybrid", [0.0], feats, explore=1 / 3)
    assert cands.explore[picks].tolist() == [False, False, True, False, False, True]
    assert picks[2] == 45
    assert not cands.explore[select(cands, 6, "hybrid", [0.0], feats)].any()  # share 0
    pool = CandidatePool(cap=5, by_uncertainty=True)
    pool.add(cands)
    kept = pool.candidates()
    np.testing.assert_array_equal(np.sort(kept.key[kept.explore]),
                                  np.sort(cands.key[explore])[:5])
    assert (~kept.explore).sum() == 15  # 5 per predicted class
