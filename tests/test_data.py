"""Training datasets: normalisation, crops aligned with their labels, centres drawn everywhere."""

from __future__ import annotations

import numpy as np
import torch

from rsseg.training.data import LabelledCrops, crop_labels, normalize


def test_normalize_is_float32_and_zeroes_invalid_pixels() -> None:
    pixels = np.array([[[10, 20]], [[30, 40]]], dtype=np.uint16)  # (2, 1, 2)
    out = normalize(pixels, np.array([10.0, 30.0]), np.array([5.0, 10.0]),
                    valid=np.array([[True, False]]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], [0.0, 0.0])
    np.testing.assert_allclose(out[:, 0, 1], [0.0, 0.0])  # invalid → 0, not (20-10)/5
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
