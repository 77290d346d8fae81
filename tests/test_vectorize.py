"""Polygons from class rasters: window-by-window equals whole-raster, attributes, areas, formats,
``rsseg vectorize`` and ``rsseg predict --vector``, bad input."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pyogrio
import pyproj
import pytest
import rasterio
import shapely
import torch
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.features import shapes

from rsseg.classes import ClassTable
from rsseg.io.polygons import polygonize
from rsseg.io.writer import class_raster_writer
from rsseg.models.bundle import BundleMeta, save_bundle
from rsseg.models.factory import ModelSpec, build_model
from rsseg.polygons import BandPolygonizer

TABLE = ClassTable.from_records([{"id": 0, "name": "field"}, {"id": 2, "name": "wood"},
                                 {"id": 5, "name": "lake"}])


def _classes(height: int, width: int, seed: int, blob: int = 3) -> np.ndarray:
    """Blobby class ids 0/2/5 with speckle and nodata (255) holes."""
    rng = np.random.default_rng(seed)
    coarse = rng.choice([0, 2, 5], (height // blob + 1, width // blob + 1))
    out = np.kron(coarse, np.ones((blob, blob), dtype=int))[:height, :width].astype(np.uint8)
    speckle = rng.random((height, width)) < 0.08
    out[speckle] = rng.choice([0, 2, 5], int(speckle.sum()))
    out[rng.random((height, width)) < 0.04] = 255
    return out


def _canonical(geoms: np.ndarray, values: np.ndarray) -> list[tuple[int, str]]:
    wkt = shapely.to_wkt(shapely.normalize(geoms), rounding_precision=-1)
    return sorted(zip(np.asarray(values).tolist(), wkt.tolist(), strict=True))


@given(height=st.integers(1, 40), width=st.integers(1, 30), blob=st.integers(1, 6),
       seed=st.integers(0, 2**16), cuts=st.lists(st.integers(1, 7), min_size=1, max_size=12))
@settings(max_examples=40, deadline=None)
def test_band_by_band_equals_whole_raster_exactly(height, width, blob, seed, cuts) -> None:
    classes = _classes(height, width, seed, blob)
    whole = polygonize(classes, classes != 255)
    streamed = BandPolygonizer(height, nodata=255)
    row, i = 0, 0
    while row < height:
        rows = cuts[i % len(cuts)]
        streamed.add(row, classes[row:row + rows])
        row, i = row + rows, i + 1
    assert _canonical(*streamed.finish()) == _canonical(*whole)


def _write_classes(path, classes, transform=None, crs="EPSG:32618"):
    from rsseg.io.raster import SceneInfo

    info = SceneInfo(path, classes.shape[1], classes.shape[0], 1, "uint8",
                     rasterio.crs.CRS.from_user_input(crs),
                     transform or Affine(10, 0, 500_000, 0, -10, 4_500_000), 255, (512, 512),
                     ("class",), True)
    with class_raster_writer(path, info, TABLE) as writer:
        for row in range(0, classes.shape[0], 7):
            writer.write(row, classes[row:row + 7])
    return path


def test_vectorize_command_attributes_areas_and_whole_raster_equality(tmp_path, run_cli) -> None:
    classes = _classes(1100, 37, seed=1)  # three 512-row reads, two seams
    pred = _write_classes(tmp_path / "pred.tif", classes)
    result = run_cli("vectorize", pred, "--out", tmp_path / "poly.gpkg")
    assert result.exit_code == 0, result
    assert re.search(r"\d+ polygons", result.stdout)
    frame = pyogrio.read_dataframe(tmp_path / "poly.gpkg")
    assert list(frame.columns) == ["class_id", "class_name", "pixels", "area_m2", "geometry"]
    assert frame.crs.to_epsg() == 32618
    assert set(zip(frame.class_id, frame.class_name, strict=True)) <= {
        (0, "field"), (2, "wood"), (5, "lake")}
    np.testing.assert_array_equal(frame.area_m2, frame.pixels * 100.0)  # 10 m pixels
    assert frame.pixels.sum() == (classes != 255).sum()
    transform = Affine(10, 0, 500_000, 0, -10, 4_500_000)
    reference = [(shapely.geometry.shape(g), v) for g, v in
                 shapes(classes, mask=classes != 255, transform=transform)]
    ref_geoms = np.array([g for g, _ in reference], dtype=object)
    ref_values = np.array([v for _, v in reference])
    assert len(frame) == len(reference)
    got = sorted(zip(frame.class_id, shapely.normalize(frame.geometry.values).tolist(),
                     strict=True),
                 key=lambda t: (t[0], t[1].bounds, t[1].area))
    want = sorted(zip(ref_values.astype(int), shapely.normalize(ref_geoms).tolist(),
                      strict=True),
                  key=lambda t: (t[0], t[1].bounds, t[1].area))
    for (v1, g1), (v2, g2) in zip(got, want, strict=True):
        assert v1 == v2 and shapely.equals_exact(g1, g2, tolerance=1e-6)


def test_min_area_simplify_and_formats(tmp_path, run_cli) -> None:
    classes = _classes(60, 50, seed=2, blob=6)
    pred = _write_classes(tmp_path / "pred.tif", classes)
    assert run_cli("vectorize", pred, "--out", tmp_path / "all.fgb").exit_code == 0
    everything = pyogrio.read_dataframe(tmp_path / "all.fgb")
    assert run_cli("vectorize", pred, "--out", tmp_path / "big.gpkg", "--min-area", 1000,
                   "--simplify", 15).exit_code == 0
    big = pyogrio.read_dataframe(tmp_path / "big.gpkg")
    assert len(big) == int((everything.area_m2 >= 1000).sum()) < len(everything)
    assert big.geometry.is_valid.all()
    assert (shapely.get_num_coordinates(big.geometry.values).sum()
            < shapely.get_num_coordinates(
                everything.geometry.values[everything.area_m2 >= 1000]).sum())
    pytest.importorskip("pyarrow")
    import geopandas

    assert run_cli("vectorize", pred, "--out", tmp_path / "all.parquet").exit_code == 0
    assert len(geopandas.read_parquet(tmp_path / "all.parquet")) == len(everything)


def test_geographic_crs_gets_equal_area_square_metres(tmp_path, run_cli) -> None:
    classes = np.zeros((20, 30), dtype=np.uint8)
    classes[5:15, 10:20] = 2
    transform = Affine(0.001, 0, 10.0, 0, -0.001, 60.0)  # ~111 m x ~56 m pixels at 60°N
    pred = _write_classes(tmp_path / "geo.tif", classes, transform, crs="EPSG:4326")
    assert run_cli("vectorize", pred, "--out", tmp_path / "geo.gpkg").exit_code == 0
    frame = pyogrio.read_dataframe(tmp_path / "geo.gpkg")
    geod = pyproj.Geod(ellps="WGS84")
    for geom, area in zip(frame.geometry, frame.area_m2, strict=True):
        assert area == pytest.approx(abs(geod.geometry_area_perimeter(geom)[0]), rel=1e-3)


def test_predict_vector_equals_vectorizing_its_class_raster(geotiff_factory, tmp_path,
                                                            run_cli) -> None:
    spec = ModelSpec(arch="pixel", in_channels=2, classes=3)
    net = build_model(spec)
    with torch.no_grad():
        net.net[0].weight.copy_(torch.tensor([[1.0, 0], [0, 1], [-1, -1]])[:, :, None, None])
        net.net[0].bias.zero_()
    meta = BundleMeta(model=spec, tile=16, overlap=6, classes=TABLE.to_records(),
                      bands=[{"name": n, "mean": 0.0, "std": 1.0} for n in ("a", "b")])
    bundle = save_bundle(tmp_path / "m.rsseg", net, meta)
    rng = np.random.default_rng(3)
    pixels = np.kron(rng.normal(size=(2, 12, 9)), np.ones((4, 4))).astype(np.float32)
    scene = geotiff_factory("scene.tif", pixels[:, :45, :33])
    result = run_cli("predict", scene, "--model", bundle, "--out", tmp_path / "p.tif",
                     "--vector", tmp_path / "p.gpkg")
    assert result.exit_code == 0, result
    assert re.search(r"Polygons: \d+ written", result.stdout)
    assert run_cli("vectorize", tmp_path / "p.tif", "--out", tmp_path / "v.gpkg").exit_code == 0
    a, b = (pyogrio.read_dataframe(tmp_path / name) for name in ("p.gpkg", "v.gpkg"))
    assert _canonical(a.geometry.values, a.class_id) == _canonical(b.geometry.values, b.class_id)
    assert list(a.class_name) != [] and set(a.class_name) <= {"field", "wood", "lake"}


BAD = {
    "extension": (["--out", "{tmp}/p.shp"], r"unsupported extension '\.shp'.*\.gpkg "
                                           r"\(GeoPackage\), \.fgb \(FlatGeobuf\)"),
    "negative min-area": (["--out", "{tmp}/p.gpkg", "--min-area", "-1"],
                          r"--min-area -1 must be 0 or more"),
    "negative simplify": (["--out", "{tmp}/p.gpkg", "--simplify", "-0.5"],
                          r"--simplify -0.5 must be 0 or more"),
    "float raster": (["--out", "{tmp}/p.gpkg"], r"holds float32 values, not class ids"),
    "missing raster": (["--out", "{tmp}/p.gpkg"], r"no such file"),
    "multiband image": (["--out", "{tmp}/p.gpkg"], r"has 3 bands, not one band of class ids"),
}


@pytest.mark.parametrize("case", BAD)
def test_vectorize_bad_input(case, tmp_path, geotiff_factory, run_cli) -> None:
    args, message = BAD[case]
    shape = (3, 4, 4) if case == "multiband image" else (4, 4)
    raster = geotiff_factory("r.tif", np.zeros(shape, dtype=np.float32 if case == "float raster"
                                               else np.uint8))
    if case == "missing raster":
        raster = tmp_path / "nope.tif"
    before = set(tmp_path.rglob("*"))
    result = run_cli("vectorize", raster, *[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 1, result
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert set(tmp_path.rglob("*")) == before


def _polygons(path) -> list[tuple[int, str]]:
    frame = pyogrio.read_dataframe(path)
    return _canonical(frame.geometry.values, frame.class_id)


def test_many_rasters_one_file_each_a_summary_and_a_resumable_rerun(tmp_path, run_cli) -> None:
    rasters = [_write_classes(tmp_path / "in" / f"p{i}.tif", _classes(30, 20 + i, seed=i))
               for i in (0, 2)]
    rasters.insert(1, tmp_path / "in" / "p1.tif")
    rasters[1].write_bytes(b"corrupt")
    out = tmp_path / "polys"
    result = run_cli("vectorize", tmp_path / "in", "--out-dir", out, "--format", "fgb")
    assert result.exit_code == 1 and "1 of 3 scene(s) failed" in result.stderr, result
    assert sorted(p.name for p in out.iterdir()) == ["p0.fgb", "p2.fgb", "summary.csv",
                                                     "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in summary["results"]] == ["ok", "failed", "ok"]
    assert "not a readable raster" in summary["results"][1]["error"]
    for raster in (rasters[0], rasters[2]):  # each equals the raster vectorized alone
        assert run_cli("vectorize", raster, "--out", tmp_path / "one.fgb",
                       "--overwrite").exit_code == 0
        assert _polygons(out / f"{raster.stem}.fgb") == _polygons(tmp_path / "one.fgb")
    rasters[1].unlink()
    _write_classes(rasters[1], _classes(30, 21, seed=1))  # fixed: the rerun does only p1
    rerun = run_cli("vectorize", tmp_path / "in", "--out-dir", out, "--format", "fgb", "--json")
    assert rerun.exit_code == 0, rerun
    report = json.loads(rerun.stdout)
    assert (report["ok"], report["skipped"], report["failed"]) == (1, 2, 0)
    os.utime(rasters[0])  # the raster changed after its polygons: never overwritten silently
    stale = run_cli("vectorize", tmp_path / "in", "--out-dir", out, "--format", "fgb")
    assert stale.exit_code == 1 and "p0.fgb exists and is older than" in stale.stdout, stale
    again = run_cli("vectorize", tmp_path / "in", "--out-dir", out, "--format", "fgb",
                    "--overwrite")
    assert again.exit_code == 0 and "Vectorized 3 scene(s)" in again.stdout, again


BAD_MANY = {
    "--out with several": (["{r}", "{r2}", "--out", "{tmp}/p.gpkg"], 2,
                           r"--out names the polygon file of one scene.*--out-dir"),
    "no --out-dir": (["{r}", "{r2}"], 2, r"several class rasters .* need --out-dir"),
    "no --out": (["{r}"], 2, r"--out is missing.*--out-dir"),
    "out-dir is a file": (["{r}", "{r2}", "--out-dir", "{r2}"], 1, r"--out-dir .*r2.tif is a file"),
    "folder without rasters": (["{tmp}/empty", "--out-dir", "{tmp}/o"], 1,
                               r"empty: no rasters in this folder"),
    "pattern matching nothing": (["{tmp}/*.jp2", "--out-dir", "{tmp}/o"], 1,
                                 r"matches no raster file"),
    "bad format": (["{r}", "{r2}", "--out-dir", "{tmp}/o", "--format", "shp"], 1,
                   r"--format .*unsupported extension '\.shp'"),
    "cluster local:0": (["{r}", "{r2}", "--out-dir", "{tmp}/o", "--cluster", "local:0"], 1,
                        r"local workers must be at least 1"),
    "unreachable scheduler": (["{r}", "{r2}", "--out-dir", "{tmp}/o", "--cluster",
                               "tcp://127.0.0.1:1"], 1, r"cannot reach the Dask scheduler"),
}


@pytest.mark.parametrize("case", BAD_MANY)
def test_vectorize_many_bad_input(case, tmp_path, run_cli) -> None:
    args, code, message = BAD_MANY[case]
    r = _write_classes(tmp_path / "r.tif", _classes(8, 8, seed=0))
    r2 = _write_classes(tmp_path / "r2.tif", _classes(8, 8, seed=1))
    (tmp_path / "empty").mkdir()
    before = set(tmp_path.rglob("*"))
    result = run_cli("vectorize", *[a.format(tmp=tmp_path, r=r, r2=r2) for a in args])
    assert result.exit_code == code, result
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert set(tmp_path.rglob("*")) == before
