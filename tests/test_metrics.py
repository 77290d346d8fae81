"""Metrics against hand-computed values; the streaming accumulator against a one-shot matrix."""

from __future__ import annotations

import numpy as np
import pytest

from rsseg.metrics import (
    ConfusionAccumulator,
    cohen_kappa,
    mean_iou,
    overall_accuracy,
    per_class_scores,
    scores,
)

# rows = reference, columns = prediction; row sums 6, 6, 4; column sums 7, 4, 5; total 16
CM = np.array([[5, 1, 0],
               [2, 3, 1],
               [0, 0, 4]])


def test_hand_computed_scores() -> None:
    assert overall_accuracy(CM) == pytest.approx(12 / 16)
    # pe = (6*7 + 6*4 + 4*5) / 16² = 86/256;  kappa = (192/256 - 86/256) / (1 - 86/256) = 106/170
    assert cohen_kappa(CM) == pytest.approx(106 / 170)
    per = per_class_scores(CM)
    np.testing.assert_allclose(per["precision"], [5 / 7, 3 / 4, 4 / 5])
    np.testing.assert_allclose(per["recall"], [5 / 6, 3 / 6, 4 / 4])
    np.testing.assert_allclose(per["f1"], [10 / 13, 6 / 10, 8 / 9])
    np.testing.assert_allclose(per["iou"], [5 / 8, 3 / 7, 4 / 5])
    assert mean_iou(CM) == pytest.approx((5 / 8 + 3 / 7 + 4 / 5) / 3)


def test_absent_classes_follow_the_documented_convention() -> None:
    # class 1 absent from both (left out of mIoU); class 2 only predicted (IoU 0, counted)
    cm = np.array([[3, 0, 1],
                   [0, 0, 0],
                   [0, 0, 0]])
    per = per_class_scores(cm)
    assert np.isnan(per["iou"][1]) and per["iou"][2] == 0
    assert np.isnan(per["recall"][2]) and np.isnan(per["precision"][1])
    assert mean_iou(cm) == pytest.approx((3 / 4 + 0) / 2)


def test_perfect_and_empty_matrices() -> None:
    assert cohen_kappa(np.diag([4, 5])) == 1.0
    assert cohen_kappa(np.array([[7]])) == 1.0  # perfect agreement on a single class
    assert np.isnan(overall_accuracy(np.zeros((2, 2))))
    s = scores(np.diag([2, 0, 3]), class_ids=[1, 4, 6])
    assert (s.oa, s.kappa, s.miou, s.pixels) == (1.0, 1.0, 1.0, 5)


def test_accumulator_streams_windows_and_ignores_values() -> None:
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 4, (37, 23))
    pred = np.where(rng.random(ref.shape) < 0.7, ref, rng.integers(0, 4, ref.shape))
    ref[0, :5] = 255  # unlabelled in the reference
    pred[1, :3] = 255  # nodata in the prediction
    valid = np.ones(ref.shape, bool)
    valid[-1] = False

    acc = ConfusionAccumulator(ignore=[255])
    for top in range(0, 37, 8):
        acc.update(pred[top:top + 8], ref[top:top + 8], valid[top:top + 8])

    keep = (ref != 255) & (pred != 255) & valid
    expected = np.zeros((4, 4), int)
    np.add.at(expected, (ref[keep], pred[keep]), 1)
    np.testing.assert_array_equal(acc.matrix, expected)
    assert acc.scores().oa == pytest.approx(overall_accuracy(expected))


def test_accumulator_grows_and_compacts_to_present_ids() -> None:
    acc = ConfusionAccumulator()
    acc.update(np.array([1, 1]), np.array([1, 5]))
    acc.update(np.array([9]), np.array([9]))
    ids, cm = acc.compact()
    assert ids == (1, 5, 9)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [1, 0, 0], [0, 0, 1]])
    assert acc.compact(class_ids=[2])[0] == (1, 2, 5, 9)


@pytest.mark.parametrize("bad", [np.array([1.5]), np.array([-1]), np.array([5000])])
def test_accumulator_rejects_values_that_are_not_class_ids(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="class"):
        ConfusionAccumulator().update(bad, np.zeros_like(bad))
