"""``--mosaic``: the scenes' class rasters in one COG; predicting a VRT mosaic of many files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as transform_xy

from rsseg.classes import raster_classes
from rsseg.io.raster import open_scene
from rsseg.pipelines.batch import BatchOptions, predict_batch
from rsseg.pipelines.predict import PredictOptions, predict_scene

UTM18 = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_500_000.0)


def _pixels(shape: tuple[int, int], seed: int) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(1, 30, (4, *shape)).astype(np.uint16)
    pixels[:, :2, :3] = 0  # nodata
    return pixels


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_mosaic_places_each_scene_on_one_grid(geotiff_factory, rgbn_bundle, tmp_path,
                                              run_cli) -> None:
    # a: 30x40 at the origin; b: to its right, 10 rows lower; c: overlaps a (a wins there)
    a = geotiff_factory("a.tif", _pixels((30, 40), 1), nodata=0, transform=UTM18)
    b = geotiff_factory("b.tif", _pixels((25, 20), 2), nodata=0,
                        transform=UTM18 * Affine.translation(40, 10))
    c = geotiff_factory("c.tif", _pixels((20, 20), 3), nodata=0,
                        transform=UTM18 * Affine.translation(30, 20))
    result = run_cli("predict", a, b, c, "--model", rgbn_bundle, "--out-dir", tmp_path / "out",
                     "--mosaic", tmp_path / "map.tif")
    assert result.exit_code == 0, result
    assert f"Mosaic: {tmp_path / 'map.tif'}" in result.stdout
    expected = np.full((40, 60), 255, dtype=np.uint8)
    for scene, (row, col) in ((a, (0, 0)), (b, (10, 40)), (c, (20, 30))):
        ids = _read(tmp_path / "out" / f"{scene.stem}_pred.tif")
        view = expected[row:row + ids.shape[0], col:col + ids.shape[1]]
        np.copyto(view, ids, where=view == 255)
    with rasterio.open(tmp_path / "map.tif") as out:
        assert (out.crs, out.transform, out.shape) == (CRS.from_epsg(32618), UTM18, (40, 60))
        assert out.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert out.colormap(1)[5] == (0, 128, 0, 255)
        np.testing.assert_array_equal(out.read(1), expected)
    assert (tmp_path / "map.qml").is_file()
    with open_scene(tmp_path / "map.tif") as mosaic:
        assert raster_classes(mosaic).names == ("water", "field", "forest")


def _sample(pred: Path, grid: Affine, crs: CRS, shape: tuple[int, int]) -> np.ndarray:
    """The class of ``pred``'s pixel under each pixel centre of a ``shape`` grid (255 off it)."""
    with rasterio.open(pred) as src:
        ids, src_grid, src_crs = src.read(1), src.transform, src.crs
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    xs, ys = grid * (cols.ravel() + 0.5, rows.ravel() + 0.5)
    sx, sy = transform_xy(crs, src_crs, xs, ys)
    c, r = (np.floor(v).astype(int) for v in ~src_grid * (np.asarray(sx), np.asarray(sy)))
    inside = (r >= 0) & (r < ids.shape[0]) & (c >= 0) & (c < ids.shape[1])
    out = np.full(r.shape, 255, dtype=np.uint8)
    out[inside] = ids[r[inside], c[inside]]
    return out.reshape(shape)


def test_mosaic_across_two_crss_reprojects_with_nearest(geotiff_factory, rgbn_bundle,
                                                        tmp_path) -> None:
    east = geotiff_factory("east.tif", _pixels((30, 30), 4), nodata=0, transform=UTM18)
    # the ground just west of east.tif, overlapping it, in UTM 17N
    x, y = transform_xy("EPSG:32618", "EPSG:32617", [499_800.0], [4_500_050.0])
    west = geotiff_factory("west.tif", _pixels((30, 30), 5), nodata=0, crs="EPSG:32617",
                           transform=Affine(10.0, 0.0, x[0], 0.0, -10.0, y[0]))
    for crs, grid_of in ((None, east), ("EPSG:32617", west)):
        summary = predict_batch(
            [east, west], rgbn_bundle, tmp_path / "out",
            BatchOptions(PredictOptions(overwrite=True), mosaic=tmp_path / "map.tif", crs=crs))
        assert summary.mosaic == tmp_path / "map.tif"
        with rasterio.open(tmp_path / "map.tif") as out:
            mosaic, grid, mosaic_crs = out.read(1), out.transform, out.crs
        with rasterio.open(grid_of) as src:  # on the pixels of the scene in the mosaic's CRS
            assert mosaic_crs == src.crs and (grid.a, grid.e) == (src.res[0], -src.res[1])
            assert np.allclose(~grid * (src.transform.c, src.transform.f),
                               np.round(~grid * (src.transform.c, src.transform.f)))
        assert mosaic.shape[1] > 35  # both scenes, side by side
        # each mosaic pixel holds the class under its centre in east.tif (listed first: it
        # wins where they overlap), else in west.tif
        expected = _sample(tmp_path / "out" / "east_pred.tif", grid, mosaic_crs, mosaic.shape)
        other = _sample(tmp_path / "out" / "west_pred.tif", grid, mosaic_crs, mosaic.shape)
        np.copyto(expected, other, where=expected == 255)
        assert (expected != 255).sum() > 1500
        np.testing.assert_array_equal(mosaic, expected)


