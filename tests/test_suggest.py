"""``rsseg suggest``: points worth labelling as a QGIS-ready GeoPackage; bad input in one line."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from xml.etree import ElementTree

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from affine import Affine

from rsseg.pipelines.suggest import SuggestOptions, suggest_points
from rsseg.sampling import Candidates

NODATA = -9999.0
DEFAULT_TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_500_000.0)  # conftest's
W = np.array([[1.0, -1.0, 0.5, -2.0], [-1.0, 2.0, 0.0, 1.0], [0.0, -1.0, 1.0, 1.5]])  # rgbn_bundle


@pytest.fixture
def scene(geotiff_factory) -> Path:
    """60 x 80 px, 4 bands, a 20 x 20 px nodata corner (top left)."""
    pixels = np.random.default_rng(0).normal(10, 6, (4, 60, 80)).astype(np.float32)
    pixels[:, :20, :20] = NODATA
    return geotiff_factory("scene.tif", pixels, nodata=NODATA)


def _pixels(frame: gpd.GeoDataFrame, transform: Affine = DEFAULT_TRANSFORM) -> np.ndarray:
    """``(N, 2)`` (row, col) of the points."""
    cols, rows = ~transform * (frame.geometry.x.to_numpy(), frame.geometry.y.to_numpy())
    return np.column_stack([np.floor(rows), np.floor(cols)]).astype(int)


def test_writes_a_layer_to_label_in_qgis(scene: Path, rgbn_bundle: Path, tmp_path: Path,
                                         run_cli) -> None:
    out = tmp_path / "to_label.gpkg"
    result = run_cli("suggest", scene, "--model", rgbn_bundle, "--out", out, "--n", 12)
    assert result.exit_code == 0, result.stderr
    assert "12 points" in result.stdout and "--labels" in result.stdout
    frame = gpd.read_file(out)
    assert list(frame.columns) == ["label", "predicted", "confidence", "uncertainty", "rank",
                                   "scene", "geometry"]
    assert frame["label"].isna().all() and pyogrio.read_info(out)["dtypes"][0] == "object"
    assert frame["rank"].tolist() == list(range(1, 13))
    assert set(frame["predicted"]) <= {"water", "field", "forest"}
    assert frame["confidence"].between(1 / 3, 1).all() and frame["uncertainty"].between(0, 1).all()
    assert (frame["scene"] == "scene.tif").all() and frame.crs.to_epsg() == 32618
    assert set(frame.geom_type) == {"Point"}
    rows_cols = _pixels(frame)  # at pixel centres
    x, y = DEFAULT_TRANSFORM * (rows_cols[:, 1] + 0.5, rows_cols[:, 0] + 0.5)
    np.testing.assert_allclose(frame.geometry.x, x)
    np.testing.assert_allclose(frame.geometry.y, y)
    style = ElementTree.parse(out.with_suffix(".qml")).getroot()
    categories = style.findall("./renderer-v2/categories/category")
    assert style.find("renderer-v2").get("attr") == "predicted"
    assert [c.get("value") for c in categories] == ["water", "field", "forest"]
    colours = [o.get("value") for o in style.iter("Option") if o.get("name") == "color"]
    assert colours == ["0,0,255,255", "255,255,0,255", "0,128,0,255"]
    widget = style.find("./fieldConfiguration/field[@name='label']/editWidget")
    assert widget.get("type") == "ValueMap"
    choices = {o.get("name"): o.get("value") for o in widget.iter("Option") if o.get("name")
               and o.get("name") != "map"}
    assert list(choices)[1:] == ["water", "field", "forest"] and "<NULL>" in choices
    editable = {f.get("name"): f.get("editable") for f in style.findall("./editable/field")}
    assert editable == {"label": "1", "predicted": "0", "confidence": "0", "uncertainty": "0",
                        "rank": "0", "scene": "0"}


def test_never_on_nodata_or_labels_and_apart(scene: Path, rgbn_bundle: Path, tmp_path: Path,
                                             geotiff_factory, run_cli) -> None:
    labelled = [(30, 30), (45, 60), (10, 70)]  # (row, col)
    xy = [DEFAULT_TRANSFORM * (c + 0.5, r + 0.5) for r, c in labelled]
    points = gpd.GeoDataFrame({"label": ["water", "field", None]},
                              geometry=shapely.points(xy), crs="EPSG:32618")
    points.to_file(tmp_path / "old.gpkg")
    raster = np.zeros((60, 80), np.uint8)
    raster[50:53, 5:8] = 2  # labelled pixels of a label raster (0 = unlabelled)
    labels_tif = geotiff_factory("old.tif", raster, nodata=0)
    out = tmp_path / "new.gpkg"
    result = run_cli("suggest", scene, "--model", rgbn_bundle, "--out", out, "--n", 40,
                     "--min-distance", 40, "--labels", tmp_path / "old.gpkg",
                     "--labels", labels_tif)
    assert result.exit_code == 0, result.stderr
    got = _pixels(gpd.read_file(out))
    assert len(got) == 40
    assert not ((got[:, 0] < 20) & (got[:, 1] < 20)).any()  # the nodata corner
    dist = np.sqrt(((got[:, None] - got[None]) ** 2).sum(-1))
    assert dist[~np.eye(len(got), dtype=bool)].min() >= 4  # 40 m = 4 px
    taken = np.array([*labelled[:2], *np.argwhere(raster > 0)])  # the unlabelled row is free
    assert np.sqrt(((got[:, None] - taken[None]) ** 2).sum(-1)).min() >= 4


def test_deterministic_for_a_seed(scene: Path, rgbn_bundle: Path, tmp_path: Path,
                                  run_cli) -> None:
    runs = {}
    for name, seed, strategy in (("a", 3, "hybrid"), ("b", 3, "hybrid"), ("c", 3, "random"),
                                 ("d", 3, "random"), ("e", 4, "random")):
        out = tmp_path / f"{name}.gpkg"
        assert run_cli("suggest", scene, "--model", rgbn_bundle, "--out", out, "--n", 15,
                       "--seed", seed, "--strategy", strategy).exit_code == 0
        runs[name] = gpd.read_file(out)
    for same in (("a", "b"), ("c", "d")):
        assert runs[same[0]].equals(runs[same[1]])
    assert not runs["d"].geometry.equals(runs["e"].geometry)


def _asked(path: Path, bundle: Path, **options) -> Candidates:
    """The points ``suggest`` picks in one scene with these options."""
    return suggest_points([path], bundle, SuggestOptions(**options)).points


def _on_the_boundary() -> tuple[np.ndarray, np.ndarray]:
    """``(spectrum, d)``: a spectrum (normalised units) on the model's water/field boundary —
    water and field logits equal, forest's below — and ``d`` = water − field weights."""
    d = W[0] - W[1]
    base = 1.5 * (W[0] + W[1])
    return base - base @ d / (d @ d) * d, d


