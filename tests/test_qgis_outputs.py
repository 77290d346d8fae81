"""QGIS-ready prediction outputs: class names/colours (COG + .qml + .aux.xml), confidence,
probabilities, quicklook, outputs published together, bad input. PyQGIS check when installed."""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import rasterio
import torch

from rsseg.classes import raster_classes
from rsseg.inference.sliding import SlidingWindowPredictor
from rsseg.io.raster import open_scene
from rsseg.models.bundle import BundleMeta, save_bundle
from rsseg.models.factory import ModelSpec, build_model
from rsseg.quicklook import ClassThumbnail, resolve_bands

NODATA = 65535
WEIGHTS = np.array([[1, -2, 3], [0, 1, 1], [-1, 2, -1]], dtype=np.float32)
BIAS = np.array([0, 1, -1], dtype=np.float32)
MEAN, STD = 5.0, 2.0
BANDS = ("B1_blue", "B2_green", "B3_red")
CLASSES = [{"id": 1, "name": "forest & <woods>", "color": (56, 129, 78)},
           {"id": 4, "name": "water", "color": (70, 107, 159)},
           {"id": 6, "name": "built-up", "color": (235, 0, 0)}]
IDS = np.array([c["id"] for c in CLASSES], dtype=np.uint8)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Per-pixel 1x1-conv bundle with known weights: logits = W @ ((x - 5) / 2) + b."""
    spec = ModelSpec(arch="pixel", in_channels=3, classes=3)
    net = build_model(spec)
    with torch.no_grad():
        net.net[0].weight.copy_(torch.from_numpy(WEIGHTS)[:, :, None, None])
        net.net[0].bias.copy_(torch.from_numpy(BIAS))
    meta = BundleMeta(model=spec, tile=16, overlap=4, resolution=10.0, classes=CLASSES,
                      bands=[{"name": n, "mean": MEAN, "std": STD} for n in BANDS])
    return save_bundle(tmp_path_factory.mktemp("bundle") / "pixel.rsseg", net, meta)


def _pixels(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 11, (3, height, width)).astype(np.uint16)
    pixels[:, rng.random((height, width)) < 0.1] = NODATA
    return pixels


def _softmax(pixels: np.ndarray) -> np.ndarray:
    """The per-pixel model's probabilities ``(K, H, W)`` in float64."""
    x = (pixels.astype(np.float64) - MEAN) / STD
    logits = np.einsum("kc,chw->khw", WEIGHTS.astype(np.float64), x) + BIAS[:, None, None]
    e = np.exp(logits - logits.max(axis=0))
    return e / e.sum(axis=0)


def _gdal_band_classes(path: Path) -> tuple[list[str], list[list[str]]]:
    """Category names and raster attribute table rows as GDAL itself reads them (C API)."""
    libs = sorted({line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                   if "libgdal" in line})
    if not libs:
        pytest.skip("cannot locate the GDAL library rasterio uses")
    lib = ctypes.CDLL(libs[0])
    ptr, c_int, c_str = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    for name, res, args in [("GDALOpen", ptr, [c_str, c_int]),
                            ("GDALGetRasterBand", ptr, [ptr, c_int]),
                            ("GDALGetDefaultRAT", ptr, [ptr]),
                            ("GDALGetRasterCategoryNames", ctypes.POINTER(c_str), [ptr]),
                            ("GDALRATGetRowCount", c_int, [ptr]),
                            ("GDALRATGetColumnCount", c_int, [ptr]),
                            ("GDALRATGetValueAsString", c_str, [ptr, c_int, c_int]),
                            ("GDALClose", None, [ptr])]:
        getattr(lib, name).restype = res
        getattr(lib, name).argtypes = args
    lib.GDALAllRegister()
    dataset = lib.GDALOpen(str(path).encode(), 0)
    band = lib.GDALGetRasterBand(dataset, 1)
    rat = lib.GDALGetDefaultRAT(band)  # also makes GTiff load the PAM sidecar (lazily loaded)
    rows = [[lib.GDALRATGetValueAsString(rat, r, c).decode()
             for c in range(lib.GDALRATGetColumnCount(rat))]
            for r in range(lib.GDALRATGetRowCount(rat))] if rat else []
    names_ptr = lib.GDALGetRasterCategoryNames(band)
    names = []
    while names_ptr and names_ptr[len(names)] is not None:
        names.append(names_ptr[len(names)].decode())
    lib.GDALClose(dataset)
    return names, rows


