"""Properties of the pure window maths in rsseg.tiling.windows."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rsseg.io.raster import align_stop
from rsseg.tiling.windows import grid_offsets, grid_windows, random_windows

lengths = st.integers(1, 90)
sizes = st.integers(1, 40)


@st.composite
def size_and_stride(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(sizes)
    return size, draw(st.integers(1, size))


def _cover(windows: list, width: int, height: int) -> np.ndarray:
    covered = np.zeros((height, width), dtype=np.int32)
    for w in windows:
        covered[w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width] += 1
    return covered


@settings(max_examples=150, deadline=None)
@given(width=lengths, height=lengths, ss=size_and_stride())
def test_grid_covers_every_pixel_with_windows_inside(width: int, height: int,
                                                     ss: tuple[int, int]) -> None:
    size, stride = ss
    windows = grid_windows(width, height, size, stride)
    assert _cover(windows, width, height).min() >= 1
    assert len({(w.col_off, w.row_off) for w in windows}) == len(windows)
    for w in windows:
        assert (w.width, w.height) == (size, size)
        # inside along an axis at least `size` long; one padded window at 0 otherwise
        assert w.col_off >= 0 and (w.col_off + size <= width or (w.col_off == 0 and width < size))
        assert w.row_off >= 0 and (w.row_off + size <= height or (w.row_off == 0 and height < size))
    assert windows == sorted(windows, key=lambda w: (w.row_off, w.col_off))


@settings(max_examples=200, deadline=None)
@given(length=lengths, ss=size_and_stride())
def test_offsets_step_by_stride_and_last_is_shifted_inside(length: int,
                                                           ss: tuple[int, int]) -> None:
    size, stride = ss
    offsets = grid_offsets(length, size, stride)
    steps = np.diff(offsets)
    assert offsets[0] == 0
    assert offsets[-1] == max(length - size, 0)
    assert (steps[:-1] == stride).all()
    assert all(0 < s <= stride for s in steps)
    assert len(offsets) == max(1, math.ceil((length - size) / stride) + 1)  # no extra window


def test_grid_examples() -> None:
    assert grid_offsets(10, 4, 4) == [0, 4, 6]
    assert grid_offsets(8, 4, 4) == [0, 4]
    assert grid_offsets(3, 4, 2) == [0]
    assert grid_offsets(9, 4, 3) == [0, 3, 5]


@settings(max_examples=100, deadline=None)
@given(width=lengths, height=lengths, size=sizes, n=st.integers(1, 30),
       seed=st.integers(0, 2**32 - 1))
def test_random_windows_inside_sorted_and_reproducible(width: int, height: int, size: int,
                                                       n: int, seed: int) -> None:
    windows = random_windows(width, height, size, n, seed)
    assert windows == random_windows(width, height, size, n, seed)
    assert len(windows) == n
    assert windows == sorted(windows, key=lambda w: (w.row_off, w.col_off))
    for w in windows:
        assert (w.width, w.height) == (size, size)
        assert 0 <= w.col_off <= max(width - size, 0)
        assert 0 <= w.row_off <= max(height - size, 0)


def test_random_windows_depend_on_seed_and_reach_the_edges() -> None:
    a = random_windows(500, 400, 32, 2000, seed=(1, 0))
    assert a != random_windows(500, 400, 32, 2000, seed=(1, 1))
    assert max(w.col_off for w in a) == 500 - 32 and min(w.col_off for w in a) == 0


@settings(max_examples=200, deadline=None)
@given(stop=st.integers(0, 500), block=st.integers(1, 64), extra=st.integers(0, 100))
def test_align_stop_ends_on_a_block_boundary_or_the_limit(stop: int, block: int,
                                                          extra: int) -> None:
    limit = stop + extra
    aligned = align_stop(stop, block, limit)
    assert stop <= aligned <= limit
    assert aligned == limit or (aligned % block == 0 and aligned - stop < block)


@pytest.mark.parametrize(("size", "stride"), [(0, 1), (4, 0), (4, 5), (4, -1)])
def test_bad_size_or_stride_is_refused(size: int, stride: int) -> None:
    with pytest.raises(ValueError, match=r"size|stride"):
        grid_offsets(10, size, stride)
