"""``rsseg suggest --cluster``: each scene's passes on a Dask worker of a 2-worker LocalCluster,
the one global ranking here: the same points as without a cluster."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import cloudpickle
import geopandas as gpd
import numpy as np
import pytest
from dask.distributed import Client

from rsseg.distributed import ClusterSpec, connect
from rsseg.io.raster import SceneInfo
from rsseg.pipelines.suggest import SuggestOptions, suggest_points

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/

NODATA = -9999.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Client]:
    """The LocalCluster of ``--cluster local:2``, reached by its address."""
    with connect(ClusterSpec(workers=2)) as client:
        yield client


def _scenes(geotiff_factory, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    return [geotiff_factory(f"s{i}.tif", rng.normal(10, 6, (4, 30 + 4 * i, 40))
                            .astype(np.float32), nodata=NODATA) for i in range(count)]


def _labelled(folder: Path, info: SceneInfo) -> np.ndarray:
    """Pixels (5, 5) and (20, 30) of every scene are labelled; the process that asks says so."""
    (folder / f"{os.getpid()}_{info.path.stem}").touch()
    mask = np.zeros((info.height, info.width), dtype=bool)
    mask[5, 5] = mask[20, 30] = True
    return mask


@pytest.mark.parametrize("strategy", ["hybrid", "uncertainty"])
def test_the_scenes_run_on_the_workers_and_give_the_same_points(
        strategy: str, cluster: Client, geotiff_factory, rgbn_bundle: Path,
        tmp_path: Path) -> None:
    scenes = _scenes(geotiff_factory, 4)
    seen = tmp_path / "seen"
    seen.mkdir()
    options = SuggestOptions(n=20, strategy=strategy, seed=2, min_distance=20)
    here = suggest_points(scenes, rgbn_bundle, options, labelled=partial(_labelled, seen))
    assert {p.name.split("_")[0] for p in seen.iterdir()} == {str(os.getpid())}
    for p in seen.iterdir():
        p.unlink()
    notes: list[str] = []
    there = suggest_points(scenes, rgbn_bundle,
                           SuggestOptions(**{**options.__dict__,
                                             "cluster": cluster.scheduler.address}),
                           labelled=partial(_labelled, seen), notify=notes.append)
    assert [n.split(",")[0] for n in notes] == ["Dask cluster: 2 worker(s)"]
    pids = {p.name.split("_")[0] for p in seen.iterdir()}
    assert str(os.getpid()) not in pids and len(list(seen.iterdir())) == 4  # once per scene
    for field in ("scene", "row", "col", "predicted"):
        np.testing.assert_array_equal(getattr(there.points, field), getattr(here.points, field))
    assert set(here.points.scene.tolist()) == {0, 1, 2, 3}  # the ranking spans the scenes
    assert here.eligible == there.eligible == sum(30 * 40 + 160 * i for i in range(4)) - 8


def test_the_command_on_a_cluster_and_a_failing_scene(cluster: Client, geotiff_factory,
                                                      rgbn_bundle: Path, tmp_path: Path,
                                                      run_cli) -> None:
    scenes = _scenes(geotiff_factory, 3)
    out = tmp_path / "many.gpkg"
    result = run_cli("suggest", *scenes, "--model", rgbn_bundle, "--out", out, "--n", 9,
                     "--cluster", cluster.scheduler.address)
    assert result.exit_code == 0, result.stderr
    assert "Dask cluster: 2 worker(s)" in result.stdout
    frame = gpd.read_file(out)
    assert len(frame) == 9 and set(frame["scene"]) <= {"s0.tif", "s1.tif", "s2.tif"}
    empty = geotiff_factory("empty.tif", np.full((4, 8, 8), NODATA, np.float32), nodata=NODATA)
    bad = run_cli("suggest", *scenes, empty, "--model", rgbn_bundle, "--out",
                  tmp_path / "bad.gpkg", "--cluster", cluster.scheduler.address)
    errors = [line for line in bad.stderr.splitlines() if line.startswith("Error:")]
    assert bad.exit_code == 1 and len(errors) == 1 and "every pixel is nodata" in errors[0]
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad.gpkg").exists()
