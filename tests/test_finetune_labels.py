"""``rsseg finetune --labels A --labels B``: several label files joined; unlabelled rows counted."""

from __future__ import annotations

import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine

from rsseg.classes import IGNORE
from rsseg.io.raster import open_scene
from rsseg.labels import load_label_files
from rsseg.models.bundle import read_meta

TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_500_000.0)  # conftest's default grid
TINY = ["model.arch=pixel", "data.crop_size=16", "data.val_fraction=0", "trainer.batch_size=2",
        "trainer.steps_per_epoch=1", "trainer.epochs=1", "trainer.accelerator=cpu", "tile=32",
        "overlap=8"]


def _points(path: Path, pixels: list[tuple[int, int]], column: str, values: list) -> Path:
    xy = [TRANSFORM * (c + 0.5, r + 0.5) for r, c in pixels]
    gpd.GeoDataFrame({column: values}, geometry=shapely.points(xy),
                     crs="EPSG:32618").to_file(path)
    return path


@pytest.fixture
def scene(geotiff_factory) -> Path:
    pixels = np.random.default_rng(0).normal(10, 5, (4, 40, 40)).astype(np.float32)
    return geotiff_factory("scene.tif", pixels)


def test_files_join_their_classes_and_later_files_win(scene: Path, tmp_path: Path,
                                                      geotiff_factory) -> None:
    raster = np.zeros((40, 40), np.uint8)
    raster[2, 3], raster[5, 5] = 1, 2
    labels_tif = geotiff_factory("old.tif", raster, nodata=0)
    new = _points(tmp_path / "new.gpkg", [(5, 5), (9, 9), (12, 12), (20, 20)], "label",
                  ["class 1", "sand", None, None])
    with open_scene(scene) as src:
        info = src.info
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = load_label_files([labels_tif, new], info, column="label")
    messages = [str(w.message) for w in caught]
    assert "new.gpkg: 2 of 4 rows have no label; skipped" in messages
    assert "new.gpkg: 1 pixel(s) labelled otherwise by an earlier --labels file; new.gpkg's " \
           "class kept" in messages
    assert got.classes.ids == (1, 2, 3) and got.classes.name_of(3) == "sand"
    assert (got.labels[2, 3], got.labels[5, 5], got.labels[9, 9]) == (1, 1, 3)
    assert got.labelled == 3 and got.labels[12, 12] == IGNORE


def test_finetune_takes_several_label_files(scene: Path, tmp_path: Path, run_cli) -> None:
    old = _points(tmp_path / "old.gpkg", [(3, 3), (30, 30)], "label", ["water", "field"])
    new = _points(tmp_path / "to_label.gpkg", [(10, 10), (20, 25), (35, 5), (15, 30)],
                  "label", ["forest", None, "water", None])
    result = run_cli("finetune", "--scene", scene, "--labels", old, "--labels", new,
                     "--label-column", "label", "--out", tmp_path / "ft",
                     *[a for item in TINY for a in ("--set", item)])
    assert result.exit_code == 0, result.stderr
    assert "Warning: to_label.gpkg: 2 of 4 rows have no label; skipped" in result.stderr
    meta = read_meta(tmp_path / "ft" / "model.rsseg")
    assert [c.name for c in meta.classes] == ["field", "forest", "water"]  # names of both files


def test_no_label_in_any_file_is_one_error(scene: Path, tmp_path: Path, run_cli) -> None:
    a = _points(tmp_path / "a.gpkg", [(3, 3)], "label", [None])
    b = _points(tmp_path / "b.gpkg", [(4, 4)], "label", [None])
    result = run_cli("finetune", "--scene", scene, "--labels", a, "--labels", b,
                     "--label-column", "label", "--out", tmp_path / "ft",
                     *[x for item in TINY for x in ("--set", item)])
    assert result.exit_code == 1
    assert "Error: no labelled pixel inside scene.tif in any of the 2 label files" \
        in result.stderr
    assert not (tmp_path / "ft").exists()