def test_class_raster_carries_names_and_colours_for_gdal_and_qgis(geotiff_factory, bundle,
                                                                  tmp_path, run_cli) -> None:
    scene = geotiff_factory("scene.tif", _pixels(30, 41, seed=1), nodata=NODATA)
    out = tmp_path / "out" / "pred.tif"
    result = run_cli("predict", scene, "--model", bundle, "--out", out)
    assert result.exit_code == 0, result
    assert sorted(p.name for p in out.parent.iterdir()) == ["pred.qml", "pred.tif",
                                                            "pred.tif.aux.xml"]
    with rasterio.open(out) as pred:  # inside the COG: colour table, CLASSES tag
        assert pred.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert json.loads(pred.tags()["CLASSES"])[0]["name"] == "forest & <woods>"
        cmap = pred.colormap(1)
        assert cmap[4] == (70, 107, 159, 255) and cmap[255][3] == 0
    names, rat = _gdal_band_classes(out)  # the PAM sidecar, through GDAL
    assert names[:7] == ["", "forest & <woods>", "", "", "water", "", "built-up"]
    assert rat == [["1", "forest & <woods>", "56", "129", "78", "255"],
                   ["4", "water", "70", "107", "159", "255"],
                   ["6", "built-up", "235", "0", "0", "255"]]
    os.remove(out.parent / "pred.tif.aux.xml")  # rsseg reads names from the tag alone too
    with open_scene(out) as pred:
        assert raster_classes(pred).names == ("forest & <woods>", "water", "built-up")
    style = ElementTree.parse(out.parent / "pred.qml").getroot()
    renderer = style.find("pipe/rasterrenderer")
    assert renderer.get("type") == "paletted" and renderer.get("band") == "1"
    entries = [(e.get("value"), e.get("label"), e.get("color"))
               for e in renderer.findall("colorPalette/paletteEntry")]
    assert entries == [("1", "forest & <woods>", "#38814e"), ("4", "water", "#466b9f"),
                       ("6", "built-up", "#eb0000")]
    transparent = renderer.find("rasterTransparency/singleValuePixelList/pixelListEntry")
    assert (transparent.get("min"), transparent.get("percentTransparent")) == ("255", "100")


