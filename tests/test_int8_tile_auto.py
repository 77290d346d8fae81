"""``predict --tile auto`` (the largest window whose activations and blending band fit
--max-memory) and ``--precision int8|auto`` (NNCF on the scene's windows, run by OpenVINO,
verified, cached)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from rsseg.errors import ConfigError
from rsseg.inference import quantize
from rsseg.inference.memory import (
    activation_bytes_per_pixel,
    auto_tile,
    band_bytes,
    parse_memory,
    window_work,
)
from rsseg.inference.runtime import RuntimeOptions, check_runtime
from rsseg.models.bundle import BundleMeta, save_bundle
from rsseg.models.factory import ModelSpec, build_model
from rsseg.pipelines.predict import PredictOptions, predict_scene

CPU = torch.device("cpu")
SPEC = ModelSpec(arch="unet", in_channels=3, classes=3,
                 kwargs={"encoder_depth": 3, "decoder_channels": (16, 8, 8)})


def _pixels() -> np.ndarray:
    """(3, 120, 100) uint8: smooth structure (so classes form regions, as in imagery) plus a
    little noise."""
    rows, cols = np.mgrid[0:120, 0:100]
    base = 100 + 60 * np.sin(rows / 9.0)[None] * np.cos(cols / 13.0)[None]
    noise = np.random.default_rng(0).normal(0, 8, (3, 120, 100))
    return np.clip(base + noise + np.arange(3)[:, None, None] * 15, 1, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle trained a little on the scene (3 brightness classes): an untrained net's logits
    are too close together for any int8 graph to keep 99 % of its classes."""
    torch.manual_seed(0)
    net = build_model(SPEC)
    x = torch.from_numpy((_pixels().astype(np.float32) - 100.0) / 40.0)[None, :, :96, :96]
    target = torch.bucketize(x.mean(1), torch.tensor([-0.5, 0.5]))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(40):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), target).backward()
        opt.step()
    meta = BundleMeta(model=SPEC, tile=32, overlap=8,
                      bands=[{"name": n, "mean": 100.0, "std": 40.0} for n in "rgb"],
                      classes=[{"id": k, "name": f"c{k}", "color": (80 * k, 90, 10)}
                               for k in range(3)])
    return save_bundle(tmp_path_factory.mktemp("int8") / "m.rsseg", net.eval(), meta)


