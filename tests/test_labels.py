"""Sparse labels in every form → the same (H, W) uint8 array (255 = unlabelled) + class table."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.errors
import shapely
from pyproj import Transformer

from rsseg.classes import IGNORE, ClassTable, read_classes
from rsseg.errors import ConfigError, InputError
from rsseg.io.raster import SceneInfo, open_scene
from rsseg.labels import (
    Tile,
    load_labels,
    load_tile_folder,
    read_label_raster,
    read_tile_labels,
    read_vector_labels,
    scan_tiles,
    select_fraction,
    split_by_group,
)

H, W = 10, 12
X0, Y0, RES = 500_000.0, 4_500_000.0, 10.0  # the conftest grid, EPSG:32618
ROOT = Path(__file__).resolve().parents[1]
NC_CLASSES = ROOT / "rsseg" / "data" / "nc_landsat" / "classes_nc_landcover.yaml"
DUBAI_CLASSES = ROOT / "configs" / "classes_dubai.yaml"


def centre(row: int, col: int) -> tuple[float, float]:
    return X0 + (col + 0.5) * RES, Y0 - (row + 0.5) * RES


@pytest.fixture
def scene(geotiff_factory) -> SceneInfo:
    path = geotiff_factory("scene.tif", np.ones((3, H, W), np.uint16), nodata=0)
    with open_scene(path) as s:
        return s.info


def write_vector(path: Path, geoms: list, crs: str | None = "EPSG:32618", **columns) -> Path:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*crs.*was not provided")
        gpd.GeoDataFrame(columns, geometry=geoms, crs=crs).to_file(path, engine="pyogrio")
    return path


# --- classes --------------------------------------------------------------------------------

def test_classes_files_in_every_format(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text(json.dumps([{"id": 2, "name": "b", "color": [1, 2, 3]},
                                                 {"id": 1, "name": "a"}]))
    (tmp_path / "c.yaml").write_text("classes:\n  - {id: 2, name: b, color: '#010203'}\n"
                                     "  - {id: 1, name: a}\n")
    (tmp_path / "c.csv").write_text("id,name,color\n2,b,#010203\n1,a,\n")
    tables = [read_classes(tmp_path / f"c.{ext}") for ext in ("json", "yaml", "csv")]
    assert tables[0] == tables[1] == tables[2]
    assert tables[0].ids == (1, 2) and tables[0].classes[1].color == (1, 2, 3)
    assert ClassTable.from_records(tables[0].to_records()) == tables[0]
    nc = read_classes(NC_CLASSES)
    assert nc.names == ("developed", "agriculture", "herbaceous", "shrubland", "forest",
                        "water", "sediment")


@pytest.mark.parametrize("text, match", [
    ("[{id: 1, name: a}, {id: 1, name: b}]", "unique"),
    ("[{id: 255, name: a}]", "out of range"),
    ("[{name: a}]", "integer 'id'"),
    ("[{id: 1, name: a, color: '#12'}]", "colour"),
    ("{id: [", "cannot parse"),
])
def test_bad_classes_files(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(InputError, match=match):
        read_classes(tmp_path / "bad.yaml")


def test_class_ids_to_contiguous_indexes() -> None:
    table = ClassTable.from_ids([1, 4, 7])
    labels = np.array([[1, 4], [7, IGNORE]], np.uint8)
    index = table.to_index(labels)
    np.testing.assert_array_equal(index, [[0, 1], [2, IGNORE]])


# --- form 1: label raster on the scene grid -------------------------------------------------

def test_label_raster_nodata_is_the_default_ignore(geotiff_factory, scene) -> None:
    mask = np.zeros((H, W), np.uint8)
    mask[2, 3], mask[5, 6], mask[7, 1] = 1, 3, 3
    got = read_label_raster(geotiff_factory("m.tif", mask, nodata=0), scene)
    assert got.labels.dtype == np.uint8 and got.labels.shape == (H, W)
    assert got.labelled == 3 and got.counts() == {1: 1, 3: 2}
    assert got.labels[0, 0] == IGNORE and got.classes.names == ("class 1", "class 3")
    # without declared nodata, 0 is a class and 255 is unlabelled; --nodata overrides
    plain = geotiff_factory("p.tif", np.where(mask == 0, 255, mask - 1).astype(np.uint8))
    assert read_label_raster(plain, scene).counts() == {0: 1, 2: 2}
    assert read_label_raster(plain, scene, ignore=2).counts() == {0: 1}


def test_label_raster_uses_a_classes_table(geotiff_factory, scene) -> None:
    mask = np.zeros((H, W), np.uint8)
    mask[0, 0], mask[1, 1] = 5, 6
    path = geotiff_factory("m.tif", mask, nodata=0)
    nc = read_classes(NC_CLASSES)
    assert read_label_raster(path, scene, classes=nc).classes is nc
    with pytest.raises(InputError, match=r"\[5, 6\] are not in the classes table"):
        read_label_raster(path, scene, classes=ClassTable.from_ids([1, 2]))


@pytest.mark.parametrize("kwargs, match", [
    ({"array": np.ones((H, W + 2), np.uint8)}, "size"),
    ({"crs": "EPSG:4326"}, "CRS"),
    ({"array": np.ones((2, H, W), np.uint8)}, "one band"),
    ({"array": np.full((H, W), 300, np.uint16)}, "not a class id"),
    ({"array": np.zeros((H, W), np.uint8), "nodata": 0}, "no labelled pixel"),
])
def test_label_raster_errors(geotiff_factory, scene, kwargs, match) -> None:
    kwargs = {"array": np.ones((H, W), np.uint8), **kwargs}
    path = geotiff_factory("bad.tif", kwargs.pop("array"), **kwargs)
    with pytest.raises(InputError, match=match):
        load_labels(path, scene)


# --- form 2: vector points / polygons -------------------------------------------------------

def test_points_burn_their_pixel_and_outside_points_warn(tmp_path, scene) -> None:
    pts = [shapely.Point(centre(1, 2)), shapely.Point(centre(4, 9)), shapely.Point(centre(8, 0)),
           shapely.Point(X0 - 500, Y0 + 500)]
    path = write_vector(tmp_path / "pts.gpkg", pts, cls=["water", "forest", "water", "forest"],
                        code=[6, 5, 6, 5])
    with pytest.warns(UserWarning, match="1 of 4 features fall outside the scene"):
        got = read_vector_labels(path, "cls", scene)
    assert got.classes.names == ("forest", "water") and got.classes.ids == (1, 2)
    assert (got.labels[1, 2], got.labels[4, 9], got.labels[8, 0]) == (2, 1, 2)
    assert got.labelled == 3
    with pytest.warns(UserWarning, match="outside"):
        numeric = read_vector_labels(path, "code", scene)
    assert numeric.counts() == {5: 1, 6: 2}
    with pytest.warns(UserWarning, match="outside"):
        named = load_labels(path, scene, column="cls", classes=read_classes(NC_CLASSES))
    assert named.labels[1, 2] == 6 and named.classes.name_of(6) == "water"


def test_polygons_take_the_pixels_whose_centre_they_cover(tmp_path, scene) -> None:
    # spans columns 1.7..4.3 and rows 2.7..5.3: centres of columns 2-3 and rows 3-4 only
    poly = shapely.box(X0 + 17, Y0 - 53, X0 + 43, Y0 - 27)
    path = write_vector(tmp_path / "poly.gpkg", [poly], code=[3])
    got = read_vector_labels(path, "code", scene)
    expected = np.full((H, W), IGNORE, np.uint8)
    expected[3:5, 2:4] = 3
    np.testing.assert_array_equal(got.labels, expected)


def test_labels_in_another_crs_are_reprojected(tmp_path, scene) -> None:
    to_lonlat = Transformer.from_crs("EPSG:32618", "EPSG:4326", always_xy=True)
    pts = [shapely.Point(to_lonlat.transform(*centre(r, c))) for r, c in ((0, 0), (9, 11))]
    path = write_vector(tmp_path / "ll.geojson", pts, crs="EPSG:4326", code=[1, 2])
    got = read_vector_labels(path, "code", scene)
    assert (got.labels[0, 0], got.labels[9, 11], got.labelled) == (1, 2, 2)


def test_vector_without_crs_is_assumed_on_the_scene_crs(tmp_path, scene) -> None:
    path = write_vector(tmp_path / "nocrs.gpkg", [shapely.Point(centre(3, 3))], crs=None, c=[1])
    with pytest.warns(UserWarning, match="no CRS"):
        assert read_vector_labels(path, "c", scene).labels[3, 3] == 1


def test_vector_errors(tmp_path, scene) -> None:
    path = write_vector(tmp_path / "v.gpkg", [shapely.Point(centre(1, 1))], kind=["a"], n=[1])
    with pytest.raises(InputError, match="no column 'klass'; columns are kind, n"):
        read_vector_labels(path, "klass", scene)
    with pytest.raises(InputError, match="--label-column"):
        load_labels(path, scene)
    with pytest.raises(InputError, match=r"\['a'\] are not in the classes table"):
        read_vector_labels(path, "kind", scene, classes=ClassTable.from_ids([1]))
    far = write_vector(tmp_path / "far.gpkg", [shapely.Point(X0 - 1e4, Y0)], n=[1])
    with pytest.raises(InputError, match="no labelled pixel inside the scene"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_vector_labels(far, "n", scene)
    mars = write_vector(tmp_path / "mars.gpkg", [shapely.Point(1, 1)], crs="IAU_2015:49900",
                        n=[1])
    with pytest.raises(InputError, match="cannot reproject"):
        read_vector_labels(mars, "n", scene)
    not_vector = tmp_path / "junk.gpkg"
    not_vector.write_text("not a geopackage")
    with pytest.raises(InputError, match="not a readable vector file"):
        read_vector_labels(not_vector, "n", scene)


# --- form 3: tile folders -------------------------------------------------------------------

def write_png(path: Path, array: np.ndarray) -> None:
    data = array[None] if array.ndim == 2 else array
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="PNG", width=data.shape[2], height=data.shape[1],
                           count=data.shape[0], dtype="uint8") as dst:
            dst.write(data)


@pytest.fixture
def tile_folder(tmp_path: Path) -> Path:
    """Three groups of four 8x6 tiles; masks for all but 5 of the 12 (255 = unlabelled)."""
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for g in range(3):
        for i in range(4):
            stem = f"tile{g}_part_{i}"
            write_png(tmp_path / "images" / f"{stem}.png", np.full((3, 6, 8), 40 * i, np.uint8))
            if (g * 4 + i) % 5 != 1 and (g, i) != (2, 3):
                mask = np.full((6, 8), IGNORE, np.uint8)
                mask[0, : g + 1] = g
                write_png(tmp_path / "labels" / f"{stem}.png", mask)
    return tmp_path


def test_tile_folder_pairs_by_stem_and_keeps_a_reproducible_fraction(tile_folder) -> None:
    tiles = scan_tiles(tile_folder)
    labelled = [t for t in tiles if t.mask is not None]
    assert len(tiles) == 12 and len(labelled) == 9
    assert select_fraction(labelled, 0.5, seed=3) == select_fraction(labelled[::-1], 0.5, seed=3)
    assert len(select_fraction(labelled, 0.01, seed=0)) == 1  # at least one tile
    small, large = select_fraction(labelled, 0.3, 7), select_fraction(labelled, 0.7, 7)
    assert set(small) <= set(large) and (len(small), len(large)) == (3, 6)
    assert {len(set(select_fraction(labelled, 0.3, s))) for s in range(5)} == {3}
    with pytest.raises(ConfigError):
        select_fraction(labelled, 0, 0)

    subset = load_tile_folder(tile_folder, label_fraction=0.5, seed=1)
    assert len(subset.labelled) == 5 and len(subset.unlabelled) == 7  # round(4.5) = 5
    assert set(subset.classes.ids) <= {0, 1, 2}


def test_split_by_group_keeps_groups_together(tile_folder) -> None:
    tiles = scan_tiles(tile_folder)
    train, val = split_by_group(tiles, 0.3, seed=0, group=r"tile\d+")
    groups = {t.stem.split("_")[0] for t in val}
    assert len(groups) == 1 and len(val) == 4 and len(train) == 8
    assert not groups & {t.stem.split("_")[0] for t in train}
    assert split_by_group(tiles, 0.3, seed=0, group=r"tile\d+") == (train, val)
    train, val = split_by_group(tiles, 0.25, seed=0)  # each tile its own group
    assert (len(train), len(val)) == (9, 3)


def test_tile_masks_read_as_sparse_labels(tile_folder) -> None:
    tile = next(t for t in scan_tiles(tile_folder) if t.stem == "tile2_part_0")
    got = read_tile_labels(tile)
    assert got.counts() == {2: 3} and got.labels.shape == (6, 8)
    write_png(tile.mask, np.zeros((5, 8), np.uint8))
    with pytest.raises(InputError, match="size"):
        read_tile_labels(tile)
    with pytest.raises(InputError, match="no mask"):
        read_tile_labels(Tile(tile.image, None))
    write_png(tile_folder / "labels" / "stray.png", np.zeros((6, 8), np.uint8))
    with pytest.raises(InputError, match="without an image"):
        scan_tiles(tile_folder)
    with pytest.raises(InputError, match="nope: no such folder"):
        scan_tiles(tile_folder / "nope")
    with pytest.raises(InputError, match="no images/ subfolder"):
        scan_tiles(tile_folder / "labels")


# --- the real North Carolina and Dubai labels -----------------------------------------------

@pytest.mark.realdata
def test_nc_labels_in_every_form(shared_data) -> None:
    nc = shared_data / "nc_landsat"
    with open_scene(nc / "landsat7_2000_6band_uint8.tif") as s:
        scene = s.info
    classes = read_classes(NC_CLASSES)
    raster = load_labels(nc / "landsat96_sparse_training_pixels_uint8.tif", scene, classes=classes)
    assert raster.labelled == 2872 and raster.counts()[5] == 939
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        points = load_labels(nc / "vector" / "landsat96_points.shp", scene, column="label",
                             classes=classes)
        by_id = load_labels(nc / "vector" / "landsat96_points.shp", scene, column="id")
    messages = {str(w.message) for w in caught if w.category is UserWarning}
    assert messages == {  # 885 points inside; two pairs share a pixel (same class)
        "landsat96_points.shp: 115 of 1000 features fall outside the scene; skipped",
        "landsat96_points.shp: 2 features inside the scene cover no pixel centre (smaller than "
        "a pixel, or covered by later features)"}
    np.testing.assert_array_equal(points.labels, by_id.labels)
    assert points.labelled == 883
    with pytest.warns(UserWarning, match="1 of 34 features fall outside"):
        polygons = load_labels(nc / "vector" / "landsat96_polygons.shp", scene, column="id")
    assert polygons.labelled == 2264


@pytest.mark.realdata
def test_dubai_tile_folder(shared_data) -> None:
    dubai = shared_data / "dubai"
    tiles = load_tile_folder(dubai, label_fraction=0.05, seed=0,
                             classes=read_classes(DUBAI_CLASSES))
    assert len(tiles.labelled) == 3 and len(tiles.unlabelled) == 51
    train, val = split_by_group(scan_tiles(dubai), 0.2, seed=0, group=r"tile\d+")
    assert len(val) == 9 and not {t.stem[:5] for t in val} & {t.stem[:5] for t in train}
    got = read_tile_labels(tiles.labelled[0], classes=tiles.classes)
    assert got.labels.dtype == np.uint8 and set(got.counts()) == {0, 1, 2, 3, 4}