def _hard_scene(geotiff_factory) -> tuple[Path, np.ndarray]:
    """Seven 20 px stripes: six distinct spectra the model is sure of, and one (stripe 3) on
    its water/field boundary, varying along it: the hard class."""
    rng = np.random.default_rng(1)
    z = np.zeros((4, 70, 140))
    region = np.repeat(np.arange(7), 20)[None].repeat(70, axis=0)
    for k in range(7):
        if k == 3:
            base, d = _on_the_boundary()
            v = np.array([-d[1], d[0], 0.0, 0.0])
            v -= v @ d / (d @ d) * d
            t = np.linspace(-0.7, 0.7, 70)[:, None]
            z[:, :, 60:80] = base[:, None, None] + v[:, None, None] / np.linalg.norm(v) * t
            continue
        while True:
            c = rng.normal(size=4)
            c *= 3 / np.linalg.norm(c)
            logits = np.sort(W @ c)
            if logits[-1] - logits[-2] > 4:
                break
        z[:, :, 20 * k:20 * k + 20] = c[:, None, None]
    z += rng.normal(0, 0.1, z.shape)
    return geotiff_factory("hard.tif", (z * 5 + 10).astype(np.float32)), region


def test_hybrid_beats_random_where_one_class_is_hard(geotiff_factory, rgbn_bundle: Path) -> None:
    """Hybrid spends most of its points on the hard stripe (1/7 of the scene); random and
    diversity alone (hybrid without its uncertainty term) do not."""
    path, region = _hard_scene(geotiff_factory)
    share = {}
    for strategy in ("hybrid", "random", "diversity"):
        share[strategy] = []
        for seed in range(3):
            got = _asked(path, rgbn_bundle, n=14, strategy=strategy, seed=seed)
            share[strategy].append(float((region[got.row, got.col] == 3).mean()))
    assert min(share["hybrid"]) >= 0.55, share
    assert np.mean(share["random"]) < 0.3 and np.mean(share["diversity"]) < 0.45, share


