"""Training datasets: normalisation, crops aligned with their labels, centres drawn everywhere."""

from __future__ import annotations

import numpy as np
import torch

from rsseg.training.data import LabelledCrops, crop_labels, normalize


def test_normalize_is_float32_and_zeroes_missing_band_values() -> None:
    pixels = np.array([[[10, 20]], [[30, 40]]], dtype=np.uint16)  # (2, 1, 2)
    out = normalize(pixels, np.array([10.0, 30.0]), np.array([5.0, 10.0]),
                    missing=np.array([[[False, True]], [[False, False]]]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], [0.0, 0.0])
    np.testing.assert_allclose(out[:, 0, 1], [0.0, 1.0])  # band 0 missing → 0, not (20-10)/5
    assert normalize(pixels, np.array([0.0, 0.0]), np.array([1.0, 1.0]))[1, 0, 1] == 40


def test_crop_labels_pads_outside_with_fill() -> None:
    labels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    from rasterio.windows import Window

    out = crop_labels(labels, Window(-1, 1, 3, 3), fill=255)
    assert out.tolist() == [[255, 4, 5], [255, 8, 9], [255, 255, 255]]


def test_crops_match_their_labels_and_cover_every_centre(geotiff_factory) -> None:
    ids = np.tile(np.arange(40, dtype=np.uint8), (40, 1)) % 7  # label = column % 7
    image = geotiff_factory("img.tif", np.stack([ids * 10, ids * 20]).astype(np.uint16))
    labels = np.full_like(ids, 255)
    labels[::3, ::3] = ids[::3, ::3]
    rows, cols = np.nonzero(labels != 255)
    centres = np.column_stack([np.zeros_like(rows), rows, cols])
    crops = LabelledCrops([(image, labels)], centres, 16, np.zeros(2), np.ones(2), None,
                          length=20)  # an epoch shorter than the number of centres
    torch.manual_seed(0)
    seen_rows = set()
    for i in range(len(crops)):
        x, y = crops[i]
        keep = y != 255
        assert keep.any()
        assert torch.equal(x[0][keep], y[keep].float() * 10)  # pixels and labels stay aligned
        seen_rows.add(int(crops.window(i, np.random.default_rng(i))[1].row_off))
    assert max(seen_rows) > 20  # centres are drawn from the whole scene, not the first rows


def test_balanced_sampling_draws_every_class_alike() -> None:
    from rsseg.training.data import centre_weights

    labels = np.full((10, 10), 255, dtype=np.uint8)
    labels[0, :] = 0  # 10 pixels of class 0
    labels[1, 0] = 1  # 1 pixel of class 1
    rows, cols = np.nonzero(labels != 255)
    centres = np.column_stack([np.zeros_like(rows), rows, cols])
    sources = [("img.tif", labels)]
    uniform = centre_weights(sources, centres, 255, 0.0)
    np.testing.assert_allclose(uniform, 1 / 11)
    balanced = centre_weights(sources, centres, 255, 1.0)
    classes = labels[rows, cols]
    np.testing.assert_allclose([balanced[classes == k].sum() for k in (0, 1)], [0.5, 0.5])
    half = centre_weights(sources, centres, 255, 0.5)
    assert 1 / 11 < half[classes == 1].sum() < 0.5


def test_balanced_crops_and_jitter_keep_labels_and_nodata(geotiff_factory) -> None:
    ids = np.tile(np.arange(40, dtype=np.uint8), (40, 1)) % 7
    pixels = np.stack([ids * 10 + 1, ids * 20 + 1]).astype(np.uint16)
    pixels[:, :, :5] = 0  # a nodata strip
    image = geotiff_factory("img.tif", pixels, nodata=0)
    labels = np.full_like(ids, 255)
    labels[::3, ::3] = ids[::3, ::3]
    rows, cols = np.nonzero(labels != 255)
    centres = np.column_stack([np.zeros_like(rows), rows, cols])
    crops = LabelledCrops([(image, labels)], centres, 16, np.zeros(2), np.ones(2), 0,
                          length=50, balance=1.0, jitter=0.1)
    torch.manual_seed(0)
    changed = False
    for i in range(len(crops)):
        x, y = crops[i]
        nodata = (x == 0).all(0)
        assert (y[nodata] == 255).all()  # nodata pixels: no label and stay 0 after jitter
        keep = y != 255
        changed |= not torch.allclose(x[0][keep], y[keep].float() * 10 + 1)
    assert changed  # the radiometric jitter changes the pixel values


def test_band_dropout_makes_one_band_missing(geotiff_factory) -> None:
    pixels = np.full((3, 32, 32), 50, dtype=np.uint8)
    pixels[:, :, :4] = 0  # nodata everywhere in the first columns
    image = geotiff_factory("img.tif", pixels, nodata=0)
    labels = np.full((32, 32), 255, dtype=np.uint8)
    labels[16, 16] = 1
    centres = np.array([[0, 16, 16]])
    mean, std = np.full(3, 40.0), np.full(3, 10.0)
    crops = LabelledCrops([(image, labels)], centres, 16, mean, std, None, length=40,
                          band_dropout=1.0)
    torch.manual_seed(0)
    dropped = set()
    for i in range(len(crops)):
        x, _ = crops[i]
        valid = x.abs().sum(0) > 0
        per_band = [torch.unique(x[b][valid]).tolist() for b in range(3)]
        missing = [b for b, v in enumerate(per_band) if v == [0.0]]  # the band mean
        assert len(missing) == 1 and all(per_band[b] == [1.0] for b in range(3)
                                         if b not in missing)
        dropped.update(missing)
    assert dropped == {0, 1, 2}


def test_a_band_missing_in_a_valid_pixel_enters_at_its_mean(geotiff_factory) -> None:
    """Per-band nodata (GDAL's): band 2's frame is 0 = nodata while bands 0-1 hold data; those
    pixels keep their labels and read band 2 as 0 (its mean), never as (0 - mean) / std."""
    pixels = np.full((3, 32, 32), 50, dtype=np.uint8)
    pixels[2, :, :8] = 0  # band 2's footprint ends first
    image = geotiff_factory("img.tif", pixels, nodata=0)
    labels = np.full((32, 32), 1, dtype=np.uint8)
    crops = LabelledCrops([(image, labels)], np.array([[0, 16, 16]]), 32, np.full(3, 40.0),
                          np.full(3, 10.0), None, augment=False)
    x, y = crops[0]
    assert (x[:2] == 1.0).all() and (x[2, :, :8] == 0).all() and (x[2, :, 8:] == 1.0).all()
    assert (y == 1).all()  # the frame is not nodata: every band would have to be