@pytest.fixture
def scene(geotiff_factory) -> Path:
    return geotiff_factory("scene.tif", _pixels(), nodata=0)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RSSEG_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _classes(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


@pytest.mark.parametrize(("text", "value"), [("1G", 1 << 30), ("512M", 512 << 20),
                                             ("1.5GiB", 3 << 29), ("300mb", 300 << 20),
                                             ("4096", 4096), (2048, 2048)])
def test_memory_amounts_parse(text, value) -> None:
    assert parse_memory(text) == value


@pytest.mark.parametrize("text", ["", "lots", "-1G", "0", "1X"])
def test_bad_memory_amounts_are_one_line(text) -> None:
    with pytest.raises(ConfigError, match="is not an amount of memory"):
        parse_memory(text)


def test_activation_probe_counts_every_operator_output() -> None:
    per_pixel = activation_bytes_per_pixel(SPEC, 8)
    # at least the input (3 floats) and the widest full-resolution map: 8 channels, two alive
    assert 3 * 4 + 2 * 8 * 4 <= per_pixel < 4096


def test_auto_tile_fits_the_memory_and_computes_the_fewest_pixels() -> None:
    # 400 B/px, batch 2, 1 GiB, 6 classes: 800·s² + 4·6·10,000·s ≤ 2**30 -> s ≤ 1018.3, at most
    # 992 (1152 without the blending band); on a 10,000² scene
    # 1152² windows compute each pixel 1.33 times (10 rows, the last shifted back), 896² 1.16
    assert auto_tile(400, 2, 1 << 30, 32, 256, 64, 10_000, 10_000, 6) == 896
    assert window_work(896, 64, 32, 10_000, 10_000) < 0.9 * window_work(1152, 64, 32, 10_000,
                                                                         10_000)
    assert auto_tile(400, 2, 1 << 30, 32, 256, 64, 2048, 2048, 6) == 1056  # 2 rows: 1.06
    assert auto_tile(400, 2, 1 << 30, 32, 256, 64, 1088, 1088, 6) == 1088  # one window: 1.00
    assert auto_tile(400, 1, 1 << 30, 32, 256, 64, 10_000, 10_000, 6) == 1312
    assert auto_tile(1, 2, 1 << 30, 32, 256, 64, 10_000, 10_000, 6) == 1728  # capped at 2048
    for side in (1000, 3000, 10_000):  # never more work than 1152², the largest without a band
        assert window_work(auto_tile(400, 2, 1 << 30, 32, 256, 64, side, side, 6), 64, 32, side,
                           side) <= window_work(1152, 64, 32, side, side)
    assert auto_tile(400, 2, 1 << 30, 32, 256, 64, 300, 200, 6) == 320  # the scene's size
    assert auto_tile(400, 2, 1 << 30, 32, 256, 64, 20, 20, 6) == 96  # above the overlap
    with pytest.raises(ConfigError, match=r"too small for one batch of 2 window\(s\) of 256².*"
                                          r"at least 109 MiB is needed"):
        auto_tile(400, 2, 10 << 20, 32, 256, 64, 10_000, 10_000, 6)


def test_auto_tile_counts_the_blending_band_of_wide_scenes() -> None:
    # 8,192 rows: 1088² windows (8 rows, 1.13) fit beside a band 2,048 px wide; at 8,192 px the
    # band (6 classes × 8,192 × 4 B per window row: 204 MiB at 1088) leaves room for 992² only
    assert auto_tile(400, 2, 1 << 30, 32, 256, 64, 8192, 2048, 6) == 1088
    tile = auto_tile(400, 2, 1 << 30, 32, 256, 64, 8192, 8192, 6)
    assert tile == 992 and 2 * 400 * tile**2 + band_bytes(6, 8192, tile) <= 1 << 30
    assert 2 * 400 * 1088**2 + band_bytes(6, 8192, 1088) > 1 << 30


def test_tile_auto_is_the_default_and_printed_once(bundle, scene, tmp_path, run_cli) -> None:
    result = run_cli("predict", scene, "--model", bundle, "--out", tmp_path / "a.tif")
    assert result.exit_code == 0, result
    assert result.stdout.count("Windows of ") == 1
    assert "Windows of 120² px, overlap 8 (--tile auto" in result.stdout  # the scene's size
    fixed = run_cli("predict", scene, "--model", bundle, "--out", tmp_path / "b.tif",
                    "--tile", 32)
    assert fixed.exit_code == 0 and "Windows of" not in fixed.stdout
    # one window vs blended 32² windows of an untrained net: the same grid, the same class set
    # (their agreement is a property of the model, measured on real scenes by bench_predict)
    one, blended = _classes(tmp_path / "a.tif"), _classes(tmp_path / "b.tif")
    assert one.shape == blended.shape == (120, 100)
    assert set(np.unique(one)) <= {0, 1, 2} and set(np.unique(blended)) <= {0, 1, 2}


@pytest.mark.parametrize(("flags", "message"), [
    (["--max-memory", "1K"], "--max-memory 1 KiB is too small for one batch of 2 window(s) "
                             "of 32²"),
    (["--max-memory", "lots"], "--max-memory 'lots' is not an amount of memory"),
    (["--tile", "big"], "--tile 'big' is neither auto nor a number of pixels"),
    (["--precision", "int8", "--backend", "torch"],
     "--precision int8 runs with --backend openvino only, not torch"),
    (["--precision", "int8", "--backend", "onnxruntime"],
     "--precision int8 runs with --backend openvino only, not onnxruntime"),
])
def test_bad_flags_are_one_line(bundle, scene, tmp_path, run_cli, flags, message) -> None:
    result = run_cli("predict", scene, "--model", bundle, "--out", tmp_path / "p.tif", *flags)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result
    assert message in result.stderr
    assert not (tmp_path / "p.tif").exists()


@pytest.mark.parametrize(("options", "device", "message"), [
    (RuntimeOptions(precision="int8"), torch.device("cuda"), "int8 runs on the CPU only"),
    (RuntimeOptions(backend="torch", precision="int8"), CPU, "with --backend openvino only"),
    (RuntimeOptions(backend="openvino", precision="bf16"), CPU, "runs fp32 or int8, not bf16"),
    (RuntimeOptions(backend="openvino"), torch.device("cuda"), "openvino runs on the CPU only"),
])
def test_int8_where_it_cannot_run(options, device, message) -> None:
    with pytest.raises(ConfigError, match=message):
        check_runtime(options, device)


def test_int8_agrees_with_fp32_and_is_cached(bundle, scene, tmp_path, cache,
                                             monkeypatch) -> None:
    pytest.importorskip("nncf")
    lines: list[str] = []
    fp32 = PredictOptions(tile=64, runtime=RuntimeOptions(backend="openvino", threads=1))
    int8 = PredictOptions(tile=64, runtime=RuntimeOptions(precision="int8", threads=1))
    predict_scene(scene, bundle, tmp_path / "fp32.tif", fp32)
    predict_scene(scene, bundle, tmp_path / "int8.tif", int8, notify=lines.append)
    assert len(lines) == 1 and lines[0].startswith("int8: agrees with fp32 on "), lines
    a, b = _classes(tmp_path / "fp32.tif"), _classes(tmp_path / "int8.tif")
    assert (a == b).mean() >= 0.98
    graph, weights = sorted((cache / "int8").iterdir(), key=lambda p: p.suffix != ".xml")
    assert (graph.suffix, weights.suffix, weights.stem) == (".xml", ".bin", graph.stem)
    stamp = graph.stat().st_mtime_ns

    def no_quantizing(*args, **kwargs):
        raise AssertionError("quantized again")

    monkeypatch.setattr(quantize, "quantize_graph", no_quantizing)
    predict_scene(scene, bundle, tmp_path / "int8b.tif", int8)
    assert graph.stat().st_mtime_ns == stamp  # reused, verified, not re-quantized
    np.testing.assert_array_equal(b, _classes(tmp_path / "int8b.tif"))

    # a graph recorded for other scene statistics is never reused: quantized again
    import openvino

    model = openvino.Core().read_model(str(graph))
    model.set_rt_info("[[0.0]]", quantize.STATS_KEY)
    openvino.save_model(model, str(tmp_path / "other.xml"), compress_to_fp16=False)
    (tmp_path / "other.xml").replace(graph)  # the weights stay: OpenVINO maps them
    with pytest.raises(AssertionError, match="quantized again"):
        predict_scene(scene, bundle, tmp_path / "int8c.tif", int8)


def test_calibration_crops_cover_the_valid_pixels_of_every_window(monkeypatch) -> None:
    monkeypatch.setattr(quantize, "CALIBRATION_SIDE", 50)  # rounded up to the multiple: 64
    x = np.arange(2 * 3 * 96 * 160, dtype=np.float32).reshape(2, 3, 96, 160)
    valid = np.ones((2, 96, 160), dtype=bool)
    valid[1] = False  # the second window holds no data
    valid[1, 90, 150] = True  # but one pixel, in its last crop
    crops = quantize.calibration_crops(x, valid, 32)
    # 2 rows (0, 32) x 3 columns (0, 48, 96) of 64² crops in the first window, one in the second
    assert crops.shape == (7, 3, 64, 64)
    np.testing.assert_array_equal(crops[4], x[0, :, 32:96, 48:112])
    np.testing.assert_array_equal(crops[-1], x[1, :, 32:96, 96:160])
    covered = {(int(c[0, 0, 0]) // 160, int(c[0, 0, 0]) % 160) for c in crops[:6]}
    assert covered == {(i, j) for i in (0, 32) for j in (0, 48, 96)}
    small = quantize.calibration_crops(x[:, :, :32, :64], valid[:, :32, :64], 32)
    assert small.shape == (1, 3, 32, 64)  # windows no larger than a crop stay whole


def test_any_window_graph_runs_windows_of_other_sizes(bundle, cache) -> None:
    """int8 calibrates on crops smaller than the windows it runs: one graph for every size."""
    pytest.importorskip("onnxscript")
    from rsseg.inference.onnx_cache import any_window_graph, ort_session
    from rsseg.models.bundle import load_bundle

    net, meta = load_bundle(bundle)
    session = ort_session(any_window_graph(bundle, net, meta), 1)
    for shape in [(1, 3, 32, 96), (2, 3, 160, 64)]:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        (got,) = session.run(None, {"input": x.numpy()})
        with torch.inference_mode():
            np.testing.assert_allclose(got, net(x).numpy(), atol=1e-4)
    assert [p.name.split("-")[1] for p in (cache / "onnx").iterdir()] == ["any"]


def test_int8_of_a_graph_right_for_one_window_size_calibrates_whole_windows(
        bundle, scene, tmp_path, cache, monkeypatch) -> None:
    """PSPNet's pyramid pooling exports right for the traced size only: int8 then exports the
    prediction window's graph and calibrates on the whole windows."""
    pytest.importorskip("nncf")
    from rsseg.inference.onnx_cache import GraphMismatch

    def one_size_only(*args, **kwargs):
        raise GraphMismatch("the ONNX graph differs from PyTorch")

    calibrated_on = []
    quantize_graph = quantize.quantize_graph

    def recording(fp32, inputs, x, *args, **kwargs):
        calibrated_on.append(inputs.shape[2:])
        return quantize_graph(fp32, inputs, x, *args, **kwargs)

    monkeypatch.setattr(quantize, "any_window_graph", one_size_only)
    monkeypatch.setattr(quantize, "quantize_graph", recording)
    monkeypatch.setattr(quantize, "CALIBRATION_SIDE", 32)  # crops would be 32²
    int8 = PredictOptions(tile=64, runtime=RuntimeOptions(precision="int8", threads=1))
    predict_scene(scene, bundle, tmp_path / "int8.tif", int8)
    assert calibrated_on == [(64, 64)]
    assert [p.name.split("-")[1] for p in (cache / "onnx").iterdir()] == ["64x64"]


def test_int8_keeps_convolutions_float_only_where_agreement_needs_it(bundle, scene, tmp_path,
                                                                     monkeypatch) -> None:
    """Every convolution int8 first (float ones are slow without VNNI); below the agreement
    needed, the first and last stay float, then more of the last."""
    pytest.importorskip("nncf")
    agreements = iter([0.5, 0.98, 0.995])  # no float convolution, first + last, first + last 2
    monkeypatch.setattr(quantize, "_agreement", lambda *args: next(agreements))
    lines: list[str] = []
    int8 = PredictOptions(tile=64, runtime=RuntimeOptions(precision="int8", threads=1))
    predict_scene(scene, bundle, tmp_path / "int8.tif", int8, notify=lines.append)
    assert lines == ["int8: agrees with fp32 on 99.50% of the verification windows' valid pixels "
                     "(3 convolution(s) kept float)"]
    monkeypatch.setattr(quantize, "_agreement", lambda *args: 0.999)
    lines.clear()
    predict_scene(scene, bundle, tmp_path / "int8b.tif",
                  PredictOptions(tile=32, runtime=int8.runtime), notify=lines.append)
    assert lines[0].endswith("(0 convolution(s) kept float)"), lines


def test_int8_is_verified_on_windows_it_was_not_calibrated_on(bundle, scene, tmp_path,
                                                             monkeypatch) -> None:
    """A sample of the scene's windows is split (even windows calibrate, odd ones verify); a
    sample holding every window is the scene itself: calibrated and verified on all."""
    pytest.importorskip("nncf")
    seen = []
    quantize_graph = quantize.quantize_graph

    def recording(fp32, inputs, x, *args, **kwargs):
        seen.append((inputs.copy(), x.copy()))
        return quantize_graph(fp32, inputs, x, *args, **kwargs)

    monkeypatch.setattr(quantize, "quantize_graph", recording)
    for tile in (32, 64):  # 32: 25 windows, 16 sampled; 64: 4 windows, all sampled
        int8 = PredictOptions(tile=tile, runtime=RuntimeOptions(precision="int8", threads=1))
        predict_scene(scene, bundle, tmp_path / f"int8_{tile}.tif", int8)
    (calibrated, verified), (whole, verified_whole) = seen
    # windows smaller than CALIBRATION_SIDE are not cropped: inputs are the windows themselves
    assert len(calibrated) == len(verified) == 8
    assert not any(np.array_equal(window, crop) for window in verified for crop in calibrated)
    assert len(whole) == 4
    np.testing.assert_array_equal(whole, verified_whole)


def test_int8_refused_below_agreement_unless_auto(bundle, scene, tmp_path, run_cli,
                                                  monkeypatch) -> None:
    pytest.importorskip("nncf")
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 1.01)  # nothing can reach it
    args = ("predict", scene, "--model", bundle, "--tile", 64, "--threads", 1)
    refused = run_cli(*args, "--out", tmp_path / "int8.tif", "--precision", "int8")
    assert refused.exit_code == 1 and refused.stderr.count("\n") == 1, refused
    assert "int8 agrees with fp32 on only" in refused.stderr
    assert not (tmp_path / "int8.tif").exists() and not (tmp_path / "cache" / "int8").exists()
    auto = run_cli(*args, "--out", tmp_path / "auto.tif", "--precision", "auto")
    assert auto.exit_code == 0, auto
    assert "Warning: --precision auto: fp32 (openvino), not int8: int8 agrees" in auto.stderr
    assert run_cli(*args, "--out", tmp_path / "fp32.tif").exit_code == 0
    np.testing.assert_array_equal(_classes(tmp_path / "auto.tif"),
                                  _classes(tmp_path / "fp32.tif"))


def test_nncf_is_imported_without_its_usage_telemetry() -> None:
    """rsseg makes no network calls: NNCF's telemetry is on unless NNCF_CI is set (or pytest is
    imported, so this runs in a fresh interpreter)."""
    pytest.importorskip("nncf")
    import subprocess
    import sys

    code = ("import os; os.environ.pop('NNCF_CI', None); from rsseg.inference import quantize; "
            "quantize._require_nncf(); import nncf.telemetry.wrapper as w; "
            "print(type(w.telemetry).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "MagicMock", out


def test_int8_calibration_on_an_all_nodata_scene_is_one_line(bundle, geotiff_factory, tmp_path,
                                                            run_cli) -> None:
    pytest.importorskip("nncf")
    empty = geotiff_factory("empty.tif", np.zeros((3, 40, 40), dtype=np.uint8), nodata=0)
    result = run_cli("predict", empty, "--model", bundle, "--out", tmp_path / "p.tif",
                     "--precision", "int8")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result
    assert "every window read for calibration is nodata" in result.stderr


def test_tile_auto_keeps_the_bundle_tile_for_image_pooling_models() -> None:
    """DeepLabV3+'s ASPP pools over the whole window: --tile auto must not enlarge it."""
    from rsseg.models.bundle import BundleMeta
    from rsseg.pipelines.predict import PredictOptions, predict_windows
    meta = BundleMeta.model_construct(
        model=ModelSpec(arch="deeplabv3plus", encoder="resnet18", in_channels=3, classes=3),
        tile=96, overlap=16)
    tile, overlap, _, line = predict_windows(meta, PredictOptions(), 2000, 2000)
    assert (tile, overlap) == (96, 16)
    assert "keeps the bundle's tile for deeplabv3plus" in line
