"""Blending maths: weight window, prediction layout, row-band accumulation (no I/O)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rsseg.inference.accumulate import RowBandAccumulator
from rsseg.tiling.blend import WEIGHT_FLOOR, Layout, hann_weights, layout, weight_window


@st.composite
def layouts(draw: st.DrawFn) -> Layout:
    multiple = draw(st.sampled_from([1, 2, 4]))
    tile = multiple * draw(st.integers(1, 12))
    overlap = draw(st.integers(0, tile - 1))
    return layout(draw(st.integers(1, 60)), draw(st.integers(1, 60)), tile, overlap, multiple)


def test_weight_window_is_smooth_symmetric_and_never_zero() -> None:
    w = weight_window(32, 20)
    assert w.shape == (32, 20) and w.dtype == np.float32
    assert w.min() >= WEIGHT_FLOOR**2 * 0.999 and w.max() <= 1
    assert np.allclose(w, w[::-1]) and np.allclose(w, w[:, ::-1])
    assert np.argmax(w[:, 10]) in (15, 16)  # peaks in the middle
    assert hann_weights(1).tolist() == [1.0]


@given(layouts())
@settings(max_examples=60, deadline=None)
def test_layout_covers_every_pixel_with_windows_of_one_shape(lay: Layout) -> None:
    for offsets, length, side in ((lay.rows, lay.height, lay.win_h),
                                  (lay.cols, lay.width, lay.win_w)):
        assert offsets[0] == 0 and list(offsets) == sorted(set(offsets))
        assert offsets[-1] + side >= length  # last row/column covered
        if length >= side:
            assert offsets[-1] + side == length  # shifted inside, never past the scene
        else:
            assert len(offsets) == 1  # one window, padded past the scene
        gaps = np.diff(offsets)
        assert np.all(gaps <= side)  # no hole between windows
    assert sum(lay.finished_rows(i) for i in range(len(lay.rows))) == lay.height


def test_scene_smaller_than_tile_pads_to_the_multiple() -> None:
    lay = layout(height=20, width=70, tile=64, overlap=16, multiple=32)
    assert (lay.win_h, lay.win_w) == (32, 64)
    assert lay.rows == (0,) and lay.cols == (0, 6)
    with pytest.raises(ValueError, match="multiple of 32"):
        layout(20, 70, 48, 0, 32)
    with pytest.raises(ValueError, match="overlap"):
        layout(20, 70, 64, 64, 32)


def _blend(lay: Layout, field: np.ndarray) -> np.ndarray:
    """Feed every window its crop of ``field`` ``(K, H', W')``; return the stitched rows."""
    acc = RowBandAccumulator(lay, field.shape[0])
    rows = []
    for i, r in enumerate(lay.rows):
        for c in lay.cols:
            acc.add(c, field[:, r:r + lay.win_h, c:c + lay.win_w].copy())
        rows.append(acc.pop_rows(lay.finished_rows(i)).copy())
    return np.concatenate(rows, axis=1)


@given(layouts(), st.integers(1, 3))
@settings(max_examples=60, deadline=None)
def test_normalised_weights_sum_to_one_and_agreeing_windows_are_reproduced(
        lay: Layout, channels: int) -> None:
    padded = (channels, lay.rows[-1] + lay.win_h, lay.cols[-1] + lay.win_w)
    ones = _blend(lay, np.ones(padded, dtype=np.float32))
    assert ones.shape == (channels, lay.height, lay.width)
    np.testing.assert_allclose(ones, 1.0, rtol=1e-6)
    field = np.random.default_rng(lay.count).random(padded, dtype=np.float32)
    np.testing.assert_allclose(_blend(lay, field), field[:, :lay.height, :lay.width], rtol=1e-5)


def test_overlapping_disagreeing_windows_blend_smoothly() -> None:
    lay = layout(height=16, width=48, tile=16, overlap=8)
    acc = RowBandAccumulator(lay, 1)
    for k, c in enumerate(lay.cols):
        acc.add(c, np.full((1, 16, 16), float(k), dtype=np.float32))
    row = acc.pop_rows(16)[0, 8]
    assert np.all(np.diff(row) >= -1e-6)  # a ramp between windows, no step at a seam
    assert row[0] == 0 and row[-1] == pytest.approx(len(lay.cols) - 1, rel=1e-6)
