"""``rsseg tile``: tiles equal their source windows bit for bit, stats, reads, bad input."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.windows import Window

from rsseg.errors import InputError, Stopped
from rsseg.io import raster
from rsseg.io.stats import RunningStats
from rsseg.io.tileset import load_tileset
from rsseg.pipelines.tile import TileOptions, tile_scenes


def _scene(dtype: str, shape: tuple[int, int, int] = (3, 45, 37), seed: int = 0) -> np.ndarray:
    """Random pixels with a nodata (0 / NaN) block in the top-left corner."""
    rng = np.random.default_rng(seed)
    if dtype == "float32":
        data = rng.normal(100.0, 30.0, shape).astype(np.float32)
        data[:, :20, :25] = np.nan
    else:
        data = rng.integers(1, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
        data[:, :20, :25] = 0
    return data


def _manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def _padded(data: np.ndarray, window: Window, fill: float) -> np.ndarray:
    """``data[:, window]`` with the part outside the array filled, as the tiler pads."""
    c, h, w = data.shape
    big = np.full((c, h + int(window.height), w + int(window.width)), fill, dtype=data.dtype)
    big[:, :h, :w] = data
    r, col = int(window.row_off), int(window.col_off)
    return big[:, r:r + int(window.height), col:col + int(window.width)]


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_tiles_equal_source_windows_bit_for_bit(geotiff_factory, tmp_path, dtype):
    data = _scene(dtype)
    nodata = float("nan") if dtype == "float32" else 0
    src = geotiff_factory(f"s_{dtype}.tif", data, nodata=nodata, blocksize=16,
                          descriptions=["blue", "green", "red"])
    out = tmp_path / "tiles"
    summary = tile_scenes([src], out, TileOptions(size=16, stride=11, max_nodata=0.3))

    rows = _manifest(out)
    assert summary.written == len(rows) > 0 and summary.skipped > 0
    valid = ~(np.isnan(data) if dtype == "float32" else data == 0).all(axis=0)
    with rasterio.open(src) as s:
        for row in rows:
            window = Window(int(row["col_off"]), int(row["row_off"]), 16, 16)
            expected = _padded(data, window, nodata)
            with rasterio.open(out / row["tile"]) as t:
                assert t.read().tobytes() == expected.tobytes()
                assert t.dtypes[0] == dtype and t.crs == s.crs
                assert t.transform == s.window_transform(window)
                assert (t.nodata == nodata) or (np.isnan(t.nodata) and np.isnan(nodata))
                assert t.descriptions == ("blue", "green", "red")
            frac = 1 - _padded(valid[None], window, False).mean()
            assert float(row["nodata_fraction"]) == pytest.approx(frac, abs=1e-6)
            assert frac <= 0.3
    assert summary.written + summary.skipped == 4 * 3  # grid 0,11,22,(29|21) x 0,11,21


def test_stats_match_numpy_over_valid_tile_pixels(geotiff_factory, tmp_path):
    data = _scene("uint16")
    data[1, 30:, :] = 0  # band 2 alone is nodata there: excluded from band 2's statistics only
    src = geotiff_factory("s.tif", data, nodata=0)
    out = tmp_path / "tiles"
    tile_scenes([src], out, TileOptions(size=16, stride=8))
    ts = load_tileset(out)
    pixels = [rasterio.open(p).read() for p in ts.paths]
    values = [np.concatenate([p[b][p[b] != 0] for p in pixels]) for b in range(3)]
    assert values[1].size < values[0].size == values[2].size
    doc = json.loads((out / "stats.json").read_text())
    header = (doc["dtype"], doc["band_count"], doc["nodata"], doc["tile_size"])
    assert header == ("uint16", 3, 0, 16)
    assert doc["tile_count"] == len(ts.paths) and doc["percentiles"] == "exact"
    for band, s in zip(values, ts.stats, strict=True):
        assert s.count == band.size
        assert s.mean == pytest.approx(band.mean(), rel=1e-12)
        assert s.std == pytest.approx(band.std(), rel=1e-12)
        assert (s.min, s.max) == (band.min(), band.max())
        assert (s.p2, s.p98) == (np.percentile(band, 2), np.percentile(band, 98))
    assert ts.band_names == ("B1", "B2", "B3") and ts.dtype == "uint16" and ts.nodata == 0


@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from(["uint8", "int16", "float32"]), chunks=st.integers(1, 4),
       seed=st.integers(0, 10_000))
def test_running_stats_match_numpy_whatever_the_chunking(dtype, chunks, seed):
    rng = np.random.default_rng(seed)
    if dtype == "float32":
        data = (rng.standard_normal((2, 12 * chunks, 9)) * 10 ** rng.uniform(-3, 4)).astype(dtype)
        data[0, 0, :3] = [np.nan, np.inf, -np.inf]  # non-finite values are excluded per band
    else:
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, (2, 12 * chunks, 9), endpoint=True).astype(dtype)
    valid = rng.random(data.shape[1:]) < 0.8
    stats = RunningStats(2, dtype)
    for part in range(chunks):
        rows = slice(12 * part, 12 * (part + 1))
        stats.update(data[:, rows], valid[rows])
    for b, s in enumerate(stats.to_dicts(["a", "b"])):
        band = data[b][valid].astype(np.float64)
        band = band[np.isfinite(band)]
        assert s["count"] == band.size
        assert s["mean"] == pytest.approx(band.mean(), rel=1e-9, abs=1e-9)
        assert s["std"] == pytest.approx(band.std(), rel=1e-9, abs=1e-9)
        assert (s["min"], s["max"]) == (band.min(), band.max())
        for q in (2, 98):
            exact = np.percentile(band, q)
            if dtype == "float32":  # documented bound: 2**-8 relative to the neighbouring values
                scale = np.abs(band).max()
                assert s[f"p{q}"] == pytest.approx(exact, rel=2**-7, abs=scale * 2**-7)
            else:
                assert s[f"p{q}"] == pytest.approx(exact, rel=1e-12)


def test_empty_band_stats_are_null():
    stats = RunningStats(1, "uint8")
    stats.update(np.zeros((1, 2, 2), np.uint8), np.zeros((2, 2), bool))
    assert stats.to_dicts(["x"])[0] == {"name": "x", "count": 0, "mean": None, "std": None,
                                        "min": None, "max": None, "p2": None, "p98": None}


@pytest.mark.parametrize(("blocksize", "options"), [
    (16, TileOptions(size=32, stride=12)),            # tiled, overlapping grid
    ((3, 61), TileOptions(size=20, stride=7)),        # 3-row strips, heavy overlap
    (16, TileOptions(size=24, random=60, seed=3)),    # random windows (overlapping, sparse)
])
def test_each_source_block_is_read_once(geotiff_factory, tmp_path, monkeypatch, blocksize,
                                        options):
    data = _scene("uint16", (2, 83, 61))
    src = geotiff_factory("s.tif", data, nodata=0, blocksize=blocksize)
    reads: list[Window] = []
    original = raster.Scene.read

    def counting_read(self, window, boundless=False):
        reads.append(window)
        return original(self, window, boundless)

    monkeypatch.setattr(raster.Scene, "read", counting_read)
    tile_scenes([src], tmp_path / "tiles", options)

    block_rows = blocksize if isinstance(blocksize, int) else blocksize[0]
    touched = [(int(w.row_off) // block_rows, -(-int(w.row_off + w.height) // block_rows))
               for w in reads]
    blocks = [b for lo, hi in touched for b in range(lo, hi)]
    assert len(blocks) == len(set(blocks)), f"a block row was read twice: {reads}"
    assert all(w.col_off == 0 and w.width == 61 for w in reads)  # full-width bands
    # memory: one band of rows, never the whole scene
    assert max(int(w.height) for w in reads) <= options.size + block_rows


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(boxes=st.lists(st.tuples(st.integers(-20, 60), st.integers(-20, 60), st.integers(1, 40),
                                st.integers(1, 40)), min_size=1, max_size=12))
def test_row_band_reader_equals_padded_slices(geotiff_factory, boxes):
    data = _scene("int16", (2, 37, 29))
    src = geotiff_factory("rb.tif", data, nodata=-5, blocksize=(4, 29))
    windows = sorted((Window(c, r, w, h) for c, r, w, h in boxes),
                     key=lambda w: max(w.row_off, 0))
    big = np.full((2, 140, 140), -5, np.int16)
    big[:, 20:57, 20:49] = data
    with raster.open_scene(src) as scene:
        reader = raster.RowBandReader(scene)
        for w in windows:
            r, c = w.row_off + 20, w.col_off + 20
            assert np.array_equal(reader.read(w), big[:, r:r + w.height, c:c + w.width])


def test_scene_smaller_than_tile_is_padded_with_nodata(geotiff_factory, tmp_path):
    data = _scene("uint8", (1, 9, 13))
    data[:] = 7
    src = geotiff_factory("small.tif", data, nodata=255)
    out = tmp_path / "tiles"
    summary = tile_scenes([src], out, TileOptions(size=16, max_nodata=1.0))
    assert summary.written == 1
    with rasterio.open(out / "tiles" / "000000.tif") as t:
        tile = t.read(1)
    assert tile.shape == (16, 16) and (tile[:9, :13] == 7).all()
    assert (tile[9:] == 255).all() and (tile[:, 13:] == 255).all()
    assert load_tileset(out).stats[0].count == 9 * 13  # padding is nodata, not data

    no_nodata = geotiff_factory("small2.tif", data)
    with pytest.raises(InputError, match=r"smaller than --size 16.*--nodata"):
        tile_scenes([no_nodata], tmp_path / "t2", TileOptions(size=16))


def test_random_mode_is_reproducible_and_bands_are_selected(geotiff_factory, tmp_path):
    data = _scene("uint8", (4, 50, 40))
    src = geotiff_factory("s.tif", data, nodata=0, descriptions=["b", "g", "r", "nir"])
    runs = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        options = TileOptions(size=8, random=12, seed=seed, bands=(4, 1), max_nodata=1.0)
        tile_scenes([src], tmp_path / name, options)
        runs.append([(r["col_off"], r["row_off"]) for r in _manifest(tmp_path / name)])
    assert runs[0] == runs[1] != runs[2] and len(runs[0]) == 12
    ts = load_tileset(tmp_path / "a")
    assert ts.band_names == ("nir", "b")
    row = _manifest(tmp_path / "a")[0]
    window = Window(int(row["col_off"]), int(row["row_off"]), 8, 8)
    with rasterio.open(tmp_path / "a" / row["tile"]) as t:
        assert np.array_equal(t.read(), _padded(data, window, 0)[[3, 0]])


def test_cli_tiles_several_scenes_and_non_georeferenced_png(geotiff_factory, tmp_path, run_cli):
    a = geotiff_factory("a.tif", _scene("uint8", (3, 40, 40), seed=1), nodata=0)
    b = geotiff_factory("b.tif", _scene("uint8", (3, 33, 50), seed=2), nodata=0)
    png = tmp_path / "c.png"
    with rasterio.open(png, "w", driver="PNG", width=40, height=40, count=3, dtype="uint8") as d:
        d.write(_scene("uint8", (3, 40, 40), seed=3))
    code, out, err = run_cli("tile", a, b, "--out", tmp_path / "t", "--size", 16)
    assert code == 0, err
    summary = re.fullmatch(rf"Wrote (\d+) tiles to {tmp_path / 't'} from 2 scene\(s\); "
                           r"skipped (\d+) over --max-nodata 0.5\n", out)
    assert summary and int(summary[1]) + int(summary[2]) == 9 + 12  # 3x3 + 3x4 windows
    assert int(summary[1]) == len(_manifest(tmp_path / "t"))
    assert {r["source"] for r in _manifest(tmp_path / "t")} == {str(a), str(b)}
    code, _, err = run_cli("tile", a, "--out", tmp_path / "t", "--size", 40, "--overwrite")
    assert code == 0, err
    assert [r["tile"] for r in _manifest(tmp_path / "t")] == ["tiles/000000.tif"]
    assert sorted(p.name for p in (tmp_path / "t" / "tiles").iterdir()) == ["000000.tif"]

    code, out, err = run_cli("tile", png, "--out", tmp_path / "p", "--size", 16, "--nodata", 0)
    assert code == 0, err
    assert err.strip().splitlines() == [f"Warning: {png} has no CRS/georeferencing; "
                                        "outputs will use pixel coordinates"]
    with rasterio.open(tmp_path / "p" / "tiles" / "000000.tif") as t:
        assert t.crs is None


def test_load_tileset_refuses_unusable_folders(geotiff_factory, tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        load_tileset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="folder is empty"):
        load_tileset(tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="no tiles"):
        load_tileset(tmp_path / "junk")
    geotiff_factory("mixed/x.tif", np.ones((3, 8, 8), np.uint8))
    geotiff_factory("mixed/y.tif", np.ones((4, 8, 8), np.uint8))
    with pytest.raises(InputError, match=r"band count: .*y.tif has 4, .*x.tif has 3"):
        load_tileset(tmp_path / "mixed")
    src = geotiff_factory("s.tif", np.ones((1, 20, 20), np.uint8), nodata=0)
    tile_scenes([src], tmp_path / "set", TileOptions(size=10))
    (tmp_path / "set" / "tiles" / "000002.tif").unlink()
    with pytest.raises(InputError, match=r"1 tile\(s\) of manifest.csv are missing"):
        load_tileset(tmp_path / "set")


def test_load_tileset_reads_a_plain_folder_of_tiles(geotiff_factory, tmp_path):
    (tmp_path / "plain").mkdir()
    for i in range(3):
        geotiff_factory(f"plain/{i}.tif", np.full((2, 8, 8), i + 1, np.uint16), nodata=0)
    ts = load_tileset(tmp_path / "plain")
    assert len(ts.paths) == 3 and ts.tile_size == 8 and ts.band_count == 2
    assert ts.mean.tolist() == [2.0, 2.0] and ts.stats[0].count == 192


def _bad_inputs(tmp: Path, make) -> dict[str, tuple[list, str]]:
    good = make("good.tif", _scene("uint8", (3, 40, 40)), nodata=0, blocksize=16)
    four = make("four.tif", _scene("uint8", (4, 40, 40)), nodata=0)
    text = tmp / "notes.tif"
    text.write_text("not a raster\n")
    truncated = tmp / "truncated.tif"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    exists = tmp / "exists"
    exists.mkdir()
    return {
        "missing": ([tmp / "nope.tif"], "no such file"),
        "not a raster": ([text], "not a readable raster"),
        "truncated": ([truncated], "truncated or corrupt"),
        "stride 0": ([good, "--stride", 0], "--stride 0 is not in 1..16"),
        "stride > size": ([good, "--stride", 17], "--stride 17 is not in 1..16"),
        "band 0": ([good, "--bands", "1,0"], r"band\(s\) \[0\] do not exist"),
        "band 4": ([good, "--bands", "4"], r"band\(s\) \[4\] do not exist"),
        "bands text": ([good, "--bands", "red"], "not a comma-separated list"),
        "band counts": ([good, four], "differ in band count: .*good.tif has 3, .*four.tif has 4"),
        "nodata range": ([good, "--nodata", -1], "nodata -1.0 does not fit its uint8"),
        "exists": ([good, "--out", exists], "already exists .*--overwrite"),
    }


@pytest.mark.parametrize("case", ["missing", "not a raster", "truncated", "stride 0",
                                  "stride > size", "band 0", "band 4", "bands text",
                                  "band counts", "nodata range", "exists"])
def test_bad_input_gives_one_line_and_no_output(geotiff_factory, tmp_path, run_cli, case):
    args, message = _bad_inputs(tmp_path, geotiff_factory)[case]
    out = tmp_path / "out"
    before = set(tmp_path.iterdir())
    argv = ["tile", *args] if "--out" in args else ["tile", *args, "--out", out]
    code, _, stderr = run_cli(*argv, "--size", 16)
    assert code == 1
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert stderr.startswith("Error: ")
    assert re.search(message, stderr), stderr
    assert set(tmp_path.iterdir()) == before  # no output, no leftover temporary folder


def test_unwritable_output_folder_is_refused(geotiff_factory, tmp_path, run_cli):
    good = geotiff_factory("good.tif", _scene("uint8", (3, 40, 40)), nodata=0)
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        out, message = locked / "tiles", "is not writable"
    elif Path("/proc/self").is_dir():  # root ignores permissions; /proc refuses even root
        out, message = Path("/proc/rsseg-test/tiles"), "cannot write"
    else:
        pytest.skip("no unwritable folder available as root")
    code, _, stderr = run_cli("tile", good, "--out", out, "--size", 16)
    assert code == 1 and stderr.startswith("Error: ") and message in stderr
    assert len(stderr.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.realdata
def test_real_landsat_and_dubai_jpegs(shared_data, tmp_path):
    landsat = shared_data / "nc_landsat" / "landsat7_2000_6band_uint8.tif"
    out = tmp_path / "landsat"
    summary = tile_scenes([landsat], out, TileOptions(size=128, stride=96, max_nodata=0.2))
    ts = load_tileset(out)
    assert (summary.written, summary.skipped) == (20, 5)  # the rotated zero border is skipped
    assert ts.nodata == 0 and ts.band_names[0] == "B1_blue"
    per_band = sum((rasterio.open(p).read() != 0).sum(axis=(1, 2)) for p in ts.paths)
    assert [s.count for s in ts.stats] == per_band.tolist()  # nodata is excluded band by band
    assert per_band[5] < 0.9 * per_band[0]  # band 7's footprint ends first: a frame of zeros
    with rasterio.open(landsat) as src:
        row = _manifest(out)[-1]
        window = Window(int(row["col_off"]), int(row["row_off"]), 128, 128)
        with rasterio.open(out / row["tile"]) as t:
            assert np.array_equal(t.read(), src.read(window=window))
            assert t.crs == src.crs and t.transform == src.window_transform(window)

    jpegs = sorted((shared_data / "dubai" / "images").glob("tile1_*.jpg"))[:2]
    with pytest.warns(UserWarning, match="no CRS"):
        summary = tile_scenes(jpegs, tmp_path / "dubai", TileOptions(size=256))
    assert summary.written > 0 and summary.skipped == 0


@pytest.mark.parametrize(("raised", "code", "message"), [
    (MemoryError("Unable to allocate 55.9 GiB for an array"), 1,
     "Error: not enough memory (Unable to allocate 55.9 GiB for an array); use smaller tiles"),
    (Stopped(signal.SIGINT), 130, "Interrupted; no partial output was left.")])
def test_out_of_memory_and_interrupts_are_one_line(geotiff_factory, tmp_path, run_cli,
                                                   monkeypatch, raised, code, message) -> None:
    """An allocation too large (e.g. ``--size 100000``) or Ctrl-C: one line, no traceback;
    outside training, the interrupt message does not speak of --resume."""
    import rsseg.cli.tile as command

    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(command, "tile_scenes", fail)
    scene = geotiff_factory("s.tif", _scene("uint8"), nodata=0)
    result = run_cli("tile", scene, "--out", tmp_path / "t")
    assert result.exit_code == code, result
    assert result.stderr.startswith(message) and len(result.stderr.splitlines()) == 1
    assert "--resume" not in result.stderr


def test_merged_stats_equal_stats_fed_at_once():
    rng = np.random.default_rng(3)
    data = rng.integers(0, 500, (2, 30, 20)).astype(np.uint16)
    valid = rng.random((2, 30, 20)) > 0.2
    whole = RunningStats(2, "uint16")
    whole.update(data, valid)
    merged = RunningStats(2, "uint16")
    for rows in (slice(0, 7), slice(7, 7), slice(7, 30)):  # one part holds nothing
        part = RunningStats(2, "uint16")
        part.update(data[:, rows], valid[:, rows])
        merged.merge(part)
    for a, b in zip(whole.to_dicts(["x", "y"]), merged.to_dicts(["x", "y"]), strict=True):
        assert {k: a[k] for k in ("count", "min", "max", "p2", "p98")} == {
            k: b[k] for k in ("count", "min", "max", "p2", "p98")}
        assert b["mean"] == pytest.approx(a["mean"], rel=1e-12)
        assert b["std"] == pytest.approx(a["std"], rel=1e-12)
