"""``--cluster``: scenes as tasks on a Dask LocalCluster of 2 worker processes."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import rasterio
from dask.distributed import Client, LocalCluster, get_task_stream

from rsseg.distributed import ClusterSpec, parse_cluster
from rsseg.errors import ConfigError
from rsseg.pipelines.batch import BatchOptions, predict_batch
from rsseg.pipelines.predict import PredictOptions, predict_scene

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/


@pytest.fixture(scope="module")
def cluster() -> Iterator[Client]:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR) as local, Client(local) as client:
        yield client


def _scenes(geotiff_factory, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    return [geotiff_factory(f"s{i}.tif", rng.integers(1, 30, (4, 40 + i, 50)).astype(np.uint16),
                            nodata=0) for i in range(count)]


def _classes(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _count_loads() -> None:
    """On a worker: count the bundle loads of this process from now on."""
    from rsseg.pipelines import batch

    real = batch.load_bundle
    batch._BUNDLES.clear()
    batch._test_loads = 0

    def counting(path):
        batch._test_loads += 1
        return real(path)

    batch.load_bundle = counting
    batch._test_real_load = real


def _loads() -> int:
    """On a worker: the loads counted, the real loader back in place."""
    from rsseg.pipelines import batch

    batch.load_bundle = batch._test_real_load
    return batch._test_loads


def test_scenes_run_on_the_workers_with_one_model_load_each(cluster, geotiff_factory,
                                                            rgbn_bundle, tmp_path,
                                                            run_cli) -> None:
    scenes = _scenes(geotiff_factory, 5)
    scenes[2].write_bytes(b"corrupt")
    cluster.run(_count_loads)
    result = run_cli("predict", *scenes, "--model", rgbn_bundle, "--out-dir", tmp_path / "out",
                     "--cluster", cluster.scheduler.address)
    loads = cluster.run(_loads)
    assert result.exit_code == 1 and "1 of 5 scene(s) failed" in result.stderr, result
    assert "Dask cluster: 2 worker(s)" in result.stdout
    # the workers did the work, each loading the model at most once for its scenes
    assert set(loads.values()) <= {0, 1} and sum(loads.values()) >= 1, loads
    for scene in scenes[:2] + scenes[3:]:
        predict_scene(scene, rgbn_bundle, tmp_path / "one.tif", PredictOptions(overwrite=True))
        np.testing.assert_array_equal(_classes(tmp_path / "out" / f"{scene.stem}_pred.tif"),
                                      _classes(tmp_path / "one.tif"))
    rerun = run_cli("predict", *scenes, "--model", rgbn_bundle, "--out-dir", tmp_path / "out",
                    "--cluster", cluster.scheduler.address)
    assert "4 of 5 scene(s) already predicted" in rerun.stdout


def test_a_flag_error_on_a_worker_stops_the_batch_in_one_line(cluster, geotiff_factory,
                                                              rgbn_bundle, tmp_path,
                                                              run_cli) -> None:
    scenes = _scenes(geotiff_factory, 2)
    result = run_cli("predict", *scenes, "--model", rgbn_bundle, "--out-dir", tmp_path / "out",
                     "--cluster", cluster.scheduler.address, "--tile", "0")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result
    assert "--tile 0 is not a positive multiple" in result.stderr


def test_an_unreachable_scheduler_is_one_line_within_seconds(geotiff_factory, rgbn_bundle,
                                                             tmp_path, run_cli) -> None:
    scenes = _scenes(geotiff_factory, 2)
    start = time.monotonic()
    result = run_cli("predict", *scenes, "--model", rgbn_bundle, "--out-dir", tmp_path / "out",
                     "--cluster", "tcp://127.0.0.1:1")
    assert time.monotonic() - start < 10
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:1" in result.stderr
    assert not (tmp_path / "out").exists()  # not even an empty folder


def test_cluster_flags_parse() -> None:
    assert parse_cluster(None) is None
    assert parse_cluster("local:3") == ClusterSpec(workers=3)
    assert parse_cluster("tcp://10.0.0.1:8786") == ClusterSpec(address="tcp://10.0.0.1:8786")
    assert ClusterSpec(address="tcp://h:1").threads_per_worker is None
    assert ClusterSpec(workers=1).threads_per_worker >= 1
    for bad in ("local:0", "local:x", "tcp://", "8786"):
        with pytest.raises(ConfigError):
            parse_cluster(bad)


def _tile_set(folder: Path) -> tuple[str, str, list[np.ndarray]]:
    """A tile set's manifest, stats.json and tiles, in order."""
    tiles = [rasterio.open(t).read() for t in sorted((folder / "tiles").iterdir())]
    return ((folder / "manifest.csv").read_text(), (folder / "stats.json").read_text(), tiles)


