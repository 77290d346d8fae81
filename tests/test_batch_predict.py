"""``rsseg predict`` over many scenes, in this process: inputs, summary, failures, resume."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from rsseg.errors import Stopped
from rsseg.pipelines import batch
from rsseg.pipelines.batch import BatchOptions, predict_batch
from rsseg.pipelines.predict import PredictOptions, predict_scene

NODATA = 0


def _scene(geotiff_factory, name: str, seed: int, shape: tuple[int, int] = (40, 50),
           x0: float = 500_000.0) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(1, 30, (4, *shape)).astype(np.uint16)
    pixels[:, :3, :4] = NODATA
    return geotiff_factory(name, pixels, nodata=NODATA,
                           transform=Affine(10.0, 0.0, x0, 0.0, -10.0, 4_500_000.0))


def _classes(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _summary(out_dir: Path) -> list[dict[str, str]]:
    with open(out_dir / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_files_folders_patterns_and_lists_each_predicted_once(geotiff_factory, rgbn_bundle,
                                                              tmp_path, run_cli,
                                                              monkeypatch) -> None:
    a = _scene(geotiff_factory, "a.tif", 1)
    b = _scene(geotiff_factory, "folder/b.tif", 2, (33, 21))
    c = _scene(geotiff_factory, "folder/c.tif", 3)
    d = _scene(geotiff_factory, "glob/d1.tif", 4)
    e = _scene(geotiff_factory, "listed/e.tif", 5)
    (tmp_path / "folder" / "notes.txt").write_text("not a raster\n")
    (tmp_path / "listed" / "scenes.txt").write_text("# my scenes\n\ne.tif\n../a.tif\n")
    monkeypatch.chdir(tmp_path)
    result = run_cli("predict", "a.tif", "folder", "glob/d*.tif", "listed/scenes.txt",
                     "--model", rgbn_bundle, "--out-dir", "preds")
    assert result.exit_code == 0, result
    preds = tmp_path / "preds"
    names = {"a", "b", "c", "d1", "e"}
    assert {p.name for p in preds.iterdir()} == {
        f"{n}_pred{ext}" for n in names for ext in (".tif", ".qml", ".tif.aux.xml")
    } | {"summary.csv", "summary.json"}
    for scene in (a, b, c, d, e):  # the same map as the one-scene command
        predict_scene(scene, rgbn_bundle, tmp_path / "one.tif", PredictOptions(overwrite=True))
        np.testing.assert_array_equal(_classes(preds / f"{scene.stem}_pred.tif"),
                                      _classes(tmp_path / "one.tif"))
    rows = _summary(preds)
    assert [Path(r["scene"]).stem for r in rows] == ["a", "b", "c", "d1", "e"]  # a once
    for row in rows:
        ids = _classes(Path(row["output"]))
        assert row["status"] == "ok" and row["error"] == ""
        assert (int(row["width"]), int(row["height"])) == (ids.shape[1], ids.shape[0])
        assert float(row["seconds"]) > 0 and float(row["mpx_per_s"]) > 0
        assert int(row["bytes"]) == Path(row["output"]).stat().st_size
        for class_id, name in ((1, "water"), (2, "field"), (5, "forest")):
            assert int(row[f"pixels {name}"]) == int((ids == class_id).sum())
    report = json.loads((preds / "summary.json").read_text())
    assert (report["scenes"], report["ok"], report["failed"]) == (5, 5, 0)
    assert report["results"][1]["pixels"] == {
        n: int(row) for n, row in zip(("water", "field", "forest"),
                                      (rows[1]["pixels water"], rows[1]["pixels field"],
                                       rows[1]["pixels forest"]), strict=True) if int(row)}
    assert re.search(r"\[5/5\] ok .*e\.tif -> preds/e_pred\.tif", result.stdout)
    assert "Predicted 5 scene(s), skipped 0, failed 0" in result.stdout


def test_a_failing_scene_is_reported_and_the_others_go_on(geotiff_factory, rgbn_bundle,
                                                          tmp_path, run_cli) -> None:
    _scene(geotiff_factory, "in/a.tif", 1)
    (tmp_path / "in" / "b.tif").write_bytes(b"II*\x00 truncated")
    geotiff_factory("in/c.tif", np.ones((3, 8, 8), dtype=np.uint16))  # 3 bands, model wants 4
    _scene(geotiff_factory, "in/d.tif", 2)
    result = run_cli("predict", tmp_path / "in", "--model", rgbn_bundle, "--out-dir",
                     tmp_path / "out")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(
        "Error: 2 of 4 scene(s) failed"), result.stderr
    rows = {Path(r["scene"]).name: r for r in _summary(tmp_path / "out")}
    assert [rows[n]["status"] for n in sorted(rows)] == ["ok", "failed", "failed", "ok"]
    assert "not a readable raster" in rows["b.tif"]["error"]
    assert "has 3 band(s) but model" in rows["c.tif"]["error"]
    assert re.search(r"failed .*c\.tif: .*has 3 band", result.stdout)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tif")) == ["a_pred.tif",
                                                                         "d_pred.tif"]


def test_rerun_skips_finished_scenes_and_resumes_an_interrupted_batch(
        geotiff_factory, rgbn_bundle, tmp_path, monkeypatch) -> None:
    scenes = [_scene(geotiff_factory, f"s{i}.tif", i) for i in range(3)]
    out = tmp_path / "out"

    def stop_after_first(result, done, total) -> None:
        raise Stopped(2)  # Ctrl-C once the first scene is written

    with pytest.raises(Stopped):
        predict_batch(scenes, rgbn_bundle, out, progress=stop_after_first)
    assert sorted(p.name for p in out.glob("*.tif")) == ["s0_pred.tif"]
    assert [r["status"] for r in _summary(out)] == ["ok"]
    first = (out / "s0_pred.tif").stat().st_mtime_ns

    predicted = []
    real = batch.predict_scene
    monkeypatch.setattr(batch, "predict_scene",
                        lambda scene, *a, **k: predicted.append(Path(scene).name) or real(
                            scene, *a, **k))
    notes: list[str] = []
    resumed = predict_batch(scenes, rgbn_bundle, out, notify=notes.append)
    assert predicted == ["s1.tif", "s2.tif"]
    assert [r.status for r in resumed.results] == ["skipped", "ok", "ok"]
    assert notes[0] == (f"1 of 3 scene(s) already predicted in {out}, skipped (--overwrite "
                        "redoes them)")
    assert all(n.startswith("Windows of ") for n in notes[1:])  # --tile auto's choice
    assert (out / "s0_pred.tif").stat().st_mtime_ns == first
    rows = _summary(out)
    assert rows[0]["status"] == "skipped" and int(rows[0]["pixels field"]) == int(
        (_classes(out / "s0_pred.tif") == 2).sum())

    (out / "s2_pred.qml").unlink()  # an incomplete output is not skipped...
    (out / "s1_pred.tif").write_bytes(b"not a raster")  # ...nor an invalid one
    predicted.clear()
    again = predict_batch(scenes, rgbn_bundle, out)
    assert predicted == ["s1.tif", "s2.tif"]
    assert [r.status for r in again.results] == ["skipped", "failed", "failed"]
    assert "already exists" in again.results[1].error  # never replaced without --overwrite

    predicted.clear()
    redone = predict_batch(scenes, rgbn_bundle, out,
                           BatchOptions(PredictOptions(overwrite=True)))
    assert predicted == ["s0.tif", "s1.tif", "s2.tif"]
    assert [r.status for r in redone.results] == ["ok"] * 3


def test_the_model_is_loaded_once_for_all_scenes(geotiff_factory, rgbn_bundle, tmp_path,
                                                 monkeypatch) -> None:
    scenes = [_scene(geotiff_factory, f"s{i}.tif", i) for i in range(3)]
    loads = []
    real = batch.load_bundle
    monkeypatch.setattr(batch, "_BUNDLES", {})
    monkeypatch.setattr(batch, "load_bundle", lambda path: loads.append(path) or real(path))
    summary = predict_batch(scenes, rgbn_bundle, tmp_path / "out")
    assert summary.count("ok") == 3 and loads == [rgbn_bundle]


def test_optional_outputs_are_named_per_scene(geotiff_factory, rgbn_bundle, tmp_path,
                                              run_cli) -> None:
    scenes = [_scene(geotiff_factory, f"s{i}.tif", i) for i in range(2)]
    result = run_cli("predict", *scenes, "--model", rgbn_bundle, "--out-dir", tmp_path / "out",
                     "--confidence", "{scene}_conf.tif", "--preview", "quick/{scene}.png")
    assert result.exit_code == 0, result
    for name in ("s0", "s1"):
        assert (tmp_path / "out" / f"{name}_conf.tif").is_file()
        assert (tmp_path / "out" / "quick" / f"{name}.png").is_file()
    again = run_cli("predict", *scenes, "--model", rgbn_bundle, "--out-dir", tmp_path / "out",
                    "--confidence", "{scene}_conf.tif", "--preview", "quick/{scene}.png")
    assert "2 of 2 scene(s) already predicted" in again.stdout
    more = run_cli("predict", *scenes, "--model", rgbn_bundle, "--out-dir", tmp_path / "out",
                   "--probs", "{scene}_probs.tif")  # an output not written yet: predicted again
    assert more.exit_code == 1 and "2 of 2 scene(s) failed" in more.stderr


def test_one_scene_without_out_is_named_after_it_here(geotiff_factory, rgbn_bundle, tmp_path,
                                                      run_cli, monkeypatch) -> None:
    scene = _scene(geotiff_factory, "data/scene.tif", 1)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    result = run_cli("predict", scene, "--model", rgbn_bundle)
    assert result.exit_code == 0, result
    assert "No --out given: writing scene_pred.tif in the current folder" in result.stdout
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [
        "scene_pred.qml", "scene_pred.tif", "scene_pred.tif.aux.xml"]


def test_scenes_of_the_same_name_take_their_folders_name(geotiff_factory, rgbn_bundle,
                                                         tmp_path, monkeypatch) -> None:
    _scene(geotiff_factory, "north/tile.tif", 1)
    _scene(geotiff_factory, "tile.tif", 2)
    monkeypatch.chdir(tmp_path)
    summary = predict_batch(["north/tile.tif", "tile.tif"], rgbn_bundle, "out")
    assert [r.out.name for r in summary.results] == ["north_tile_pred.tif",
                                                     f"{tmp_path.name}_tile_pred.tif"]


def test_a_rerun_into_the_input_folder_leaves_the_predictions_out(geotiff_factory, rgbn_bundle,
                                                                  tmp_path) -> None:
    _scene(geotiff_factory, "in/a.tif", 1)
    predict_batch([tmp_path / "in"], rgbn_bundle, tmp_path / "in")
    with pytest.warns(UserWarning, match="1 input\\(s\\) are outputs of this batch"):
        again = predict_batch([tmp_path / "in"], rgbn_bundle, tmp_path / "in")
    assert [(Path(r.scene).name, r.status) for r in again.results] == [("a.tif", "skipped")]


def _bad(case: str, tmp_path: Path, geotiff_factory) -> tuple[list, str]:
    """Arguments (after the model) and the expected message of a bad batch ``case``."""
    scene = _scene(geotiff_factory, "a.tif", 1)
    other = _scene(geotiff_factory, "b.tif", 2)
    out_dir = ["--out-dir", tmp_path / "out"]
    if case == "folder without rasters":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "readme.md").write_text("")
        return [tmp_path / "empty", *out_dir], "empty: no rasters in this folder"
    if case == "pattern matching nothing":
        return [tmp_path / "*.jp2", *out_dir], "matches no raster file.*quote it"
    if case == "missing file":
        return [scene, tmp_path / "nope.tif", *out_dir], "nope.tif: no such file or folder"
    if case == "bad list entry":
        (tmp_path / "list.txt").write_text("a.tif\n\nmissing.tif\n")
        return [tmp_path / "list.txt", *out_dir], "list.txt, line 3: .*missing.tif: no such"
    if case == "empty list":
        (tmp_path / "list.txt").write_text("# nothing yet\n")
        return [tmp_path / "list.txt", *out_dir], "the scene list is empty"
    if case == "out-dir is a file":
        (tmp_path / "file").write_text("")
        return [scene, other, "--out-dir", tmp_path / "file"], "--out-dir .*file is a file"
    if case == "cluster local:0":
        return [scene, *out_dir, "--cluster", "local:0"], "local workers must be at least 1"
    if case == "cluster nonsense":
        return [scene, *out_dir, "--cluster", "sge"], "neither local\\[:N\\] nor a scheduler"
    if case == "bad bundle":
        (tmp_path / "m.rsseg").write_bytes(b"\x00" * 64)
        return [scene, other, *out_dir, "--model", tmp_path / "m.rsseg"], "not a model bundle"
    raise AssertionError(case)


BAD = ("folder without rasters", "pattern matching nothing", "missing file", "bad list entry",
       "empty list", "out-dir is a file", "cluster local:0", "cluster nonsense", "bad bundle")


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_exit_1_and_nothing_written(case, tmp_path, geotiff_factory,
                                                          rgbn_bundle, run_cli) -> None:
    args, message = _bad(case, tmp_path, geotiff_factory)
    before = set(tmp_path.rglob("*"))
    result = run_cli("predict", "--model", rgbn_bundle, *args)
    assert result.exit_code == 1, result
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert set(tmp_path.rglob("*")) == before


@pytest.mark.parametrize(("extra", "message"), [
    (["--out", "x.tif"], "--out names the class raster of one scene.*--out-dir"),
    ([], "need --out-dir"),
    (["--out-dir", "out", "--confidence", "conf.tif"],
     "--confidence conf.tif names one file for 2 scene\\(s\\).*\\{scene\\}"),
])
def test_options_for_one_scene_given_many_are_usage_errors(extra, message, tmp_path,
                                                           geotiff_factory, rgbn_bundle,
                                                           run_cli, monkeypatch) -> None:
    scenes = [_scene(geotiff_factory, f"s{i}.tif", i) for i in range(2)]
    monkeypatch.chdir(tmp_path)
    result = run_cli("predict", *scenes, "--model", rgbn_bundle, *extra)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result
    assert re.search(message, result.stderr), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s0.tif", "s1.tif"]