def test_hybrid_explores_where_the_model_is_sure_but_has_learnt_nothing(geotiff_factory,
                                                                      rgbn_bundle: Path) -> None:
    """Columns 0-179 lie on the model's water/field boundary (uncertain, both predicted);
    columns 180-199 hold a spectrum it calls water with certainty, unlike anything else (a class
    it has not learnt). Uncertainty never leads there; the hybrid's exploration share does."""
    rng = np.random.default_rng(2)
    base, d = _on_the_boundary()
    v = np.array([-d[1], d[0], 0.0, 0.0])
    v -= v @ d / (d @ d) * d
    z = base[:, None, None] + v[:, None, None] / np.linalg.norm(v) * \
        np.linspace(-0.7, 0.7, 240)[None, :, None] * np.ones((1, 1, 200))
    unseen = np.array([0.9, -2.0, -1.95, -0.62])  # water logit 3.2, the others below -0.8
    z[:, :, 180:] = unseen[:, None, None]
    z += rng.normal(0, 0.1, z.shape)
    path = geotiff_factory("unseen.tif", (z * 5 + 10).astype(np.float32))
    for seed in range(3):
        asked = {}
        for explore in (0.0, 0.2):
            got = _asked(path, rgbn_bundle, n=10, strategy="hybrid", explore=explore, seed=seed)
            asked[explore] = int((got.col >= 180).sum())
        assert asked[0.0] == 0 and asked[0.2] >= 1, (seed, asked)


def test_region_prefers_an_uncertain_area_to_lone_uncertain_pixels(geotiff_factory,
                                                                   rgbn_bundle: Path) -> None:
    """A field the model is sure of, strewn with lone pixels on its water/field boundary (mixed
    pixels, columns < 60) beside a 20-row band of such pixels (columns >= 60): pixel by pixel
    the lone ones are the most uncertain and take every point of their predicted class (half
    the points: the others go to the band's other class); by the mean over 5 x 5 pixels
    (``region=2``) every point lies in the band."""
    unsure, _ = _on_the_boundary()
    sure = np.array([-1.0, 2.0, 0.0, 1.0])  # field by a margin of 4.5
    z = np.repeat(sure[:, None, None], 60, axis=1).repeat(120, axis=2)
    z[:, 20:40, 60:] = unsure[:, None, None]
    z += np.random.default_rng(4).normal(0, 0.05, z.shape)
    z[:, 3:60:6, 3:60:6] = unsure[:, None, None]  # 100 lone mixed pixels, the most uncertain
    path = geotiff_factory("edges.tif", (z * 5 + 10).astype(np.float32))
    for seed in range(3):
        in_band = {}
        for region in (0, 2):
            got = _asked(path, rgbn_bundle, n=8, strategy="uncertainty", region=region,
                         seed=seed)
            in_band[region] = float(((got.row >= 20) & (got.row < 40) & (got.col >= 60)).mean())
        assert in_band[2] == 1.0 and in_band[0] <= 0.5, (seed, in_band)


