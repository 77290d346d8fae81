"""``rsseg predict``: stitching exactness, georeferenced COG output, atomicity, bad input."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rsseg.classes import ClassTable, raster_classes
from rsseg.inference.sliding import SlidingWindowPredictor
from rsseg.io.raster import open_scene
from rsseg.io.writer import class_raster_writer
from rsseg.models.bundle import BundleMeta, save_bundle
from rsseg.models.factory import ModelSpec, build_model
from rsseg.pipelines.predict import PredictOptions, argmax_channels, predict_scene

NODATA = 65535
# The per-pixel model: logits = WEIGHTS @ ((x - MEAN) / STD) + BIAS, exact in float32 for small x.
WEIGHTS = np.array([[1, -2, 3], [0, 1, 1], [-1, 2, -1], [2, 0, -2]], dtype=np.float32)
BIAS = np.array([0, 1, -1, 2], dtype=np.float32)
MEAN, STD = 5.0, 2.0
CLASS_IDS = np.array([0, 3, 7, 9], dtype=np.uint8)  # not contiguous: channel k → CLASS_IDS[k]


def _meta(spec: ModelSpec, ids: np.ndarray, tile: int, overlap: int) -> BundleMeta:
    return BundleMeta(
        model=spec, tile=tile, overlap=overlap,
        bands=[{"name": n, "mean": MEAN, "std": STD} for n in ("red", "green", "blue")],
        classes=[{"id": int(i), "name": f"class {i}", "color": (20 * k, 100, 200)}
                 for k, i in enumerate(ids)])


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A per-pixel 1×1-conv bundle with known weights and a small U-Net (multiple 8) bundle."""
    folder = tmp_path_factory.mktemp("models")
    spec = ModelSpec(arch="pixel", in_channels=3, classes=4)
    pixel = build_model(spec)
    with torch.no_grad():
        pixel.net[0].weight.copy_(torch.from_numpy(WEIGHTS)[:, :, None, None])
        pixel.net[0].bias.copy_(torch.from_numpy(BIAS))
    unet_spec = ModelSpec(arch="unet", in_channels=3, classes=2,
                          kwargs={"encoder_depth": 3, "decoder_channels": (16, 8, 8)})
    return {
        "pixel": save_bundle(folder / "pixel.rsseg", pixel, _meta(spec, CLASS_IDS, 32, 8)),
        "unet": save_bundle(folder / "unet.rsseg", build_model(unet_spec),
                            _meta(unet_spec, CLASS_IDS[:2], 32, 8)),
    }


