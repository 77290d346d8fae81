"""STAC inputs: an item's single-band assets stacked as the model's bands, for predict and tile."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine

from rsseg.io.inputs import SceneInput
from rsseg.io.stac import ensure_vrt, stac_scenes
from rsseg.pipelines.predict import PredictOptions, predict_scene

GRID10 = Affine(10.0, 0.0, 600_000.0, 0.0, -10.0, 5_000_000.0)
GRID20 = Affine(20.0, 0.0, 600_000.0, 0.0, -20.0, 5_000_000.0)
BANDS = {"B04": "red", "B03": "green", "B02": "blue"}  # 10 m; B08 "nir" is 20 m


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RSSEG_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _item(folder: Path, geotiff_factory, item_id: str, seed: int, crs_of_b08: str = "EPSG:32618",
          drop: tuple[str, ...] = ()) -> tuple[Path, np.ndarray]:
    """An item JSON in ``folder`` with B04/B03/B02 (10 m, 20x24), B08 (20 m, 10x12), SCL (20 m,
    no band metadata) and visual (3 bands); and the 4-band stack expected at 10 m."""
    rng = np.random.default_rng(seed)
    fine = {k: rng.integers(1, 40, (20, 24)).astype(np.uint16) for k in BANDS}
    nir = rng.integers(1, 40, (10, 12)).astype(np.uint16)
    nir[0, 0] = 0  # nodata
    item = pystac.Item(item_id, {"type": "Point", "coordinates": [-72.0, 45.0]},
                       [-72.0, 45.0, -72.0, 45.0], datetime(2024, 6, 1, tzinfo=timezone.utc), {})
    rel = folder.name
    for key, name in BANDS.items():
        geotiff_factory(f"{rel}/{key}.tif", fine[key], nodata=0, transform=GRID10)
        item.add_asset(key, pystac.Asset(f"./{key}.tif", media_type=pystac.MediaType.COG,
                                         extra_fields={"eo:bands": [{"name": key,
                                                                     "common_name": name}]}))
    geotiff_factory(f"{rel}/B08.tif", nir, nodata=0, transform=GRID20, crs=crs_of_b08)
    item.add_asset("B08", pystac.Asset("./B08.tif", extra_fields={
        "eo:bands": [{"name": "B08", "common_name": "nir"}]}))
    geotiff_factory(f"{rel}/SCL.tif", nir.astype(np.uint8), transform=GRID20)
    item.add_asset("SCL", pystac.Asset("./SCL.tif"))
    geotiff_factory(f"{rel}/visual.tif", np.stack(list(fine.values())).astype(np.uint8),
                    transform=GRID10)
    item.add_asset("visual", pystac.Asset("./visual.tif", extra_fields={"eo:bands": [
        {"name": k, "common_name": n} for k, n in BANDS.items()]}))
    for key in drop:
        del item.assets[key]
    path = folder / f"{item_id}.json"
    path.write_text(json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False)))
    stack = np.stack([*fine.values(), nir.repeat(2, axis=0).repeat(2, axis=1)])
    return path, stack


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _expected(stack: np.ndarray, geotiff_factory, bundle: Path, tmp_path: Path) -> np.ndarray:
    """The class raster of ``stack`` written as one 4-band GeoTIFF and predicted."""
    scene = geotiff_factory("stack.tif", stack, nodata=0, transform=GRID10)
    predict_scene(scene, bundle, tmp_path / "expected.tif", PredictOptions(overwrite=True))
    return _read(tmp_path / "expected.tif")


def test_an_item_predicts_as_its_stacked_bands_at_the_finest_resolution(
        geotiff_factory, rgbn_bundle, tmp_path, run_cli) -> None:
    item, stack = _item(tmp_path / "s2", geotiff_factory, "S2A_18TXR_20240601", 1)
    [scene] = stac_scenes(item, tmp_path / "cache" / "stac", bands=["red", "green", "blue",
                                                                      "nir"])
    with rasterio.open(scene.path) as vrt:
        assert (vrt.crs.to_epsg(), vrt.transform, vrt.shape) == (32618, GRID10, (20, 24))
        assert vrt.descriptions == ("red", "green", "blue", "nir") and vrt.nodata == 0
        np.testing.assert_array_equal(vrt.read(), stack)  # B08 repeated 2x2, nearest
    result = run_cli("predict", item, "--model", rgbn_bundle, "--out-dir", tmp_path / "out")
    assert result.exit_code == 0, result
    assert f"[1/1] ok {item}#S2A_18TXR_20240601 -> " in result.stdout
    out = tmp_path / "out" / "S2A_18TXR_20240601_pred.tif"
    with rasterio.open(out) as pred:
        assert (pred.crs.to_epsg(), pred.transform) == (32618, GRID10)
    np.testing.assert_array_equal(_read(out), _expected(stack, geotiff_factory, rgbn_bundle,
                                                        tmp_path))


def test_assets_flag_picks_the_assets_and_bands_follow_their_names(
        geotiff_factory, rgbn_bundle, tmp_path, run_cli) -> None:
    item, stack = _item(tmp_path / "s2", geotiff_factory, "item", 2)
    expected = _expected(stack, geotiff_factory, rgbn_bundle, tmp_path)
    for order in ("B04,B03,B02,B08", "B08,B04,B03,B02"):
        result = run_cli("predict", item, "--model", rgbn_bundle, "--out-dir", tmp_path / order,
                         "--assets", order)
        assert result.exit_code == 0, result
        assert ("bands taken by name in the model's order" in result.stderr) == order.startswith(
            "B08")
        np.testing.assert_array_equal(_read(tmp_path / order / "item_pred.tif"), expected)


def test_item_collections_and_catalogs_give_one_scene_per_item(geotiff_factory, rgbn_bundle,
                                                               tmp_path) -> None:
    items = [_item(tmp_path / f"i{n}", geotiff_factory, f"item{n}", n)[0] for n in range(2)]
    loaded = [pystac.read_file(str(p)) for p in items]
    collection = tmp_path / "items.json"
    collection.write_text(json.dumps(pystac.ItemCollection(loaded).to_dict(
        transform_hrefs=False)))
    catalog = pystac.Catalog("archive", "two items")
    for item in loaded:
        item.make_asset_hrefs_absolute()  # the assets stay where they are
        item.set_self_href(None)
        catalog.add_item(item)
    catalog.normalize_and_save(str(tmp_path / "catalog"),
                               catalog_type=pystac.CatalogType.SELF_CONTAINED)
    bands = ["red", "green", "blue", "nir"]
    for document in (collection, tmp_path / "catalog" / "catalog.json"):
        scenes = stac_scenes(document, tmp_path / "cache", bands=bands)
        assert [s.name for s in scenes] == ["item0", "item1"]
        for scene, n in zip(scenes, range(2), strict=True):
            with rasterio.open(scene.path) as vrt:
                np.testing.assert_array_equal(vrt.read(), _item(
                    tmp_path / f"check{n}", geotiff_factory, f"item{n}", n)[1])


def test_tile_stacks_every_single_band_asset_with_a_common_name(geotiff_factory, tmp_path,
                                                                run_cli) -> None:
    item, stack = _item(tmp_path / "s2", geotiff_factory, "item", 3)
    result = run_cli("tile", item, "--out", tmp_path / "tiles", "--size", 10)
    assert result.exit_code == 0, result
    stats = json.loads((tmp_path / "tiles" / "stats.json").read_text())
    assert [b["name"] for b in stats["bands"]] == ["red", "green", "blue", "nir"]
    with rasterio.open(tmp_path / "tiles" / "tiles" / "000000.tif") as first:
        np.testing.assert_array_equal(first.read(), stack[:, :10, :10])
    picked = run_cli("tile", item, "--out", tmp_path / "t2", "--size", 10, "--assets", "B08,B04")
    assert picked.exit_code == 0, picked
    stats = json.loads((tmp_path / "t2" / "stats.json").read_text())
    assert [b["name"] for b in stats["bands"]] == ["nir", "red"]


def test_a_worker_without_the_vrt_writes_its_own(tmp_path) -> None:
    scene = SceneInput("item", tmp_path / "elsewhere" / "item-0.vrt", "<VRTDataset/>")
    assert ensure_vrt(scene) == scene.path and scene.path.read_text() == "<VRTDataset/>"


def _bad(case: str, tmp_path: Path, geotiff_factory) -> tuple[list, str]:
    if case == "missing band":
        item, _ = _item(tmp_path / "s2", geotiff_factory, "item", 1, drop=("B08",))
        return [item], ("item item has no asset for the model's band 'nir'; it has B04 \\(red\\), "
                        "B03 \\(green\\), B02 \\(blue\\), SCL, visual \\(red, green, blue\\)")
    if case == "unknown asset":
        item, _ = _item(tmp_path / "s2", geotiff_factory, "item", 1)
        return [item, "--assets", "B04,B03,B02,B8A"], "has no asset B8A; it has B04 \\(red\\)"
    if case == "CRSs differ":
        item, _ = _item(tmp_path / "s2", geotiff_factory, "item", 1, crs_of_b08="EPSG:32619")
        return [item], "its assets must share a CRS; they have B04 EPSG:32618, .*B08 EPSG:32619"
    if case == "multi-band asset":
        item, _ = _item(tmp_path / "s2", geotiff_factory, "item", 1)
        return [item, "--assets", "visual,B03,B02,B08"], "asset visual .* has 3 bands"
    if case == "missing file":
        item, _ = _item(tmp_path / "s2", geotiff_factory, "item", 1)
        (tmp_path / "s2" / "B03.tif").unlink()
        return [item], "item item, asset B03: cannot open .*B03.tif"
    if case == "unreachable href":
        item, _ = _item(tmp_path / "s2", geotiff_factory, "item", 1)
        data = json.loads(item.read_text())
        data["assets"]["B02"]["href"] = "http://127.0.0.1:1/B02.tif"
        item.write_text(json.dumps(data))
        return [item], "asset B02: cannot open /vsicurl/http://127.0.0.1:1/B02.tif"
    if case == "not STAC":
        (tmp_path / "x.json").write_text('{"type": "Feature", "hello": 1}')
        return [tmp_path / "x.json"], "x.json: not a valid STAC document"
    if case == "not JSON":
        (tmp_path / "x.json").write_text("{oops")
        return [tmp_path / "x.json"], "x.json: not a STAC JSON document"
    if case == "empty catalog":
        pystac.Catalog("empty", "nothing").normalize_and_save(
            str(tmp_path / "cat"), catalog_type=pystac.CatalogType.SELF_CONTAINED)
        return [tmp_path / "cat" / "catalog.json"], "the STAC document holds no items"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing band", "unknown asset", "CRSs differ",
                                  "multi-band asset", "missing file", "unreachable href",
                                  "not STAC", "not JSON", "empty catalog"])
def test_bad_stac_input_is_one_line_and_nothing_written(case, geotiff_factory, rgbn_bundle,
                                                        tmp_path, run_cli) -> None:
    args, message = _bad(case, tmp_path, geotiff_factory)
    before = set(tmp_path.rglob("*"))
    result = run_cli("predict", *args, "--model", rgbn_bundle, "--out-dir", tmp_path / "out")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result
    assert result.stderr.startswith("Error: ") and re.search(message, result.stderr), result
    assert set(tmp_path.rglob("*")) == before


def test_assets_without_a_stac_document_is_a_usage_error(geotiff_factory, rgbn_bundle,
                                                         tmp_path, run_cli) -> None:
    scene = geotiff_factory("a.tif", np.ones((4, 8, 8), dtype=np.uint16))
    for command in (["predict", scene, "--model", rgbn_bundle, "--out-dir", tmp_path / "out"],
                    ["tile", scene, "--out", tmp_path / "tiles"]):
        result = run_cli(*command, "--assets", "B04")
        assert result.exit_code == 2 and "--assets picks the assets of STAC items" in (
            result.stderr), result
    assert not (tmp_path / "out").exists() and not (tmp_path / "tiles").exists()