def test_a_failed_scene_leaves_the_mosaic_for_the_rerun(geotiff_factory, rgbn_bundle,
                                                        tmp_path) -> None:
    a = geotiff_factory("a.tif", _pixels((20, 20), 1), nodata=0)
    broken = tmp_path / "b.tif"
    broken.write_bytes(b"not yet")
    notes: list[str] = []
    options = BatchOptions(mosaic=tmp_path / "map.tif")
    summary = predict_batch([a, broken], rgbn_bundle, tmp_path / "out", options,
                            notify=notes.append)
    assert summary.mosaic is None and not (tmp_path / "map.tif").exists()
    assert notes[-1].startswith(f"Mosaic {tmp_path / 'map.tif'} not written: 1 scene(s) failed")
    geotiff_factory("b.tif", _pixels((20, 20), 2), nodata=0,
                    transform=UTM18 * Affine.translation(20, 0))
    rerun = predict_batch([a, broken], rgbn_bundle, tmp_path / "out", options)
    assert [r.status for r in rerun.results] == ["skipped", "ok"]
    assert _read(tmp_path / "map.tif").shape == (20, 40)
    notes.clear()
    predict_batch([a, broken], rgbn_bundle, tmp_path / "out", options, notify=notes.append)
    assert notes[0] == f"{tmp_path / 'map.tif'} is complete, kept"


def _vrt(parts: list[tuple[Path, int, int, int, int]], width: int, height: int,
         transform: Affine, dtype: str = "UInt16") -> str:
    """VRT XML stacking the 4-band ``parts`` ``(path, col, row, w, h)`` into one raster."""
    bands = []
    for band in range(1, 5):
        sources = "".join(
            f'<SimpleSource><SourceFilename relativeToVRT="1">{p.name}</SourceFilename>'
            f"<SourceBand>{band}</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
            f'<DstRect xOff="{c}" yOff="{r}" xSize="{w}" ySize="{h}"/></SimpleSource>'
            for p, c, r, w, h in parts)
        bands.append(f'<VRTRasterBand dataType="{dtype}" band="{band}">'
                     f"<NoDataValue>0</NoDataValue>{sources}</VRTRasterBand>")
    geo = ", ".join(f"{v:.10g}" for v in transform.to_gdal())
    return (f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">'
            f"<SRS>{CRS.from_epsg(32618).to_wkt()}</SRS><GeoTransform>{geo}</GeoTransform>"
            + "".join(bands) + "</VRTDataset>")


def test_a_vrt_of_four_files_predicts_as_the_whole_scene(geotiff_factory, rgbn_bundle,
                                                         tmp_path) -> None:
    pixels = _pixels((70, 90), 6)
    whole = geotiff_factory("whole.tif", pixels, nodata=0)
    parts = []
    for r0, r1 in ((0, 33), (33, 70)):
        for c0, c1 in ((0, 41), (41, 90)):
            path = geotiff_factory(f"parts/p{r0}_{c0}.tif", pixels[:, r0:r1, c0:c1].copy(),
                                   nodata=0, transform=UTM18 * Affine.translation(c0, r0))
            parts.append((path, c0, r0, c1 - c0, r1 - r0))
    vrt = tmp_path / "parts" / "mosaic.vrt"
    vrt.write_text(_vrt(parts, 90, 70, UTM18))
    with rasterio.open(vrt) as src:
        np.testing.assert_array_equal(src.read(), pixels)  # the VRT is the scene
    predict_scene(whole, rgbn_bundle, tmp_path / "whole_pred.tif")
    predict_scene(vrt, rgbn_bundle, tmp_path / "vrt_pred.tif")
    np.testing.assert_array_equal(_read(tmp_path / "vrt_pred.tif"),
                                  _read(tmp_path / "whole_pred.tif"))


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.parametrize(("extra", "code", "message"), [
    (["--crs", "EPSG:32618"], 2, "--crs is the mosaic's CRS.*add --mosaic"),
    (["--mosaic", "map.png"], 2, "the mosaic is a Cloud-Optimized GeoTIFF"),
    (["--mosaic", "map.tif", "--crs", "EPSG:99999999"], 1, "--crs 'EPSG:99999999' is not a "),
    (["--mosaic", "exists.tif"], 1, "exists.tif already exists"),
    (["--mosaic", "map.tif", "plain.tif"], 1, "plain.tif has no CRS, so it has no place in"),
])
def test_bad_mosaic_flags_are_one_line_before_any_scene(extra, code, message, geotiff_factory,
                                                        rgbn_bundle, tmp_path, run_cli,
                                                        monkeypatch) -> None:
    geotiff_factory("a.tif", _pixels((20, 20), 1), nodata=0)
    geotiff_factory("plain.tif", _pixels((20, 20), 1), nodata=0, crs=None)
    (tmp_path / "exists.tif").write_bytes(b"keep")
    monkeypatch.chdir(tmp_path)
    before = set(tmp_path.rglob("*"))
    result = run_cli("predict", "a.tif", "--model", rgbn_bundle, "--out-dir", "out", *extra)
    assert result.exit_code == code and result.stderr.count("\n") == 1, result
    assert re.search(message, result.stderr), result.stderr
    assert set(tmp_path.rglob("*")) == before