def _pixels(height: int, width: int, seed: int) -> np.ndarray:
    """``(3, H, W)`` uint16 in 0..20 with all-band nodata blobs and some one-band nodata."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 21, (3, height, width)).astype(np.uint16)
    pixels[:, rng.random((height, width)) < 0.1] = NODATA
    pixels[1, rng.random((height, width)) < 0.05] = NODATA  # still valid: other bands hold data
    return pixels


def _reference(pixels: np.ndarray) -> np.ndarray:
    """The per-pixel function on the whole scene at once, in float64, a band's nodata at the band
    mean (nodata is per band), then all-band nodata → 255."""
    x = (pixels.astype(np.float64) - MEAN) / STD
    x[pixels == NODATA] = 0.0
    logits = np.einsum("kc,chw->khw", WEIGHTS.astype(np.float64), x) + BIAS[:, None, None]
    ids = CLASS_IDS[np.argmax(logits, axis=0)]
    ids[(pixels == NODATA).all(axis=0)] = 255
    return ids


@given(height=st.integers(1, 37), width=st.integers(1, 37), tile=st.integers(4, 40),
       overlap_fraction=st.floats(0, 0.95), batch_size=st.integers(1, 6),
       tiled=st.booleans(), seed=st.integers(0, 2**16))
@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_stitching_reproduces_the_per_pixel_function_exactly(
        geotiff_factory, models, tmp_path, height, width, tile, overlap_fraction, batch_size,
        tiled, seed) -> None:
    pixels = _pixels(height, width, seed)
    scene = geotiff_factory("scene.tif", pixels, nodata=NODATA, blocksize=16 if tiled else None)
    options = PredictOptions(tile=tile, overlap=int(overlap_fraction * tile),
                             batch_size=batch_size, overwrite=True)
    predict_scene(scene, models["pixel"], tmp_path / "pred.tif", options)
    with rasterio.open(tmp_path / "pred.tif") as out:
        np.testing.assert_array_equal(out.read(1), _reference(pixels))


def test_output_is_a_georeferenced_cog_with_colours_and_names(geotiff_factory, models,
                                                              tmp_path) -> None:
    pixels = _pixels(520, 600, seed=1)
    scene = geotiff_factory("scene.tif", pixels, nodata=NODATA, blocksize=256)
    summary = predict_scene(scene, models["pixel"], tmp_path / "pred.tif", PredictOptions(tile=32))
    assert summary.windows == 22 * 25  # tile 32, overlap 8: steps of 24, last shifted inside
    with rasterio.open(scene) as src, rasterio.open(tmp_path / "pred.tif") as out:
        assert (out.crs, out.transform, out.width, out.height) == (
            src.crs, src.transform, src.width, src.height)
        assert out.dtypes[0] == "uint8" and out.nodata == 255
        assert out.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert out.profile["tiled"] and out.profile["compress"] == "deflate"
        assert out.overviews(1) == [2]
        cmap = out.colormap(1)
        assert cmap[7] == (40, 100, 200, 255) and cmap[255][3] == 0  # nodata transparent
        np.testing.assert_array_equal(out.read(1), _reference(pixels))
    with open_scene(tmp_path / "pred.tif") as pred:
        table = raster_classes(pred)
    assert table is not None and table.names == ("class 0", "class 3", "class 7", "class 9")


def test_cnn_bundle_on_odd_scene_keeps_nodata_exactly(geotiff_factory, models, tmp_path) -> None:
    pixels = _pixels(45, 70, seed=2)
    scene = geotiff_factory("scene.tif", pixels, nodata=NODATA)
    predict_scene(scene, models["unet"], tmp_path / "pred.tif", PredictOptions(overlap=12))
    with rasterio.open(tmp_path / "pred.tif") as out:
        classes = out.read(1)
    nodata = (pixels == NODATA).all(axis=0)
    assert np.all(classes[nodata] == 255)
    assert set(np.unique(classes[~nodata])) <= {0, 3}


def test_nodata_values_do_not_leak_into_neighbours(geotiff_factory, models, tmp_path) -> None:
    pixels = _pixels(40, 50, seed=9).astype(np.float32)
    nodata = (pixels == NODATA).all(axis=0)
    results = []
    for value in (-9999.0, np.nan):
        pixels[:, nodata] = value
        scene = geotiff_factory("scene.tif", pixels, nodata=value)
        predict_scene(scene, models["unet"], tmp_path / "pred.tif",
                      PredictOptions(overlap=8, overwrite=True))
        with rasterio.open(tmp_path / "pred.tif") as out:
            results.append(out.read(1))
    np.testing.assert_array_equal(results[0], results[1])
    assert np.all(results[0][nodata] == 255)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_scene_without_georeferencing_still_predicts(geotiff_factory, models, tmp_path) -> None:
    scene = geotiff_factory("plain.tif", _pixels(20, 30, seed=3), crs=None, transform=None)
    with pytest.warns(UserWarning, match="no CRS"):
        predict_scene(scene, models["pixel"], tmp_path / "pred.tif")
    with rasterio.open(tmp_path / "pred.tif") as out:
        assert out.crs is None and out.shape == (20, 30)


def test_scene_with_a_transform_but_no_crs_warns(geotiff_factory, models, tmp_path) -> None:
    from affine import Affine

    grid = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_500_000.0)
    scene = geotiff_factory("nocrs.tif", _pixels(20, 30, seed=3), crs=None, transform=grid)
    with pytest.warns(UserWarning, match="has a geotransform but no CRS"):
        predict_scene(scene, models["pixel"], tmp_path / "pred.tif")
    with rasterio.open(tmp_path / "pred.tif") as out:
        assert out.crs is None and out.transform == grid


def test_writer_accepts_uneven_bands_across_block_rows(geotiff_factory, tmp_path) -> None:
    scene = geotiff_factory("scene.tif", np.zeros((1, 600, 40), dtype=np.uint8))
    classes = (np.arange(600 * 40).reshape(600, 40) % 5).astype(np.uint8)
    table = ClassTable.from_ids(range(5))
    with open_scene(scene) as src, class_raster_writer(tmp_path / "c.tif", src.info,
                                                       table) as writer:
        for row in range(0, 600, 37):
            writer.write(row, classes[row:row + 37])
    with rasterio.open(tmp_path / "c.tif") as out:
        np.testing.assert_array_equal(out.read(1), classes)
    with pytest.raises(ValueError, match="400 of 600 rows"), open_scene(scene) as src, \
            class_raster_writer(tmp_path / "d.tif", src.info, table) as writer:
        writer.write(0, classes[:400])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.qml", "c.tif", "c.tif.aux.xml",
                                                          "scene.tif"]  # + class sidecars


def test_interrupted_run_leaves_no_output(geotiff_factory, models, tmp_path,
                                         monkeypatch) -> None:
    scene = geotiff_factory("scene.tif", _pixels(100, 40, seed=4), nodata=NODATA)
    real = SlidingWindowPredictor.probabilities
    calls = []

    def interrupt_second_batch(self, x, weight=None):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, x, weight)

    monkeypatch.setattr(SlidingWindowPredictor, "probabilities", interrupt_second_batch)
    (tmp_path / "out").mkdir()
    with pytest.raises(KeyboardInterrupt):
        predict_scene(scene, models["pixel"], tmp_path / "out" / "p.tif",
                      PredictOptions(batch_size=1, tile=32))
    assert len(calls) == 2 and list((tmp_path / "out").iterdir()) == []


def test_freed_memory_is_released_after_every_batch(geotiff_factory, models, tmp_path,
                                                    monkeypatch) -> None:
    """Each batch's activations go back to the system before the next forward pass."""
    scene = geotiff_factory("scene.tif", _pixels(100, 40, seed=4), nodata=NODATA)
    real = SlidingWindowPredictor.probabilities
    batches, released = [], []

    def counted(self, x, weight=None):
        batches.append(len(x))
        return real(self, x, weight)

    monkeypatch.setattr(SlidingWindowPredictor, "probabilities", counted)
    monkeypatch.setattr("rsseg.inference.sliding.release_freed_memory",
                        lambda: released.append(len(batches)))
    predict_scene(scene, models["pixel"], tmp_path / "p.tif", PredictOptions(batch_size=2, tile=32))
    assert len(batches) > 2 and released == list(range(1, len(batches) + 1))