def _qgis_python() -> str | None:
    python = os.environ.get("RSSEG_QGIS_PYTHON") or shutil.which("python3", path="/usr/bin")
    if not python:
        return None
    probe = subprocess.run([python, "-c", "import qgis.core"], capture_output=True, timeout=60,
                           env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    return python if probe.returncode == 0 else None


def test_qgis_opens_prediction_with_named_classes(geotiff_factory, bundle, tmp_path,
                                                  run_cli) -> None:
    python = _qgis_python()
    if python is None:
        pytest.skip("PyQGIS not importable (apt-get install python3-qgis qgis-providers; "
                    "or set RSSEG_QGIS_PYTHON)")
    scene = geotiff_factory("scene.tif", _pixels(30, 41, seed=2), nodata=NODATA)
    out = tmp_path / "pred.tif"
    assert run_cli("predict", scene, "--model", bundle, "--out", out, "--vector",
                   tmp_path / "pred.gpkg").exit_code == 0
    done = subprocess.run([python, str(ROOT / "tools" / "qgis_check.py"), str(out), "--vector",
                           str(tmp_path / "pred.gpkg"), "--png", str(tmp_path / "q.png"),
                           "--json"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    raster = report["raster"]
    assert raster["crs"] == "EPSG:32618" and raster["renderer"] == "paletted"
    assert [c["label"] for c in raster["classes"]] == ["forest & <woods>", "water", "built-up"]
    assert raster["nodata"] == 255 and raster["nodata_transparent"]
    assert report["vector"]["valid"] and report["vector"]["features"] > 0
    assert (tmp_path / "q.png").stat().st_size > 0


def test_confidence_and_probabilities_match_the_model(geotiff_factory, bundle, tmp_path,
                                                      run_cli) -> None:
    pixels = _pixels(37, 45, seed=3)
    scene = geotiff_factory("scene.tif", pixels, nodata=NODATA, blocksize=16)
    result = run_cli("predict", scene, "--model", bundle, "--out", tmp_path / "pred.tif",
                     "--confidence", tmp_path / "conf.tif", "--probs", tmp_path / "probs.tif")
    assert result.exit_code == 0, result
    assert "conf.tif" in result.stdout and "probs.tif" in result.stdout
    nodata = (pixels == NODATA).all(axis=0)
    expected = _softmax(pixels)
    with rasterio.open(scene) as src, rasterio.open(tmp_path / "conf.tif") as conf, \
            rasterio.open(tmp_path / "probs.tif") as probs:
        for out in (conf, probs):
            assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
            assert out.dtypes[0] == "uint8"
            assert out.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert conf.nodata == 0 and conf.descriptions == ("confidence",)
        c = conf.read(1)
        assert np.all(c[nodata] == 0) and np.all(c[~nodata] >= 1)
        np.testing.assert_allclose(c[~nodata], np.rint(expected.max(0) * 255)[~nodata], atol=1)
        assert probs.count == 3 and probs.nodata is None
        assert probs.descriptions == ("forest & <woods>", "water", "built-up")
        np.testing.assert_array_equal(probs.read_masks(1) == 0, nodata)
        p = probs.read()
        np.testing.assert_allclose(p[:, ~nodata], np.rint(expected * 255)[:, ~nodata], atol=1)


def test_preview_shows_scene_prediction_and_legend(geotiff_factory, bundle, tmp_path,
                                                   run_cli) -> None:
    import matplotlib.image

    scene = geotiff_factory("scene.tif", _pixels(40, 60, seed=4), nodata=NODATA)
    result = run_cli("predict", scene, "--model", bundle, "--out", tmp_path / "pred.tif",
                     "--preview", tmp_path / "look.png", "--preview-bands", "3,b2_GREEN,1")
    assert result.exit_code == 0, result
    image = (matplotlib.image.imread(tmp_path / "look.png")[..., :3] * 255).round()
    colours = {tuple(c["color"]) for c in CLASSES}
    present = {tuple(int(v) for v in px) for px in image.reshape(-1, 3)}
    assert colours <= present  # map and legend patches in the class colours


def test_thumbnail_and_band_choice() -> None:
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 5, (53, 31)).astype(np.uint8)
    thumb = ClassThumbnail(53, 31, 255, step=4)
    row = 0
    for height in (5, 1, 9, 13, 25):
        thumb.add(row, classes[row:row + height])
        row += height
    np.testing.assert_array_equal(thumb.image, classes[::4, ::4])
    assert resolve_bands(["B1_blue", "B2_green", "B3_red", "B4_nir"], None) == (3, 2, 1)
    assert resolve_bands(["nearinfrared", "Red", "Green", "Blue"], None) == (2, 3, 4)
    assert resolve_bands(["a", "b", "c", "d"], None) == (1, 2, 3)
    assert resolve_bands(["pan"], None) == (1,)
    assert resolve_bands(["a", "b", "c"], "c, 1 ,B") == (3, 1, 2)


def test_outputs_appear_together_or_not_at_all(geotiff_factory, bundle, tmp_path,
                                               monkeypatch) -> None:
    from rsseg.pipelines.outputs import OutputOptions
    from rsseg.pipelines.predict import PredictOptions, predict_scene

    scene = geotiff_factory("scene.tif", _pixels(60, 20, seed=5), nodata=NODATA)
    real = SlidingWindowPredictor.probabilities
    calls = []

    def interrupt_third_batch(self, x, weight=None):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, x, weight)

    monkeypatch.setattr(SlidingWindowPredictor, "probabilities", interrupt_third_batch)
    out = tmp_path / "new" / "deeper"
    outputs = OutputOptions(confidence=out / "c.tif", probs=out / "p.tif",
                            vector=out / "v.gpkg", preview=out / "v.png")
    with pytest.raises(KeyboardInterrupt):
        predict_scene(scene, bundle, out / "pred.tif",
                      PredictOptions(batch_size=1, tile=16, outputs=outputs))
    assert len(calls) == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


def _bad(case: str, tmp_path: Path, scene: Path, bundle: Path) -> list:
    out = tmp_path / "o" / "pred.tif"
    extra = {
        "vector extension": ["--vector", tmp_path / "o" / "p.shp"],
        "negative min-area": ["--vector", tmp_path / "o" / "p.gpkg", "--min-area", -5],
        "min-area without vector": ["--min-area", 10],
        "preview band": ["--preview", tmp_path / "o" / "p.png", "--preview-bands",
                         "red,green,B1_blue"],
        "preview type": ["--preview", tmp_path / "o" / "p.jpg"],
        "same as --out": ["--confidence", out],
        "probs type": ["--probs", tmp_path / "o" / "p.png"],
    }[case]
    return ["predict", scene, "--model", bundle, "--out", out, *extra]


BAD = {
    "vector extension": r"unsupported extension '\.shp'.*\.gpkg \(GeoPackage\), \.fgb "
                        r"\(FlatGeobuf\), \.parquet \(GeoParquet\)",
    "negative min-area": r"--min-area -5 must be 0 or more",
    "min-area without vector": r"--min-area/--simplify apply to polygons.*--vector",
    "preview band": r"no band 'red'.*bands are 1 B1_blue, 2 B2_green, 3 B3_red",
    "preview type": r"quicklook is a PNG",
    "same as --out": r"--confidence .* is also given as --out",
    "probs type": r"--probs .*name it \.tif",
}


@pytest.mark.parametrize("case", BAD)
def test_bad_output_flags_are_one_line_errors(case, geotiff_factory, bundle, tmp_path,
                                              run_cli) -> None:
    scene = geotiff_factory("scene.tif", _pixels(8, 8, seed=6), nodata=NODATA)
    before = set(tmp_path.rglob("*"))
    result = run_cli(*_bad(case, tmp_path, scene, bundle))
    assert result.exit_code == 1, result
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert re.search(BAD[case], result.stderr), result.stderr
    assert set(tmp_path.rglob("*")) == before


def test_existing_style_needs_overwrite_and_is_replaced(geotiff_factory, bundle, tmp_path,
                                                        run_cli) -> None:
    scene = geotiff_factory("scene.tif", _pixels(10, 12, seed=7), nodata=NODATA)
    (tmp_path / "pred.qml").write_text("old style")
    refused = run_cli("predict", scene, "--model", bundle, "--out", tmp_path / "pred.tif")
    assert refused.exit_code == 1 and "pred.qml already exists" in refused.stderr
    assert not (tmp_path / "pred.tif").exists()
    done = run_cli("predict", scene, "--model", bundle, "--out", tmp_path / "pred.tif",
                   "--overwrite")
    assert done.exit_code == 0 and "paletted" in (tmp_path / "pred.qml").read_text()
    # a class raster replaced by a confidence raster loses its class sidecars
    done = run_cli("predict", scene, "--model", bundle, "--out", tmp_path / "other.tif",
                   "--confidence", tmp_path / "pred.tif", "--overwrite")
    assert done.exit_code == 0
    assert not (tmp_path / "pred.qml").exists() and not (tmp_path / "pred.tif.aux.xml").exists()