def test_numeric_label_column_and_reprojected_labels(scene: Path, rgbn_bundle: Path,
                                                     tmp_path: Path, run_cli) -> None:
    """An existing integer column gives an integer column with ids behind the names; labels in
    another CRS are reprojected with a warning (and still avoided)."""
    x, y = DEFAULT_TRANSFORM * (40.5, 30.5)
    points = gpd.GeoDataFrame({"class": [5, 9]}, geometry=shapely.points([(x, y), (x, y)]),
                              crs="EPSG:32618").to_crs("EPSG:4326")
    points.to_file(tmp_path / "ids.gpkg")
    out = tmp_path / "next.gpkg"
    result = run_cli("suggest", scene, "--model", rgbn_bundle, "--out", out, "--n", 60,
                     "--labels", tmp_path / "ids.gpkg", "--label-column", "class",
                     "--min-distance", 30)
    assert result.exit_code == 0, result.stderr
    assert "ids.gpkg: labels in EPSG:4326, reprojected to the scenes' CRS EPSG:32618" \
        in result.stderr
    assert pyogrio.read_info(out)["fields"][0] == "class"
    assert pyogrio.read_info(out)["dtypes"][0] == "int64"
    assert np.sqrt(((_pixels(gpd.read_file(out)) - (30, 40)) ** 2).sum(1)).min() >= 3
    style = ElementTree.parse(out.with_suffix(".qml")).getroot()
    choices = {o.get("name"): o.get("value")
               for o in style.find("./fieldConfiguration/field[@name='class']").iter("Option")
               if o.get("name") not in (None, "map", "<NULL>")}
    assert choices == {"water": "1", "field": "2", "forest": "5", "class 9": "9"}


def test_pixel_coordinates_without_georeferencing(geotiff_factory, rgbn_bundle: Path,
                                                  tmp_path: Path, run_cli) -> None:
    pixels = np.random.default_rng(2).normal(10, 6, (4, 40, 50)).astype(np.float32)
    plain = geotiff_factory("plain.tif", pixels, crs=None)
    out = tmp_path / "plain.gpkg"
    result = run_cli("suggest", plain, "--model", rgbn_bundle, "--out", out, "--n", 5)
    assert result.exit_code == 0, result.stderr
    frame = gpd.read_file(out)
    assert frame.crs is None
    assert ((frame.geometry.x % 1 == 0.5) & (frame.geometry.y % 1 == 0.5)).all()
    assert frame.geometry.x.max() < 50 and frame.geometry.y.max() < 40  # y = row, as vectorize
    two = run_cli("suggest", plain, geotiff_factory("plain2.tif", pixels, crs=None), "--model",
                  rgbn_bundle, "--out", tmp_path / "two.gpkg")
    assert two.exit_code == 1 and "run rsseg suggest once per image" in two.stderr


def _bad_inputs(tmp_path: Path, geotiff_factory, scene: Path) -> dict[str, tuple[list, str]]:
    few = np.full((4, 3, 3), 10, np.float32)
    few[:, 0] = NODATA
    frame = gpd.GeoDataFrame({"label": [2.5], "when": [np.datetime64("2024-01-01")]},
                             geometry=shapely.points([DEFAULT_TRANSFORM * (1, 1)]),
                             crs="EPSG:32618")
    frame.to_file(tmp_path / "typed.gpkg")
    other_grid = geotiff_factory("grid.tif", np.zeros((30, 80), np.uint8), nodata=0)
    return {
        "n zero": (["--n", 0], "--n 0 must be at least 1"),
        "explore above 1": (["--explore", 1.5], "--explore 1.5 is not a share between 0 and 1"),
        "negative region": (["--region", -1], "--region -1 must be 0 or more"),
        "more than candidates": ([geotiff_factory("few.tif", few, nodata=NODATA), "--n", 7],
                                 "--n 7 is more than the 6 candidate pixel(s)"),
        "all nodata": ([geotiff_factory("empty.tif", np.full((4, 8, 8), NODATA, np.float32),
                                        nodata=NODATA)], "every pixel is nodata"),
        "band mismatch": ([geotiff_factory("rgb.tif", np.ones((3, 8, 8), np.float32))],
                          "has 3 band(s) but model"),
        "label not a class id": (["--labels", tmp_path / "typed.gpkg"],
                                 "column 'label' value 2.5 is not a class id"),
        "label of the wrong type": (["--labels", tmp_path / "typed.gpkg", "--label-column",
                                     "when"], "column 'when' holds datetime64"),
        "label raster on another grid": (["--labels", other_grid], "on different grids"),
        "no such column": (["--labels", tmp_path / "typed.gpkg", "--label-column", "cls"],
                           "no column 'cls'"),
        "column clash": (["--label-column", "rank"], "is also a column rsseg writes"),
        "not a geopackage": (["--out", tmp_path / "points.shp"], "name it .gpkg"),
        "too many apart": (["--n", 200, "--min-distance", 100],
                           "points fit at least 100 CRS units apart"),
        "cluster local:0": (["--cluster", "local:0"], "local workers must be at least 1"),
        "cluster nonsense": (["--cluster", "sge"], "neither local[:N] nor a scheduler"),
    }


