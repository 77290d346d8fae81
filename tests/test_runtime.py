"""Inference runtime: precision/backend/threads checks, ONNX Runtime equivalence and its cache,
overlapped I/O helpers."""

from __future__ import annotations

import builtins
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from rsseg.errors import ConfigError
from rsseg.inference import runtime
from rsseg.inference.background import BackgroundWorker, prefetch
from rsseg.inference.onnx_cache import DIGEST_KEY, cache_dir
from rsseg.inference.runtime import RuntimeOptions, TorchRunner, check_runtime
from rsseg.models.bundle import BundleMeta, save_bundle
from rsseg.models.factory import ModelSpec, build_model
from rsseg.pipelines.predict import PredictOptions, predict_scene

CPU = torch.device("cpu")


def _bundle(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    spec = ModelSpec(arch="unet", in_channels=3, classes=3,
                     kwargs={"encoder_depth": 3, "decoder_channels": (16, 8, 8)})
    meta = BundleMeta(model=spec, tile=32, overlap=8,
                      bands=[{"name": n, "mean": 100.0, "std": 40.0} for n in "rgb"],
                      classes=[{"id": k, "name": f"c{k}", "color": (80 * k, 90, 10)}
                               for k in range(3)])
    return save_bundle(path, build_model(spec), meta)


@pytest.fixture
def scene(geotiff_factory) -> Path:
    rng = np.random.default_rng(0)
    return geotiff_factory("scene.tif", rng.integers(1, 255, (3, 70, 50)).astype(np.uint8),
                           nodata=0)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RSSEG_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize(("options", "device", "message"), [
    (RuntimeOptions(precision="fp16"), CPU, "fp16 runs on a GPU only"),
    (RuntimeOptions(threads=0), CPU, "--threads 0 must be at least 1"),
    (RuntimeOptions(threads=-2), CPU, "--threads -2 must be at least 1"),
    (RuntimeOptions(backend="onnxruntime", precision="bf16"), CPU, "onnxruntime runs fp32, not"),
    (RuntimeOptions(backend="onnxruntime", precision="int8"), CPU, "int8 runs with --backend "
                                                                   "openvino only"),
    (RuntimeOptions(backend="onnxruntime"), torch.device("cuda"), "CPU only"),
    (RuntimeOptions(backend="tensorrt"), CPU, "unknown backend 'tensorrt'"),
])
def test_impossible_choices_are_clear_errors(options, device, message) -> None:
    with pytest.raises(ConfigError, match=message):
        check_runtime(options, device)


def test_bf16_refused_without_native_support(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "bf16_supported", lambda device: False)  # as imported there
    with pytest.raises(ConfigError, match="bf16 is not supported natively by this CPU"):
        check_runtime(RuntimeOptions(precision="bf16"), CPU)


def test_bf16_autocast_agrees_with_fp32(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """bf16 autocast (emulated where the CPU lacks it) keeps nearly every argmax of fp32."""
    from rsseg.models.bundle import load_bundle

    net, _ = load_bundle(_bundle(tmp_path / "m.rsseg", seed=1))
    x = np.random.default_rng(2).normal(size=(4, 3, 32, 32)).astype(np.float32)
    fp32 = TorchRunner(net, CPU, "fp32")(x).argmax(1)
    bf16 = TorchRunner(net, CPU, "bf16")(x)
    assert bf16.dtype == torch.bfloat16
    assert (bf16.argmax(1) == fp32).float().mean() > 0.95


def test_threads_are_set_and_restored() -> None:
    before = torch.get_num_threads()
    with runtime.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_graph_backends_match_torch(scene, cache, tmp_path, backend) -> None:
    pytest.importorskip(backend)
    bundle = _bundle(tmp_path / "a.rsseg", seed=0)
    options = PredictOptions(runtime=RuntimeOptions(backend=backend, threads=1))
    predict_scene(scene, bundle, tmp_path / "torch.tif")
    predict_scene(scene, bundle, tmp_path / "graph.tif", options)
    with rasterio.open(tmp_path / "torch.tif") as a, rasterio.open(tmp_path / "graph.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_onnx_graph_is_cached_by_bundle_hash(scene, cache, tmp_path) -> None:
    bundle = _bundle(tmp_path / "a.rsseg", seed=0)
    ort_options = PredictOptions(runtime=RuntimeOptions(backend="onnxruntime", threads=1))
    predict_scene(scene, bundle, tmp_path / "ort.tif", ort_options)
    (graph,) = (cache / "onnx").iterdir()
    stamp = graph.stat().st_mtime_ns
    predict_scene(scene, bundle, tmp_path / "ort2.tif", ort_options)
    assert graph.stat().st_mtime_ns == stamp  # reused, not re-exported

    # A graph of another bundle planted under this bundle's name is never run: re-exported.
    other = _bundle(tmp_path / "b.rsseg", seed=5)
    predict_scene(scene, other, tmp_path / "other.tif", ort_options)
    (other_graph,) = {*(cache / "onnx").iterdir()} - {graph}
    other_graph.write_bytes(graph.read_bytes())
    predict_scene(scene, other, tmp_path / "other2.tif", ort_options)
    import onnx

    digest = {p.key: p.value for p in onnx.load(str(other_graph)).metadata_props}[DIGEST_KEY]
    assert other_graph.name.startswith(digest[:32])
    with rasterio.open(tmp_path / "other.tif") as a, rasterio.open(tmp_path / "other2.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_missing_openvino_names_the_extra_and_auto_falls_back(scene, cache, tmp_path, run_cli,
                                                             monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails as if absent
    bundle = _bundle(tmp_path / "a.rsseg", seed=0)
    args = ("predict", scene, "--model", bundle, "--threads", 1)
    result = run_cli(*args, "--out", tmp_path / "p.tif", "--precision", "int8")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result
    assert ("--precision int8 needs the optional package openvino" in result.stderr
            and "pip install 'rsseg[openvino]'" in result.stderr)
    assert not (tmp_path / "p.tif").exists()
    auto = run_cli(*args, "--out", tmp_path / "auto.tif", "--precision", "auto")
    assert auto.exit_code == 0, auto
    assert "--precision auto: fp32 (torch), not int8: --precision int8 needs" in auto.stderr


def test_cache_folder_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv("RSSEG_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "rsseg"


def test_missing_onnxruntime_names_the_install_command(scene, cache, tmp_path, run_cli,
                                                       monkeypatch) -> None:
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'", name="onnxruntime")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    bundle = _bundle(tmp_path / "a.rsseg", seed=0)
    result = run_cli("predict", scene, "--model", bundle, "--out", tmp_path / "p.tif",
                     "--backend", "onnxruntime")
    assert result.exit_code == 1
    assert "pip install 'rsseg[onnx]'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "p.tif").exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--threads", "0"], "--threads 0 must be at least 1"),
    (["--precision", "fp16", "--device", "cpu"], "fp16 runs on a GPU only"),
])
def test_cli_refuses_bad_runtime_flags(scene, tmp_path, run_cli, flags, message) -> None:
    bundle = _bundle(tmp_path / "a.rsseg", seed=0)
    result = run_cli("predict", scene, "--model", bundle, "--out", tmp_path / "p.tif", *flags)
    assert result.exit_code == 1 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2 and not (tmp_path / "p.tif").exists()


def test_prefetch_runs_ahead_and_reraises() -> None:
    produced = []

    def items():
        for i in range(5):
            produced.append(i)
            yield i
        raise ValueError("broken read")

    got = []
    with pytest.raises(ValueError, match="broken read"):
        for item in prefetch(items(), depth=2):
            if item == 0:
                time.sleep(0.2)
                assert len(produced) >= 2  # the producer ran ahead while we were busy
            got.append(item)
    assert got == [0, 1, 2, 3, 4]


def test_prefetch_stops_its_thread_when_the_consumer_stops() -> None:
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    for item in prefetch(endless(), depth=2):
        if item == 3:
            break
    time.sleep(0.3)
    assert not any(t.name == "rsseg-prefetch" for t in threading.enumerate())


def test_background_worker_runs_in_order_and_reraises() -> None:
    done = []
    with BackgroundWorker(depth=2) as worker:
        for i in range(6):
            worker.submit(done.append, i)
    assert done == list(range(6))

    def fail(i):
        raise OSError(f"disk full at {i}")

    with pytest.raises(OSError, match="disk full at 0"), BackgroundWorker(depth=1) as worker:
        for i in range(4):
            worker.submit(fail, i)


def test_training_precision_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    from rsseg.training import engine

    with pytest.raises(ConfigError, match="16-mixed needs a GPU"):
        engine.check_precision("16-mixed", "cpu")
    monkeypatch.setattr(engine, "bf16_supported", lambda device: False)
    with pytest.warns(UserWarning, match="bf16-mixed runs emulated"):
        engine.check_precision("bf16-mixed", "cpu")
    engine.check_precision("32-true", "cpu")  # nothing to say
