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
    assert not (tmp_path / "out" / "summary.csv").exists()


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