@pytest.mark.parametrize("case", ["n zero", "explore above 1", "negative region",
                                  "more than candidates", "all nodata",
                                  "band mismatch", "label not a class id",
                                  "label of the wrong type", "label raster on another grid",
                                  "no such column", "column clash", "not a geopackage",
                                  "too many apart", "cluster local:0", "cluster nonsense"])
def test_bad_input_is_one_line(case: str, scene: Path, rgbn_bundle: Path, tmp_path: Path,
                               geotiff_factory, run_cli) -> None:
    args, message = _bad_inputs(tmp_path, geotiff_factory, scene)[case]
    if not args or isinstance(args[0], str):  # flags only: on the good scene
        args = [scene, *args]
    before = sorted(tmp_path.rglob("*"))
    result = run_cli("suggest", *args, "--model", rgbn_bundle,
                     *(["--out", tmp_path / "out.gpkg"] if "--out" not in args else []))
    assert result.exit_code == 1, result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, nothing half-written


def test_existing_output_needs_overwrite(scene: Path, rgbn_bundle: Path, tmp_path: Path,
                                         run_cli) -> None:
    out = tmp_path / "to_label.gpkg"
    assert run_cli("suggest", scene, "--model", rgbn_bundle, "--out", out, "--n", 3) \
        .exit_code == 0
    stamp = out.stat().st_mtime_ns
    again = run_cli("suggest", scene, "--model", rgbn_bundle, "--out", out, "--n", 4)
    assert again.exit_code == 1 and "already exists" in again.stderr
    assert out.stat().st_mtime_ns == stamp
    assert run_cli("suggest", scene, "--model", rgbn_bundle, "--out", out, "--n", 4,
                   "--overwrite").exit_code == 0
    with sqlite3.connect(out) as db:  # a valid GeoPackage, the new points
        assert db.execute("SELECT count(*) FROM to_label").fetchone()[0] == 4


def test_point_features_are_the_model_features_at_the_pixels(scene: Path,
                                                             rgbn_bundle: Path) -> None:
    """Per-pixel model: the feature at a pixel is its normalised input (0 where nodata), read in
    whichever window holds it."""
    import torch

    from rsseg.io.raster import open_scene
    from rsseg.models.bundle import load_bundle
    from rsseg.pipelines.suggest import feature_tap, point_features
    from rsseg.tiling.blend import layout

    net, meta = load_bundle(rgbn_bundle)
    assert feature_tap(net) == "decoder"
    rows, cols = np.array([0, 5, 30, 59, 59, 33]), np.array([0, 5, 41, 0, 79, 17])
    with open_scene(scene) as src:
        pixels = src.src.read()
        lay = layout(60, 80, 32, 8, 1)
        got = point_features(net, meta, src, rows, cols, lay, torch.device("cpu"), 3)
    expected = (pixels[:, rows, cols].T - 10) / 5
    expected[pixels[0, rows, cols] == NODATA] = 0
    np.testing.assert_allclose(got, expected, atol=1e-5)