def test_existing_output_needs_overwrite(geotiff_factory, models, tmp_path, run_cli) -> None:
    scene = geotiff_factory("scene.tif", _pixels(20, 20, seed=5), nodata=NODATA)
    out = tmp_path / "pred.tif"
    out.write_bytes(b"keep me")
    refused = run_cli("predict", scene, "--model", models["pixel"], "--out", out)
    assert refused.exit_code == 1 and "--overwrite" in refused.stderr
    assert out.read_bytes() == b"keep me"
    done = run_cli("predict", scene, "--model", models["pixel"], "--out", out, "--overwrite")
    assert done.exit_code == 0 and "Wrote" in done.stdout
    with rasterio.open(out) as pred:
        assert pred.shape == (20, 20)


def _bad_input(tmp_path: Path, geotiff_factory, models: dict[str, Path], case: str) -> list:
    """Arguments of ``rsseg predict`` for one bad input ``case``."""
    scene = geotiff_factory("scene.tif", _pixels(40, 40, seed=6), nodata=NODATA, blocksize=16)
    model, out = models["pixel"], tmp_path / "out" / "pred.tif"
    extra: list = []
    if case == "missing scene":
        scene = tmp_path / "nope.tif"
    elif case == "not a raster":
        scene = tmp_path / "text.tif"
        scene.write_text("hello\n")
    elif case == "truncated scene":
        data = scene.read_bytes()
        scene = tmp_path / "truncated.tif"
        scene.write_bytes(data[: len(data) // 2])
    elif case == "band count":
        scene = geotiff_factory("four.tif", np.ones((4, 8, 8), dtype=np.uint8))
    elif case == "not a bundle":
        model = tmp_path / "model.rsseg"
        model.write_bytes(os.urandom(500))
    elif case == "truncated bundle":
        model = tmp_path / "model.rsseg"
        model.write_bytes(models["unet"].read_bytes()[:5000])
    elif case == "tile multiple":
        model, extra = models["unet"], ["--tile", 12]
    elif case == "negative overlap":
        extra = ["--overlap", -1]
    elif case == "overlap too large":
        extra = ["--tile", 16, "--overlap", 16]
    elif case == "batch size":
        extra = ["--batch-size", 0]
    elif case == "output folder is a file":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "pred.tif"
    elif case == "output exists":
        out.parent.mkdir()
        out.write_text("")
    elif case == "output is the scene":
        out, extra = scene, ["--overwrite"]
    elif case == "output not a tif":
        out = out.with_suffix(".png")
    elif case == "tile negative":
        model, extra = models["unet"], ["--tile", -5]
    return ["predict", scene, "--model", model, "--out", out, *extra]


BAD_INPUTS = {
    "missing scene": "nope.tif: no such file",
    "not a raster": "not a readable raster",
    "truncated scene": "truncated",
    "band count": "has 4 band\\(s\\) but model .* expects 3 \\(red, green, blue\\)",
    "not a bundle": "not a model bundle or corrupt",
    "truncated bundle": "not a model bundle or corrupt",
    "tile multiple": "--tile 12 is not a positive multiple of 8, which unet/resnet18 needs"
                     ".*--tile 8 or 16",
    "negative overlap": "--overlap -1 must be at least 0",
    "overlap too large": "--overlap 16 must be .* smaller than the tile",
    "batch size": "--batch-size 0",
    "output folder is a file": "is not a folder",
    "output exists": "already exists.*--overwrite",
    "output is the scene": "--out .*scene.tif is also the input scene",
    "output not a tif": "--out .*pred.png: rasters are written as Cloud-Optimized GeoTIFF",
    "tile negative": "--tile -5 is not a positive multiple of 8.*--tile 32\\)",
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_exit_1_and_no_output(case, tmp_path, geotiff_factory, models,
                                                   run_cli) -> None:
    args = _bad_input(tmp_path, geotiff_factory, models, case)
    before = set(tmp_path.rglob("*"))
    result = run_cli(*args)
    assert result.exit_code == 1, result
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert re.search(BAD_INPUTS[case], result.stderr), result.stderr
    assert set(tmp_path.rglob("*")) == before  # nothing written, not even temporary files


def test_bands_are_taken_by_name_in_the_models_order(geotiff_factory, models, tmp_path,
                                                      run_cli) -> None:
    pixels = _pixels(30, 30, seed=8)
    scene = geotiff_factory("rgb.tif", pixels, nodata=NODATA,
                            descriptions=["red", "green", "blue"])
    reversed_ = geotiff_factory("bgr.tif", pixels[::-1].copy(), nodata=NODATA,
                                descriptions=["blue", "green", "red"])
    results = [run_cli("predict", path, "--model", models["pixel"], "--out",
                       tmp_path / f"{path.stem}_pred.tif") for path in (scene, reversed_)]
    assert [r.exit_code for r in results] == [0, 0]
    assert "Warning" not in results[0].stderr
    assert "bands taken by name in the model's order (red, green, blue)" in results[1].stderr
    with rasterio.open(tmp_path / "rgb_pred.tif") as a, \
            rasterio.open(tmp_path / "bgr_pred.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
        np.testing.assert_array_equal(a.read(1), _reference(pixels))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_unwritable_output_folder(tmp_path, geotiff_factory, models, run_cli) -> None:
    scene = geotiff_factory("scene.tif", _pixels(8, 8, seed=7), nodata=NODATA)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = run_cli("predict", scene, "--model", models["pixel"], "--out", locked / "p.tif")
    assert result.exit_code == 1 and "not writable" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_is_a_clear_error(tmp_path, geotiff_factory, models, run_cli) -> None:
    scene = geotiff_factory("scene.tif", _pixels(8, 8, seed=8), nodata=NODATA)
    result = run_cli("predict", scene, "--model", models["pixel"], "--out", tmp_path / "p.tif",
                     "--device", "cuda")
    assert result.exit_code == 1 and "no CUDA GPU" in result.stderr


@given(st.lists(st.integers(0, 3), min_size=12, max_size=12))
def test_argmax_channels_matches_numpy_including_ties(values: list[int]) -> None:
    probs = np.array(values, dtype=np.float32).reshape(3, 2, 2)
    np.testing.assert_array_equal(argmax_channels(probs), np.argmax(probs, axis=0))