@pytest.mark.parametrize("mode", [["--random", 7], ["--stride", 6]])
def test_tile_on_the_cluster_writes_the_tile_set_of_one_process(mode, cluster, geotiff_factory,
                                                                tmp_path, run_cli) -> None:
    scenes = _scenes(geotiff_factory, 3)
    flags = ["--size", 12, "--max-nodata", 0.0, *mode]
    here = run_cli("tile", *scenes, "--out", tmp_path / "here", *flags)
    with get_task_stream(cluster) as stream:
        there = run_cli("tile", *scenes, "--out", tmp_path / "there", *flags,
                        "--cluster", cluster.scheduler.address)
    assert here.exit_code == there.exit_code == 0, (here, there)
    assert sum("_tile_scene" in task["key"] for task in stream.data) == 3  # one per scene
    manifest, stats, tiles = _tile_set(tmp_path / "here")
    assert _tile_set(tmp_path / "there")[:2] == (manifest, stats)
    assert len(tiles) > 10
    for a, b in zip(tiles, _tile_set(tmp_path / "there")[2], strict=True):
        np.testing.assert_array_equal(a, b)
    assert sorted(p.name for p in (tmp_path / "there").iterdir()) == [
        "manifest.csv", "stats.json", "tiles"]


def test_tile_starts_its_own_local_cluster(geotiff_factory, tmp_path, run_cli) -> None:
    scenes = _scenes(geotiff_factory, 2)
    result = run_cli("tile", *scenes, "--out", tmp_path / "tiles", "--size", 20,
                     "--cluster", "local:1")
    assert result.exit_code == 0, result
    assert "Wrote 15 tiles" in result.stdout  # 2x3 + 3x3 windows of 20 px


def _polygons(path: Path) -> list[tuple[int, str]]:
    import pyogrio

    frame = pyogrio.read_dataframe(path)
    return sorted(zip(frame.class_id.tolist(), frame.geometry.to_wkt().tolist(), strict=True))


def test_vectorize_on_the_cluster_writes_the_polygons_of_one_process(cluster, geotiff_factory,
                                                                     tmp_path, run_cli) -> None:
    rng = np.random.default_rng(3)
    rasters = [geotiff_factory(f"c{i}.tif", rng.integers(0, 3, (24, 30 + i)).astype(np.uint8),
                               nodata=255) for i in range(3)]
    here = run_cli("vectorize", *rasters, "--out-dir", tmp_path / "here")
    with get_task_stream(cluster) as stream:
        there = run_cli("vectorize", *rasters, "--out-dir", tmp_path / "there",
                        "--cluster", cluster.scheduler.address)
    assert here.exit_code == there.exit_code == 0, (here, there)
    assert "Dask cluster: 2 worker(s)" in there.stdout
    assert sum("vectorize_job" in task["key"] for task in stream.data) == 3  # one per raster
    for raster in rasters:
        polygons = _polygons(tmp_path / "here" / f"{raster.stem}.gpkg")
        assert len(polygons) > 10
        assert _polygons(tmp_path / "there" / f"{raster.stem}.gpkg") == polygons


def test_tile_bad_cluster_flags_are_one_line_and_nothing_written(geotiff_factory, tmp_path,
                                                                 run_cli) -> None:
    scenes = _scenes(geotiff_factory, 2)
    for flag, message in (("local:0", "local workers must be at least 1"),
                          ("tcp://127.0.0.1:1", "cannot reach the Dask scheduler")):
        start = time.monotonic()
        result = run_cli("tile", *scenes, "--out", tmp_path / "tiles", "--cluster", flag)
        assert time.monotonic() - start < 10
        assert result.exit_code == 1 and result.stderr.count("\n") == 1, result
        assert message in result.stderr
        assert not (tmp_path / "tiles").exists()


def _die_once(marker: str) -> None:
    """On a worker: the first scene any patched worker starts kills its process."""
    from rsseg.pipelines import batch

    real = batch.predict_scene

    def dying(*args, **kwargs):
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return real(*args, **kwargs)
        os._exit(1)

    batch.predict_scene = dying
    batch._test_real_predict = real


