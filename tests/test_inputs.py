"""Scene arguments: files, folders, patterns, list files — for ``predict`` and ``tile``."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from rsseg.errors import InputError
from rsseg.io.inputs import expand_scenes, is_collection


@pytest.fixture
def scenes(geotiff_factory) -> dict[str, Path]:
    pixels = np.arange(3 * 20 * 20, dtype=np.uint16).reshape(3, 20, 20) % 97 + 1
    return {name: geotiff_factory(name, pixels, nodata=0)
            for name in ("a.tif", "dir/b.tif", "dir/c.TIF", "deep/x/d.tif", "deep/y/e.vrt")}


def test_every_form_expands_in_order_each_scene_once(scenes, tmp_path, monkeypatch) -> None:
    (tmp_path / "dir" / "b.tif.aux.xml").write_text("<PAMDataset/>")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "all.txt").write_text("# comment\n../a.tif\n\n../deep/**/*.tif\n")
    monkeypatch.chdir(tmp_path)
    found = expand_scenes(["dir", "lists/all.txt", "a.tif", "deep/*/e.vrt"])
    assert [s.path.relative_to(tmp_path) if s.path.is_absolute() else s.path
            for s in found] == [Path("dir/b.tif"), Path("dir/c.TIF"), Path("lists/../a.tif"),
                                Path("lists/../deep/x/d.tif"), Path("deep/y/e.vrt")]
    assert [s.name for s in found] == ["b", "c", "a", "d", "e"]


def test_collections_are_told_from_one_scene(scenes, tmp_path) -> None:
    (tmp_path / "l.txt").write_text("a.tif\n")
    assert not is_collection(scenes["a.tif"]) and not is_collection(tmp_path / "nope.tif")
    assert is_collection(tmp_path / "dir") and is_collection(tmp_path / "l.txt")
    assert is_collection(tmp_path / "*.tif")


@pytest.mark.parametrize(("args", "message"), [
    (["nope.tif"], "nope.tif: no such file or folder"),
    (["*.jp2"], "matches no raster file"),
    (["empty"], "no rasters in this folder"),
    (["outer.txt"], "outer.txt, line 1: .*inner.txt: a list file inside a list file"),
])
def test_bad_arguments_are_one_line_errors(args, message, scenes, tmp_path,
                                           monkeypatch) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "inner.txt").write_text("a.tif\n")
    (tmp_path / "outer.txt").write_text("inner.txt\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=message):
        expand_scenes(args)


def test_tile_takes_folders_patterns_and_lists(scenes, tmp_path, run_cli,
                                               monkeypatch) -> None:
    (tmp_path / "list.txt").write_text("a.tif\n")
    monkeypatch.chdir(tmp_path)
    result = run_cli("tile", "dir", "list.txt", "deep/**/*.tif", "--out", "tiles", "--size", 10)
    assert result.exit_code == 0, result
    with open(tmp_path / "tiles" / "manifest.csv", newline="") as f:
        sources = [Path(row["source"]).name for row in csv.DictReader(f)]
    assert sources == [n for n in ("b.tif", "c.TIF", "a.tif", "d.tif") for _ in range(4)]
