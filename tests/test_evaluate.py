"""``rsseg evaluate``: window-by-window scores, nodata/ignore/exclude, class names, grid errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

import rsseg.pipelines.evaluate as evaluate_module
from rsseg.errors import InputError
from rsseg.metrics import scores
from rsseg.pipelines.evaluate import evaluate

H, W = 21, 17


@pytest.fixture
def pair(geotiff_factory) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """A prediction (nodata 255) and a reference (nodata 0) with known disagreement."""
    rng = np.random.default_rng(1)
    ref = rng.integers(1, 5, (H, W)).astype(np.uint8)
    pred = np.where(rng.random((H, W)) < 0.6, ref, rng.integers(1, 5, (H, W))).astype(np.uint8)
    ref[:2] = 0
    pred[:, :3] = 255
    return (geotiff_factory("pred.tif", pred, nodata=255, blocksize=(4, W)),
            geotiff_factory("ref.tif", ref, nodata=0), pred, ref)


def _expected(pred: np.ndarray, ref: np.ndarray, keep: np.ndarray):
    ids = sorted(set(ref[keep]) | set(pred[keep]))
    cm = np.zeros((len(ids), len(ids)), int)
    np.add.at(cm, (np.searchsorted(ids, ref[keep]), np.searchsorted(ids, pred[keep])), 1)
    return scores(cm, ids)


def test_window_by_window_matches_one_shot(pair, monkeypatch) -> None:
    pred_path, ref_path, pred, ref = pair
    monkeypatch.setattr(evaluate_module, "WINDOW_PIXELS", 3 * W)  # many small row bands
    result = evaluate(pred_path, ref_path)
    want = _expected(pred, ref, (ref != 0) & (pred != 255))
    assert result.scores.class_ids == want.class_ids
    np.testing.assert_array_equal(result.scores.confusion, want.confusion)
    assert result.scores.kappa == pytest.approx(want.kappa)


def test_ignore_and_exclude(pair, geotiff_factory) -> None:
    pred_path, ref_path, pred, ref = pair
    train = np.zeros((H, W), np.uint8)
    train[5:9, 4:10] = 3  # "training pixels": labelled where non-zero
    exclude = geotiff_factory("train.tif", train, nodata=0)
    result = evaluate(pred_path, ref_path, ignore=[2], exclude=exclude)
    keep = (ref != 0) & (pred != 255) & (ref != 2) & (pred != 2)
    want = _expected(pred, ref, keep & (train == 0))
    np.testing.assert_array_equal(result.scores.confusion, want.confusion)
    assert result.excluded == int((keep & (train != 0)).sum())
    assert 2 not in result.scores.class_ids


def test_self_evaluation_is_perfect_and_json_has_the_schema(pair, run_cli) -> None:
    _, ref_path, _, _ = pair
    res = run_cli("evaluate", ref_path, ref_path, "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert {"oa", "kappa", "miou", "per_class", "confusion", "classes"} <= set(doc)
    assert doc["oa"] == doc["kappa"] == doc["miou"] == 1.0
    assert [c["id"] for c in doc["classes"]] == [p["id"] for p in doc["per_class"]] == [1, 2, 3, 4]
    assert doc["per_class"][0]["f1"] == 1.0
    assert np.trace(doc["confusion"]) == doc["pixels"] == (H - 2) * W


def test_table_output_names_classes_from_the_prediction(pair, run_cli) -> None:
    pred_path, ref_path, _, _ = pair
    with rasterio.open(pred_path, "r+") as dst:
        dst.update_tags(CLASSES=json.dumps([{"id": 1, "name": "forest"},
                                            {"id": 2, "name": "water", "color": "#0000ff"}]))
    res = run_cli("evaluate", pred_path, ref_path)
    assert res.exit_code == 0, res.stderr
    assert "Kappa" in res.stdout and "forest" in res.stdout and "class 3" in res.stdout
    doc = json.loads(run_cli("evaluate", pred_path, ref_path, "--json").stdout)
    assert doc["classes"][1] == {"id": 2, "name": "water", "color": [0, 0, 255]}


def test_classes_that_rename_the_predictions_ids_are_warned_about(pair, tmp_path,
                                                                   run_cli) -> None:
    pred_path, ref_path, _, _ = pair
    with rasterio.open(pred_path, "r+") as dst:
        dst.update_tags(CLASSES=json.dumps([{"id": 1, "name": "forest"},
                                            {"id": 2, "name": "water"}]))
    same, swapped = tmp_path / "same.csv", tmp_path / "swapped.csv"
    same.write_text("id,name\n1,Forest\n2,water\n3,urban\n")
    swapped.write_text("id,name\n1,water\n2,forest\n")
    assert "Warning" not in run_cli("evaluate", pred_path, ref_path, "--classes", same).stderr
    warned = run_cli("evaluate", pred_path, ref_path, "--classes", swapped)
    assert warned.exit_code == 0
    assert "id 1: 'water' in --classes, 'forest' in" in warned.stderr
    assert "id 2: 'forest' in --classes, 'water' in" in warned.stderr


def test_gdal_category_names_and_classes_file(pair, tmp_path, run_cli) -> None:
    pred_path, ref_path, _, _ = pair
    Path(f"{ref_path}.aux.xml").write_text(
        '<PAMDataset><PAMRasterBand band="1"><CategoryNames><Category></Category>'
        "<Category>urban</Category></CategoryNames></PAMRasterBand></PAMDataset>")
    doc = json.loads(run_cli("evaluate", pred_path, ref_path, "--json").stdout)
    assert doc["classes"][0]["name"] == "urban"
    classes = tmp_path / "classes.csv"
    classes.write_text("id,name,color\n1,a,#010203\n2,b,\n")
    doc = json.loads(run_cli("evaluate", pred_path, ref_path, "--json",
                             "--classes", classes).stdout)
    assert [c["name"] for c in doc["classes"][:3]] == ["a", "b", "class 3"]
    assert doc["classes"][0]["color"] == [1, 2, 3]


@pytest.mark.parametrize("change, words", [
    ({"array": np.ones((H, W + 1), np.uint8)}, ["size", f"{W}x{H}", f"{W + 1}x{H}"]),
    ({"transform": from_origin(500_010.0, 4_500_000.0, 10.0, 10.0)},
     ["transform", "500000", "500010"]),
    ({"crs": "EPSG:32633"}, ["CRS", "EPSG:32618", "EPSG:32633"]),
])
def test_grid_mismatch_is_one_line_naming_both_values(pair, geotiff_factory, run_cli, change,
                                                      words) -> None:
    pred_path, _, _, _ = pair
    kwargs = {"array": np.ones((H, W), np.uint8), **change}
    other = geotiff_factory("other.tif", kwargs.pop("array"), **kwargs)
    res = run_cli("evaluate", pred_path, other)
    assert res.exit_code == 1
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("Error:")
    assert all(w in res.stderr for w in words), res.stderr


def test_bad_inputs(pair, geotiff_factory) -> None:
    pred_path, ref_path, _, _ = pair
    three = geotiff_factory("rgb.tif", np.ones((3, H, W), np.uint8))
    with pytest.raises(InputError, match="one band"):
        evaluate(three, ref_path)
    frac = geotiff_factory("frac.tif", np.full((H, W), 1.5, np.float32))
    with pytest.raises(InputError, match="whole numbers"):
        evaluate(frac, ref_path)
    empty = geotiff_factory("empty.tif", np.zeros((H, W), np.uint8), nodata=0)
    with pytest.raises(InputError, match="no pixel"):
        evaluate(pred_path, empty)


@pytest.mark.realdata
def test_nc_dense_map_against_itself_and_the_sparse_pixels(shared_data, run_cli) -> None:
    nc = shared_data / "nc_landsat"
    dense = nc / "landclass96_labels_uint8.tif"
    doc = json.loads(run_cli("evaluate", dense, dense, "--json").stdout)
    assert doc["oa"] == doc["kappa"] == doc["miou"] == 1.0 and len(doc["classes"]) == 7
    sparse = nc / "landsat96_sparse_training_pixels_uint8.tif"
    doc = json.loads(run_cli("evaluate", sparse, dense, "--json").stdout)
    assert doc["pixels"] == 2872 and doc["oa"] == pytest.approx(0.995, abs=0.001)
    doc = json.loads(run_cli("evaluate", dense, dense, "--json", "--exclude", sparse).stdout)
    assert doc["excluded"] == 2872


def test_partial_nodata_tool_scores_partial_and_complete_pixels_apart(geotiff_factory,
                                                                      load_tool) -> None:
    """tools/eval_partial_nodata.py: pixels missing one band vs complete ones, test area only."""
    module = load_tool("eval_partial_nodata")
    pixels = np.full((2, 4, 6), 9, dtype=np.uint8)
    pixels[1, :, :2] = 0  # band 2 missing in the first two columns
    pixels[:, 0, :] = 0  # row 0: nodata in every band
    ref = np.tile(np.array([1, 2, 1, 2, 1, 2], dtype=np.uint8), (4, 1))
    pred = ref.copy()
    pred[:, 0] = 2  # wrong on half of the partial pixels
    paths = [geotiff_factory("pred.tif", pred, nodata=255),
             geotiff_factory("scene.tif", pixels, nodata=0),
             geotiff_factory("ref.tif", ref, nodata=255)]
    result = module.scores(*paths)
    assert result["partial"]["pixels"] == 6 and result["partial"]["oa"] == pytest.approx(0.5)
    assert result["complete"]["pixels"] == 12 and result["complete"]["oa"] == 1.0
    assert module.scores(*paths, min_col=2)["partial"]["pixels"] == 0