def _undo_die_once() -> None:
    from rsseg.pipelines import batch

    if hasattr(batch, "_test_real_predict"):
        batch.predict_scene = batch._test_real_predict


def test_a_worker_killed_mid_batch_costs_one_task_not_the_batch(cluster, geotiff_factory,
                                                                rgbn_bundle, tmp_path) -> None:
    scenes = _scenes(geotiff_factory, 4)
    marker = tmp_path / "died"
    cluster.run(_die_once, str(marker))
    try:
        summary = predict_batch(scenes, rgbn_bundle, tmp_path / "out",
                                BatchOptions(cluster=cluster.scheduler.address))
    finally:
        cluster.run(_undo_die_once)
    assert marker.exists()  # a worker did die
    assert [r.status for r in summary.results] == ["ok"] * 4
    for scene in scenes:
        predict_scene(scene, rgbn_bundle, tmp_path / "one.tif", PredictOptions(overwrite=True))
        np.testing.assert_array_equal(_classes(tmp_path / "out" / f"{scene.stem}_pred.tif"),
                                      _classes(tmp_path / "one.tif"))


@pytest.fixture(scope="module")
def unet_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random UNet (spatial context, so the blending of overlapping windows matters)."""
    import torch

    from rsseg.models.bundle import BundleMeta, save_bundle
    from rsseg.models.factory import ModelSpec, build_model

    torch.manual_seed(0)
    spec = ModelSpec(arch="unet", encoder="resnet18", in_channels=4, classes=3,
                     kwargs={"encoder_depth": 3, "decoder_channels": (16, 8, 8)})
    meta = BundleMeta(
        model=spec, tile=32, overlap=8,
        bands=[{"name": n, "mean": 15.0, "std": 8.0} for n in ("red", "green", "blue", "nir")],
        classes=[{"id": 1, "name": "water", "color": (0, 0, 255)},
                 {"id": 2, "name": "field", "color": (255, 255, 0)},
                 {"id": 5, "name": "forest", "color": (0, 128, 0)}])
    return save_bundle(tmp_path_factory.mktemp("unet") / "unet.rsseg", build_model(spec), meta)


def test_strips_cover_every_window_row_once() -> None:
    from rsseg.inference.sliding import seam_fits, strips
    from rsseg.tiling.blend import layout

    lay = layout(150, 60, 32, 8, 8)
    pieces = strips(lay, 2000)
    assert len(pieces) == 5 and [i for p in pieces for i in p] == list(range(len(lay.rows)))
    assert strips(lay, 10**9) == [range(len(lay.rows))]
    assert all(seam_fits(lay, piece.start) for piece in pieces[1:])
    # overlap 24 of 32: the rows window row a-1 shares with a reach past the rows a finishes,
    # so strips cannot meet there (only before the last, shifted-back row): the scene stays whole
    wide = layout(150, 60, 32, 24, 8)
    assert not any(seam_fits(wide, a) for a in range(1, len(wide.rows) - 1))
    assert strips(wide, 2000) == [range(len(wide.rows))]


@pytest.mark.parametrize(("overlap", "max_pixels"), [(8, 2000), (16, 1500), (0, 2500)])
def test_strips_with_joined_seams_equal_the_whole_scene(unet_bundle, geotiff_factory, tmp_path,
                                                        overlap, max_pixels) -> None:
    """Every strip predicts only its own windows; its rows, with the seams of neighbouring
    strips joined, are the whole scene's classes (to float32 summation order)."""
    from rsseg.inference.sliding import strips
    from rsseg.models.bundle import read_meta
    from rsseg.pipelines.predict import predict_strip, scene_layout, strip_rows

    rng = np.random.default_rng(3)
    pixels = rng.integers(1, 30, (4, 150, 60)).astype(np.uint16)
    pixels[:, 60:70, :] = 0  # nodata across a seam
    scene = geotiff_factory("s.tif", pixels, nodata=0)
    options = PredictOptions(tile=32, overlap=overlap)
    meta = read_meta(unet_bundle)
    pieces = strips(scene_layout(scene, meta, options), max_pixels)
    assert len(pieces) >= 3
    parts = [predict_strip(scene, unet_bundle, options, rows) for rows in pieces]
    assert parts[0].above is None and parts[-1].below is None
    assert [p.above is not None for p in parts[1:]] == [p.below is not None for p in parts[:-1]]
    assert overlap == 0 or all(p.above is not None for p in parts[1:])
    rows = dict(strip_rows(parts, meta))
    got = np.concatenate([rows[r] for r in sorted(rows)])
    out = predict_scene(scene, unet_bundle, tmp_path / "one.tif", options)
    assert got.shape == (150, 60)
    assert (got == _classes(out.out)).mean() >= 0.9999


