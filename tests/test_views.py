"""GLCNet views: each view pixel shows the source pixel its index map names, any bands/dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rsseg.pretexts.features import box_mean
from rsseg.pretexts.views import (
    MatchedViewSampler,
    Radiometry,
    TwoViewSampler,
    ViewConfig,
    make_view_pair,
    rgb_bands,
    sample_patches,
)

GEOMETRY_ONLY = ViewConfig(photometric_p=0.0, gray_p=0.0, blur_p=0.0)
H, W = 90, 70  # odd, non-square tiles on purpose


def ramp_tile(bands: int, dtype: type[np.generic]) -> tuple[np.ndarray, np.ndarray]:
    """A source tile whose bands are different linear ramps in (row, col), stored in ``dtype``,
    normalised per band to float32; also the per-band value change per pixel step."""
    rows, cols = np.mgrid[0:H, 0:W]
    slopes = [(1, 1), (2, 1), (1, 2), (1, 0), (0, 1), (2, 0)][:bands]  # max value 89*2+69 < 256
    raw = np.stack([a * rows + c * cols for a, c in slopes]).astype(dtype)
    values = raw.astype(np.float64)
    mean, std = values.mean(axis=(1, 2), keepdims=True), values.std(axis=(1, 2), keepdims=True)
    step = np.array([a + c for a, c in slopes])[:, None] / std[:, 0]
    return ((values - mean) / std).astype(np.float32), step


def coordinate_tile() -> np.ndarray:
    rows, cols = np.mgrid[0:H, 0:W].astype(np.float32)
    return np.stack([rows, cols])


def assert_view_shows_indexed_pixels(
    tile: np.ndarray, view: np.ndarray, index: np.ndarray, step: np.ndarray
) -> None:
    """Bilinear view of a linear tile = tile at the nearest source pixel, within half a step."""
    assert (index >= 0).all()
    source = tile.reshape(tile.shape[0], -1)[:, index]  # (C, S, S)
    error = np.abs(view - source).reshape(tile.shape[0], -1)
    interior = np.abs(view - source)[:, 2:-2, 2:-2].reshape(tile.shape[0], -1)
    assert (interior.max(axis=1) <= 0.5 * step[:, 0] + 1e-4).all()
    assert (np.median(error, axis=1) <= 0.5 * step[:, 0]).all()


@pytest.mark.parametrize("bands", [1, 3, 6])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_views_follow_their_index_maps(bands: int, dtype: type[np.generic]) -> None:
    tile, step = ramp_tile(bands, dtype)
    for seed in range(4):
        pair = make_view_pair(tile, np.random.default_rng(seed), 32, GEOMETRY_ONLY)
        for view, index in ((pair.view1, pair.index1), (pair.view2, pair.index2)):
            assert view.shape == (bands, 32, 32) and view.dtype == np.float32
            assert index.shape == (32, 32) and index.dtype == np.int64
            assert_view_shows_indexed_pixels(tile, view, index, step)


@pytest.mark.parametrize("bands", [1, 3, 6])
def test_full_augmentation_is_finite_and_keeps_shapes(bands: int) -> None:
    tile, _ = ramp_tile(bands, np.uint16)
    for seed in range(8):
        pair = make_view_pair(tile, np.random.default_rng(seed), 64)
        assert pair.view2.shape == (bands, 64, 64) and np.isfinite(pair.view2).all()
        assert pair.index2.min() >= 0 and pair.index2.max() < H * W


def test_view2_geometry_is_a_flip_or_rotation_of_a_crop() -> None:
    """The id map of view 2 is an axis-aligned crop of the tile, flipped/rotated: rows of source
    ids change along exactly one view axis."""
    seen = set()
    for seed in range(40):
        index = make_view_pair(coordinate_tile(), np.random.default_rng(seed), 32).index2
        src_rows, src_cols = np.divmod(index, W)
        row_axis = 0 if (np.diff(src_rows, axis=1) == 0).all() else 1
        assert (np.diff(src_rows, axis=1 - row_axis) == 0).all()
        assert (np.diff(src_cols, axis=row_axis) == 0).all()
        row_sign = np.sign(np.diff(src_rows, axis=row_axis).sum())
        col_sign = np.sign(np.diff(src_cols, axis=1 - row_axis).sum())
        seen.add((row_axis, row_sign, col_sign))
    assert len(seen) == 8  # all eight flips/rotations occur


def test_matched_boxes_are_centred_on_the_same_source_pixel() -> None:
    """On a coordinate image, the two boxes of each pair share their centre pixel, and their
    means (the box centres in source coordinates) agree to within the resampling step."""
    tile = coordinate_tile()
    size, patch = 48, 12
    checked = 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        pair = make_view_pair(tile, rng, size, GEOMETRY_ONLY)
        boxes = sample_patches(pair.index1, pair.index2, patch, 4, rng)
        boxes = boxes[boxes[:, 0] >= 0]
        half = patch // 2
        centre1 = pair.index1[boxes[:, 0] + half, boxes[:, 1] + half]
        centre2 = pair.index2[boxes[:, 2] + half, boxes[:, 3] + half]
        np.testing.assert_array_equal(centre1, centre2)
        item = torch.zeros(len(boxes), dtype=torch.long)
        b = torch.from_numpy(boxes)
        mean1 = box_mean(torch.from_numpy(pair.view1)[None], item, b[:, 0], b[:, 1], patch)
        mean2 = box_mean(torch.from_numpy(pair.view2)[None], item, b[:, 2], b[:, 3], patch)
        assert (mean1 - mean2).abs().max() <= 1 + max(H, W) / size
        checked += len(boxes)
    assert checked >= 20


def test_views_are_deterministic_given_the_seed() -> None:
    tile, _ = ramp_tile(3, np.float32)
    a = make_view_pair(tile, np.random.default_rng(7), 32)
    b = make_view_pair(tile, np.random.default_rng(7), 32)
    c = make_view_pair(tile, np.random.default_rng(8), 32)
    for field in ("view1", "view2", "index1", "index2"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.index1, c.index1)


def test_invalid_source_pixels_have_no_id() -> None:
    valid = np.ones((H, W), dtype=bool)
    valid[:, : W // 2] = False
    masked = make_view_pair(coordinate_tile(), np.random.default_rng(0), 32, valid=valid)
    plain = make_view_pair(coordinate_tile(), np.random.default_rng(0), 32)
    for got, ids in ((masked.index1, plain.index1), (masked.index2, plain.index2)):
        np.testing.assert_array_equal(got, np.where(valid.ravel()[ids], ids, -1))
    assert (masked.index1 == -1).any() or (masked.index2 == -1).any()


def test_samplers_produce_batch_items() -> None:
    tile, _ = ramp_tile(4, np.uint8)
    rng = np.random.default_rng(0)
    item = MatchedViewSampler(size=32, patch_size=8, patch_num=3)(tile, rng)
    assert set(item) == {"view1", "view2", "patches"}
    assert item["patches"].shape == (3, 4) and item["patches"].dtype == np.int64
    item = TwoViewSampler(size=32)(tile, rng)
    assert set(item) == {"view1", "view2"} and item["view1"].shape == (4, 32, 32)


def test_view_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="scale"):
        ViewConfig(scale=(0.8, 0.2))
    with pytest.raises(ValueError, match="odd"):
        ViewConfig(blur_kernels=(4,))


def _still(**changes: object) -> ViewConfig:
    """Only the photometric change (always), no flips/rotation/grayscale/blur."""
    return ViewConfig(flip=False, rot90_p=0.0, gray_p=0.0, blur_p=0.0, photometric_p=1.0,
                      **changes)


def _raw_rgb_tile(rng: np.random.Generator, bands: int = 3) -> np.ndarray:
    """A textured 8-bit tile: per-band mean ~100 DN, std ~30 DN."""
    return np.clip(rng.normal(100, 30, (bands, H, W)), 0, 255).astype(np.float32)


def test_colour_change_works_on_raw_values_and_is_strong() -> None:
    """Normalising before or after the change gives the same raw pixels, and on 8-bit bands with
    a std of 30 DN the change moves the bands by a sizeable fraction of σ (GLCNet's strength;
    the former ±0.1 σ jitter fails this)."""
    rng = np.random.default_rng(0)
    raw = _raw_rgb_tile(rng)
    mean, std = raw.mean(axis=(1, 2)), raw.std(axis=(1, 2))
    norm = (raw - mean[:, None, None]) / std[:, None, None]
    radiometry = Radiometry(tuple(mean), tuple(std), (255.0,) * 3, (0, 1, 2), clip=True)
    shifts = []
    for seed in range(12):
        a = make_view_pair(norm, np.random.default_rng(seed), 32, _still(), radiometry=radiometry)
        b = make_view_pair(raw, np.random.default_rng(seed), 32, _still(),
                           radiometry=Radiometry((0.0,) * 3, (1.0,) * 3, (255.0,) * 3,
                                                 (0, 1, 2), clip=True))
        raw_a = a.view2 * std[:, None, None] + mean[:, None, None]
        np.testing.assert_allclose(raw_a, b.view2, atol=1e-2)
        assert b.view2.min() >= 0 and b.view2.max() <= 255  # 8-bit: clipped as OpenCV's uint8
        shifts.append(np.abs(a.view2 - a.view0).mean(axis=(1, 2)))
    assert np.mean(shifts) > 0.15  # in σ units, mean over bands and seeds


def test_hsv_shift_touches_only_the_named_colour_bands() -> None:
    rng = np.random.default_rng(1)
    raw = _raw_rgb_tile(rng, bands=6)
    names = ("B1_blue", "B2_green", "B3_red", "B4_nir", "B5_swir1", "B7_swir2")
    radiometry = Radiometry.of_bands(names, (0,) * 6, (1,) * 6, (255,) * 6, eight_bit=True)
    assert radiometry.rgb == (2, 1, 0)
    pair = make_view_pair(raw, np.random.default_rng(4), 32, _still(per_band=False),
                          radiometry=radiometry)
    np.testing.assert_array_equal(pair.view2[3:], pair.view0[3:])
    assert not np.allclose(pair.view2[:3], pair.view0[:3])
    # imagery of other than 3 bands also gets the per-band change and salt (official code)
    pair = make_view_pair(raw, np.random.default_rng(4), 32, _still(), radiometry=radiometry)
    assert not np.allclose(pair.view2[3:], pair.view0[3:])


def test_rgb_bands_by_name_else_the_first_three() -> None:
    assert rgb_bands(("Red", "Green", "Blue")) == (0, 1, 2)
    assert rgb_bands(("B1", "B2", "B3", "B4")) == (0, 1, 2)
    assert rgb_bands(("nir", "red", "green")) is None  # named, but no blue: no HSV shift
    assert rgb_bands(("B1", "B2")) is None


def test_local_branch_reads_at_least_64_channels() -> None:
    """smp U-Net's last decoder stage has 16 channels: the local map is its 64-channel stage."""
    from rsseg.models.factory import ModelSpec, build_model
    from rsseg.pretexts.features import extract_features, local_module

    for arch, kwargs, stage in (("unet", {}, True),
                                ("unet", {"encoder_depth": 3, "decoder_channels": [64, 32, 16]},
                                 True),
                                ("deeplabv3plus", {}, False)):
        model = build_model(ModelSpec(arch=arch, encoder="resnet18", in_channels=3, classes=64,
                                      kwargs=kwargs)).eval()
        assert (local_module(model) is not None) == stage
        with torch.no_grad():
            maps = extract_features(model, torch.zeros(1, 3, 64, 64))
        assert maps.local.shape == (1, 64, 64, 64)