def test_a_large_scene_is_split_into_strips_over_the_workers(cluster, geotiff_factory,
                                                             unet_bundle, tmp_path,
                                                             run_cli) -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(1, 30, (4, 150, 60)).astype(np.uint16)
    pixels[:, 40:47, 10:30] = 0  # some nodata
    scene = geotiff_factory("big.tif", pixels, nodata=0)
    with get_task_stream(cluster) as stream:
        result = run_cli("predict", scene, "--model", unet_bundle, "--out-dir", tmp_path / "out",
                         "--cluster", cluster.scheduler.address, "--split-mpx", 0.002,
                         "--tile", 32)
    assert result.exit_code == 0, result
    strips = [t for t in stream.data if "predict_task" in t["key"]]
    assert len(strips) == 5 and len({t["worker"] for t in strips}) == 2, strips
    predict_scene(scene, unet_bundle, tmp_path / "one.tif", PredictOptions(tile=32))
    split, one = _classes(tmp_path / "out" / "big_pred.tif"), _classes(tmp_path / "one.tif")
    assert split.shape == one.shape == (150, 60)
    assert (split == one).mean() >= 0.9999
    assert (tmp_path / "out" / "big_pred.qml").is_file()
    assert "ok" in (tmp_path / "out" / "summary.csv").read_text()
    with rasterio.open(tmp_path / "out" / "big_pred.tif") as a, \
            rasterio.open(tmp_path / "one.tif") as b:
        assert a.profile == b.profile and a.tags() == b.tags()


def test_split_mpx_must_be_positive(geotiff_factory, rgbn_bundle, tmp_path, run_cli) -> None:
    scenes = _scenes(geotiff_factory, 2)
    result = run_cli("predict", *scenes, "--model", rgbn_bundle, "--out-dir", tmp_path / "out",
                     "--split-mpx", 0)
    assert result.exit_code == 1 and "--split-mpx 0.0 must be above 0" in result.stderr, result


WORKER_SCRIPT = '''
import json
import os
import sys

def state(dask_worker):
    callbacks = dask_worker.periodic_callbacks
    return {"loaded": sorted(m for m in ("torch", "rsseg.pipelines.batch") if m in sys.modules),
            "profiler": any(name.startswith("profile") for name in callbacks),
            "heartbeat": "heartbeat" in callbacks,
            "environ": {k: os.environ.get(k)
                        for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")}}

if __name__ == "__main__":
    from rsseg.distributed import connect, parse_cluster, warm_local_workers

    warm_local_workers(sys.argv[1], ("rsseg.pipelines.batch",))
    with connect(parse_cluster("local:1")) as client:
        print(json.dumps(list(client.run(state).values())))
'''


def test_local_workers_start_ready(tmp_path: Path) -> None:
    """What `local:N` workers start with, in a fresh interpreter each (the fork server lives as
    long as the process that started it):
    - `rsseg predict --cluster local:N` starts the workers' fork server, importing torch and the
      model code, before loading torch itself (warmed): the workers start with them imported
      instead of importing them on their first task (~5 s each on 2 cores);
    - no statistical profiler (stack samples every 10 ms cost local:2 a tenth of its speed on 2
      cores) and no MALLOC_TRIM_THRESHOLD_=65536 (every scene ~20 % slower in a worker); Dask's
      other pre-spawn variables stay, the environment's own value winning."""
    import json
    import subprocess

    script = tmp_path / "workers.py"
    script.write_text(WORKER_SCRIPT)
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    expected = {"MALLOC_TRIM_THRESHOLD_": None,
                "OMP_NUM_THREADS": environ.get("OMP_NUM_THREADS", "1")}
    for cluster, loaded in (("local:1", ["rsseg.pipelines.batch", "torch"]),
                            ("tcp://not-warmed:8786", [])):
        run = subprocess.run([sys.executable, str(script), cluster], capture_output=True,
                             text=True, timeout=120, check=False, env=environ)
        assert run.returncode == 0, run.stderr[-2000:]
        (worker,) = json.loads(run.stdout.strip().splitlines()[-1])
        assert worker == {"loaded": loaded, "profiler": False, "heartbeat": True,
                          "environ": expected}, (cluster, worker)
