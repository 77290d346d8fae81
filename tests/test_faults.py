"""Nothing lost, nothing silently wrong: bad input, faults and hostile files across all commands.

:data:`CASES` is the matrix: each case runs one command in-process on a fresh copy of a small
workspace and asserts the exit code, exactly one ``Error:`` line (the other lines, if any, are
``Warning:`` lines), no traceback, the message, and the files left: the workspace afterwards
is the workspace before (nothing deleted, changed or half-written: no partial files, no locks)
plus exactly the files the case names. Full disks are simulated by making GDAL's write, close
or copy fail, libtiff report a short write, or ``fsync`` fail; a real full filesystem (a small
tmpfs) is used where the test may mount one. Further tests check the fixes one by one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import rasterio
import safetensors.torch
import torch
from affine import Affine
from rasterio._err import CPLE_AppDefinedError
from torch.utils.data import DataLoader

from rsseg.config import FinetuneConfig, PretrainConfig, dump_config, load_config
from rsseg.errors import InputError, OutputError, Stopped
from rsseg.io import gdal_errors
from rsseg.io.atomic import atomic_dir
from rsseg.io.owned import CONDENSED, TILE_SET, check_replaceable
from rsseg.models.bundle import METADATA_KEY, BundleMeta, save_bundle
from rsseg.models.factory import ModelSpec, build_model
from rsseg.pipelines.tile import TileOptions, tile_scenes
from rsseg.training.guards import NonFiniteLoss
from rsseg.training.run_folder import run_folder

TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_500_000.0)
PRETRAIN = ["model.arch=unet", "model.encoder=resnet18", "data.view_size=32",
            "data.diagnostic_samples=8", "pretext.params.patch_size=8", "trainer.batch_size=4",
            "trainer.steps_per_epoch=1", "trainer.epochs=1", "trainer.accelerator=cpu"]
FINETUNE = ["data.crop_size=32", "data.val_block=16", "trainer.batch_size=4",
            "trainer.steps_per_epoch=1", "trainer.epochs=1", "trainer.accelerator=cpu",
            "tile=32", "overlap=8"]


def sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def write_tif(path: Path, array: np.ndarray, nodata: float | None = 0) -> Path:
    data = array[None] if array.ndim == 2 else array
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype=data.dtype, nodata=nodata, crs="EPSG:32618",
                       transform=TRANSFORM) as dst:
        dst.write(data)
    return path


def bundle_meta(mean: float = 100.0, std: float = 50.0) -> BundleMeta:
    return BundleMeta(model=ModelSpec(arch="pixel", in_channels=3, classes=3), tile=32,
                      overlap=8, bands=[{"name": n, "mean": mean, "std": std} for n in "rgb"],
                      classes=[{"id": i, "name": f"c{i}", "color": (60 * i, 90, 30)}
                               for i in (1, 2, 3)])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small inputs of every kind, good and hostile; each case works on a copy."""
    ws = tmp_path_factory.mktemp("faults") / "ws"
    rng = np.random.default_rng(0)
    write_tif(ws / "scene.tif", rng.integers(1, 255, (3, 64, 80)).astype(np.uint8))
    write_tif(ws / "empty.tif", np.zeros((3, 64, 80), dtype=np.uint8))
    write_tif(ws / "small.tif", rng.integers(1, 255, (3, 20, 24)).astype(np.uint8))
    write_tif(ws / "two_bands.tif", rng.integers(1, 255, (2, 64, 80)).astype(np.uint8))
    labels = np.zeros((64, 80), dtype=np.uint8)
    labels[::5, ::5] = rng.integers(1, 4, labels[::5, ::5].shape)
    write_tif(ws / "labels.tif", labels)
    write_tif(ws / "other_grid.tif", np.ones((10, 10), dtype=np.uint8), nodata=255)
    write_tif(ws / "pred.tif", rng.integers(1, 4, (64, 80)).astype(np.uint8), nodata=255)
    (ws / "notes.txt").write_text("not a raster\n")
    (ws / "garbage.tif").write_text("not a raster either\n")
    (ws / "truncated.tif").write_bytes((ws / "scene.tif").read_bytes()[:600])

    model = build_model(bundle_meta().model)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 1, generator=torch.Generator().manual_seed(1))
    save_bundle(ws / "model.rsseg", model, bundle_meta())
    poisoned = json.loads(bundle_meta().model_dump_json())
    poisoned["bands"][0]["mean"] = float("nan")
    safetensors.torch.save_model(model, str(ws / "nan_stats.rsseg"),
                                 metadata={METADATA_KEY: json.dumps(poisoned)})
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    save_bundle(ws / "nan_weights.rsseg", model, bundle_meta())
    (ws / "truncated.rsseg").write_bytes((ws / "model.rsseg").read_bytes()[:300])

    tile_scenes([ws / "scene.tif"], ws / "tiles", TileOptions(size=32, stride=16))
    shutil.copytree(ws / "tiles", ws / "mixed_tiles")
    write_tif(ws / "mixed_tiles" / "tiles" / "000003.tif",
              rng.integers(1, 255, (2, 32, 32)).astype(np.uint8))
    shutil.copytree(ws / "tiles", ws / "nan_tiles")
    stats = json.loads((ws / "nan_tiles" / "stats.json").read_text())
    stats["bands"][1]["mean"] = float("nan")
    (ws / "nan_tiles" / "stats.json").write_text(json.dumps(stats))
    (ws / "evil.yaml").write_text("optim:\n  lr: !!python/object/apply:os.system ['touch x']\n")

    (ws / "precious").mkdir()
    (ws / "precious" / "thesis.docx").write_text("years of work\n")
    (ws / "project").mkdir()
    shutil.copy(ws / "scene.tif", ws / "project" / "scene.tif")

    pre_cfg = load_config(PretrainConfig, None, PRETRAIN)
    ft_cfg = load_config(FinetuneConfig, None, FINETUNE)
    for name, cfg in (("run_truncated", pre_cfg), ("run_evil", pre_cfg),
                      ("ft_truncated", ft_cfg)):
        (ws / name / "checkpoints").mkdir(parents=True)
        dump_config(cfg, ws / name / "config.yaml")
        (ws / name / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04" + b"\0" * 64)
    shutil.copytree(ws / "ft_truncated", ws / "run_labels")
    shutil.copy(ws / "labels.tif", ws / "run_labels" / "labels.tif")
    torch.save({"state_dict": {}, "epoch": 0, "payload": Pickled(ws / "run_evil" / "pwned")},
               ws / "run_evil" / "checkpoints" / "last.ckpt")
    return ws


class Pickled:
    """Unpickling this would create a file: PyTorch's safe loader must refuse it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.path,))


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root``: (size, mtime) of files, (-1, 0) for folders."""
    return {str(p.relative_to(root)): (-1, 0) if p.is_dir() else (p.stat().st_size,
                                                                  p.stat().st_mtime_ns)
            for p in root.rglob("*")}


@contextmanager
def held_lock(path: Path) -> Iterator[None]:
    """Another run writing ``path``: its lock file held (flock conflicts across open files)."""
    lock = path.parent / f".{path.name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"4242\n")
    try:
        yield
    finally:
        os.close(fd)
        lock.unlink()


def _libtiff_short_write() -> None:
    """What libtiff does on a full disk: report through its global handler, return success."""
    lib = gdal_errors._libtiff()
    assert lib is not None
    lib.TIFFError(b"_tiffWriteProc", b"%s", b"No space left on device")


def fail_gdal_write(monkeypatch: pytest.MonkeyPatch) -> None:
    def write(self, *args, **kwargs):
        raise CPLE_AppDefinedError(3, 1, "TIFFWriteEncodedTile:IO error writing tile")

    monkeypatch.setattr(rasterio.io.DatasetWriter, "write", write)


def silent_short_write(monkeypatch: pytest.MonkeyPatch) -> None:
    original = rasterio.io.DatasetWriter.write

    def write(self, *args, **kwargs):
        original(self, *args, **kwargs)
        _libtiff_short_write()

    monkeypatch.setattr(rasterio.io.DatasetWriter, "write", write)


def fail_cog_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    def copy(*args, **kwargs):
        raise SystemError("Unknown GDAL Error. To debug: https://rasterio.readthedocs.io/")

    monkeypatch.setattr(rasterio.shutil, "copy", copy)


def fail_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)


@dataclass(frozen=True)
class Case:
    """``rsseg ARGS`` (``{ws}`` is replaced by the workspace) must exit ``code`` with one error
    line matching ``message`` and leave the workspace as it was plus ``left``."""

    id: str
    args: tuple[str, ...]
    message: str
    code: int = 1
    left: frozenset[str] = frozenset()
    patch: Callable[[pytest.MonkeyPatch], None] | None = None
    lock: str | None = None  # an output name another run holds the lock of
    gone: frozenset[str] = field(default_factory=frozenset)


def case(id: str, *args: str, message: str, **kwargs: object) -> Case:
    return Case(id, tuple(args), message, **kwargs)


PRE = ("pretrain", "{ws}/tiles", *sets(PRETRAIN))
FT = ("finetune", "--scene", "{ws}/scene.tif", "--labels", "{ws}/labels.tif", *sets(FINETUNE))
PREDICT = ("predict", "{ws}/scene.tif", "--model", "{ws}/model.rsseg")
CONDENSE = ("condense", "--scene", "{ws}/scene.tif", "--labels", "{ws}/labels.tif",
            "--random-subset", "--set", "size=16", "--set", "per_class=2")

CASES = [
    # tile
    case("tile-missing-scene", "tile", "{ws}/nope.tif", "--out", "{ws}/t", message="no such file"),
    case("tile-not-a-raster", "tile", "{ws}/garbage.tif", "--out", "{ws}/t",
         message="not a readable raster"),
    case("tile-truncated-scene", "tile", "{ws}/truncated.tif", "--out", "{ws}/t",
         message="truncated|not a readable raster|cannot read"),
    case("tile-out-holds-input", "tile", "{ws}/project/scene.tif", "--out", "{ws}/project",
         "--overwrite", message="contains the input .*scene.tif"),
    case("tile-out-is-input", "tile", "{ws}/scene.tif", "--out", "{ws}/scene.tif",
         "--overwrite", message="is the input"),
    case("tile-out-foreign", "tile", "{ws}/scene.tif", "--out", "{ws}/precious", "--overwrite",
         message="did not write as a tile set: thesis.docx"),
    case("tile-out-is-a-file", "tile", "{ws}/scene.tif", "--out", "{ws}/notes.txt",
         "--overwrite", message="is a file, not a tile set"),
    case("tile-out-is-a-run", "tile", "{ws}/scene.tif", "--out", "{ws}/run_evil", "--overwrite",
         message="did not write as a tile set: checkpoints/, config.yaml"),
    case("tile-exists", "tile", "{ws}/scene.tif", "--out", "{ws}/tiles", message="already exists"),
    case("tile-smaller-than-size", "tile", "{ws}/small.tif", "--out", "{ws}/t", "--size", "64",
         message=r"smaller than --size 64.*pass --size 20 or smaller"),
    case("tile-all-nodata", "tile", "{ws}/empty.tif", "--out", "{ws}/t", "--size", "32",
         message="no tiles written: all 6 windows"),
    case("tile-bad-stride", "tile", "{ws}/scene.tif", "--out", "{ws}/t", "--size", "32",
         "--stride", "99",
         message="--stride 99"),
    case("tile-locked", "tile", "{ws}/scene.tif", "--out", "{ws}/t", lock="t",
         message="t is being written by another rsseg run \\(pid 4242\\)"),
    case("tile-gdal-write-fails", "tile", "{ws}/scene.tif", "--out", "{ws}/t", "--size", "32",
         patch=fail_gdal_write, message="cannot write .*000000.tif \\(TIFFWriteEncodedTile"),
    case("tile-disk-full-silently", "tile", "{ws}/scene.tif", "--out", "{ws}/t", "--size", "32",
         patch=silent_short_write, message="_tiffWriteProc: No space left on device"),
    # pretrain
    case("pretrain-missing-tiles", "pretrain", "{ws}/nope", "--out", "{ws}/r",
         message="no such folder"),
    case("pretrain-set-unclosed", *PRE, "--out", "{ws}/r", "--set", "optim.betas=[0.9, 0.99",
         message="--set 'optim.betas=\\[0.9, 0.99': the value is not valid YAML"),
    case("pretrain-set-python-tag", *PRE, "--out", "{ws}/r", "--set",
         "optim.lr=!!python/object/apply:os.system ['touch {ws}/pwned']", message="not valid YAML"),
    case("pretrain-config-python-tag", *PRE, "--out", "{ws}/r", "--config", "{ws}/evil.yaml",
         message="not valid YAML"),
    case("pretrain-unknown-key", *PRE, "--out", "{ws}/r", "--set", "optim.lrr=1",
         message="optim.lrr"),
    case("pretrain-mixed-band-tiles", "pretrain", "{ws}/mixed_tiles", *sets(PRETRAIN), "--out",
         "{ws}/r", message="tiles disagree in band count: .*000003.tif has 2"),
    case("pretrain-nan-statistics", "pretrain", "{ws}/nan_tiles", *sets(PRETRAIN), "--out",
         "{ws}/r", message="band\\(s\\) B2 have non-finite statistics"),
    case("pretrain-out-foreign", *PRE, "--out", "{ws}/precious", "--overwrite",
         message="did not write as a run folder: thesis.docx"),
    case("pretrain-out-is-tiles", *PRE, "--out", "{ws}/tiles", "--overwrite",
         message="did not write as a run folder: manifest.csv, stats.json, tiles/"),
    case("pretrain-out-is-a-file", *PRE, "--out", "{ws}/notes.txt", "--overwrite",
         message="is a file, not a run folder"),
    case("pretrain-resume-truncated", *PRE, "--out", "{ws}/run_truncated", "--resume",
         message="last.ckpt cannot be resumed: truncated"),
    case("pretrain-resume-unsafe-pickle", *PRE, "--out", "{ws}/run_evil", "--resume",
         message="last.ckpt cannot be resumed"),
    case("pretrain-resume-nothing", *PRE, "--out", "{ws}/precious", "--resume",
         message="no checkpoint to resume from"),
    case("pretrain-locked", *PRE, "--out", "{ws}/r", lock="r",
         message="r is being written by another rsseg run"),
    # finetune
    case("finetune-all-nodata", "finetune", "--scene", "{ws}/empty.tif", "--labels",
         "{ws}/labels.tif", *sets(FINETUNE), "--out", "{ws}/r",
         message="empty.tif: every pixel is nodata"),
    case("finetune-missing-labels", "finetune", "--scene", "{ws}/scene.tif", "--labels",
         "{ws}/nope.tif", *sets(FINETUNE), "--out", "{ws}/r", message="nope.tif"),
    case("finetune-labels-other-grid", "finetune", "--scene", "{ws}/scene.tif", "--labels",
         "{ws}/other_grid.tif", *sets(FINETUNE), "--out", "{ws}/r", message="other_grid.tif"),
    case("finetune-out-foreign", *FT, "--out", "{ws}/project", "--overwrite",
         message="did not write as a run folder: scene.tif"),
    case("finetune-out-holds-input", "finetune", "--scene", "{ws}/scene.tif", "--labels",
         "{ws}/run_labels/labels.tif", *sets(FINETUNE), "--out", "{ws}/run_labels",
         "--overwrite", message="contains the input .*run_labels/labels.tif"),
    case("finetune-set-unclosed", *FT, "--out", "{ws}/r", "--set", "tile=[64",
         message="not valid YAML"),
    case("finetune-resume-truncated", *FT, "--out", "{ws}/ft_truncated", "--resume",
         message="last.ckpt cannot be resumed"),
    # predict
    case("predict-nan-statistics", *PREDICT[:3], "{ws}/nan_stats.rsseg", "--out", "{ws}/p.tif",
         message="bands.0.mean: Input should be a finite number"),
    case("predict-nan-weights", *PREDICT[:3], "{ws}/nan_weights.rsseg", "--out", "{ws}/p.tif",
         message="hold NaN/inf values"),
    case("predict-truncated-bundle", *PREDICT[:3], "{ws}/truncated.rsseg", "--out",
         "{ws}/p.tif", message="not a model bundle or corrupt"),
    case("predict-band-count", "predict", "{ws}/two_bands.tif", "--model", "{ws}/model.rsseg",
         "--out", "{ws}/p.tif", message="has 2 band\\(s\\) but model"),
    case("predict-out-is-a-folder", *PREDICT, "--out", "{ws}/precious", "--overwrite",
         message="precious is a folder; --overwrite replaces files only"),
    case("predict-out-is-scene", *PREDICT, "--out", "{ws}/scene.tif", "--overwrite",
         message="is also the input scene"),
    case("predict-locked", *PREDICT, "--out", "{ws}/p.tif", lock="p.tif",
         message="p.tif is being written by another rsseg run"),
    case("predict-gdal-write-fails", *PREDICT, "--out", "{ws}/p.tif", patch=fail_gdal_write,
         message="cannot write .*p.tif \\(TIFFWriteEncodedTile:IO error writing tile\\)"),
    case("predict-disk-full-silently", *PREDICT, "--out", "{ws}/p.tif",
         patch=silent_short_write, message="p.tif \\(_tiffWriteProc: No space left on device\\)"
                                           ".*free space"),
    case("predict-cog-copy-fails", *PREDICT, "--out", "{ws}/p.tif", patch=fail_cog_copy,
         message="cannot write .*p.tif \\(Unknown GDAL Error"),
    case("predict-fsync-fails", *PREDICT, "--out", "{ws}/p.tif", "--confidence",
         "{ws}/c.tif", patch=fail_fsync, message="cannot write .* \\(No space left on device\\)"),
    # evaluate
    case("evaluate-grid-mismatch", "evaluate", "{ws}/pred.tif", "{ws}/other_grid.tif",
         message="grid|size|shape"),
    case("evaluate-missing-reference", "evaluate", "{ws}/pred.tif", "{ws}/nope.tif",
         message="nope.tif"),
    case("evaluate-not-a-raster", "evaluate", "{ws}/notes.txt", "{ws}/pred.tif",
         message="notes.txt"),
    # info
    case("info-not-a-bundle", "info", "{ws}/notes.txt", message="not a model bundle"),
    case("info-nan-statistics", "info", "{ws}/nan_stats.rsseg", message="finite number"),
    case("info-truncated", "info", "{ws}/truncated.rsseg", message="corrupt"),
    # vectorize
    case("vectorize-multiband", "vectorize", "{ws}/scene.tif", "--out", "{ws}/v.gpkg",
         message="band"),
    case("vectorize-bad-suffix", "vectorize", "{ws}/pred.tif", "--out", "{ws}/v.txt",
         message="v.txt"),
    case("vectorize-exists", "vectorize", "{ws}/pred.tif", "--out", "{ws}/notes.txt",
         message="already exists|notes.txt"),
    # condense
    case("condense-all-nodata", *CONDENSE[:2], "{ws}/empty.tif", *CONDENSE[3:], "--out",
         "{ws}/syn", message="every pixel is nodata"),
    case("condense-out-foreign", *CONDENSE, "--out", "{ws}/precious", "--overwrite",
         message="did not write as a condensed tile set: thesis.docx"),
    case("condense-out-holds-input", *CONDENSE, "--out", "{ws}", "--overwrite",
         message="contains the input"),
    case("condense-gdal-write-fails", *CONDENSE, "--out", "{ws}/syn", patch=fail_gdal_write,
         message="cannot write .*syn \\(TIFFWriteEncodedTile"),
    case("condense-set-python-tag", *CONDENSE, "--out", "{ws}/syn", "--set",
         "size=!!python/name:os.system", message="not valid YAML"),
    # export-onnx
    case("export-missing-bundle", "export-onnx", "{ws}/nope.rsseg", "--out", "{ws}/m.onnx",
         message="no such model bundle"),
    case("export-nan-statistics", "export-onnx", "{ws}/nan_stats.rsseg", "--out",
         "{ws}/m.onnx", message="finite number"),
    case("export-out-not-onnx", "export-onnx", "{ws}/model.rsseg", "--out", "{ws}/m.tif",
         message="name it .onnx"),
    # methods, usage
    case("methods-unknown", "methods", "nosuch", message="nosuch"),
    case("usage-unknown-option", "tile", "{ws}/scene.tif", "--out", "{ws}/t", "--sise", "3",
         code=2, message="No such option"),
]


def test_the_matrix_covers_every_command() -> None:
    commands = {c.args[0] for c in CASES}
    assert commands >= {"tile", "pretrain", "finetune", "predict", "evaluate", "info",
                        "vectorize", "condense", "export-onnx", "methods"}
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault(case: Case, workspace: Path, tmp_path: Path, run_cli,
               monkeypatch: pytest.MonkeyPatch) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws, symlinks=True)
    monkeypatch.chdir(tmp_path)
    before = snapshot(ws)
    if case.patch:
        case.patch(monkeypatch)
    with held_lock(ws / case.lock) if case.lock else nullcontext():
        result = run_cli(*(a.replace("{ws}", str(ws)) for a in case.args))
    monkeypatch.undo()
    output = result.stdout + result.stderr
    assert result.exit_code == case.code, output
    assert "Traceback" not in output and "Wrote" not in result.stdout, output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.stderr
    if case.code == 1:
        others = [line for line in result.stderr.splitlines()
                  if line.strip() and not line.startswith(("Error:", "Warning:"))]
        assert not others, result.stderr
    assert re.search(case.message, errors[0]), errors[0]
    after = snapshot(ws)
    assert set(after) - set(before) == set(case.left), "files left behind"
    assert set(before) - set(after) == set(), "files deleted"
    assert {k for k in before if k in after and before[k] != after[k]} == set(), "files changed"


# --- 1. full disks -------------------------------------------------------------------------

def test_libtiff_errors_raise_and_print_nothing(tmp_path: Path, capfd) -> None:
    """libtiff's short-write report (printed to stderr by its default handler, the write still
    "succeeding") becomes the block's OutputError, and nothing reaches the terminal."""
    capfd.readouterr()
    full = r"out.tif \(_tiffWriteProc: No space left on device\) \(free space"
    out = tmp_path / "out.tif"
    with pytest.raises(OutputError, match=full), gdal_errors.gdal_write_errors(out):
        _libtiff_short_write()
    assert capfd.readouterr().err == ""
    with gdal_errors.gdal_write_errors(out):  # an earlier failure is not this block's
        pass


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs with 64 KiB left free (root with mount rights only; skipped otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
            capture_output=True).returncode:
        pytest.skip("cannot mount a small filesystem here (needs root and mount rights)")
    try:
        filler = mount / ".filler"
        with open(filler, "wb") as f:
            f.write(b"\0" * (1024 - 64) * 1024)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("command", ["predict", "tile"])
def test_a_full_filesystem_is_one_line_and_leaves_nothing(command: str, workspace: Path,
                                                          small_filesystem: Path) -> None:
    """On a really full disk: exit 1, exactly one line (no libtiff/GDAL lines, no traceback, no
    "Wrote"), and nothing written is left (no output, no partial file, no lock)."""
    rng = np.random.default_rng(5)
    scene = write_tif(small_filesystem.parent / "noisy.tif",
                      rng.integers(1, 255, (3, 600, 700)).astype(np.uint8))
    out = small_filesystem / ("pred.tif" if command == "predict" else "tiles")
    args = ([scene, "--model", workspace / "model.rsseg", "--out", out, "--tile", "64"]
            if command == "predict"
            else [scene, "--out", out, "--size", "64"])
    run = subprocess.run([sys.executable, "-m", "rsseg", command, *map(str, args)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr
    assert run.stdout == "" and len(run.stderr.splitlines()) == 1, run.stderr
    assert "No space left on device" in run.stderr and run.stderr.startswith("Error: ")
    assert [p.name for p in small_filesystem.iterdir()] == [".filler"]


# --- 2. --overwrite replaces only rsseg's outputs -----------------------------------------

def test_overwrite_replaces_an_rsseg_tile_set_and_recognises_its_layouts(workspace: Path,
                                                                         tmp_path: Path) -> None:
    out = tmp_path / "tiles"
    shutil.copytree(workspace / "tiles", out)
    (out / "tiles" / "000000.tif.aux.xml").write_text("<PAMDataset/>")  # QGIS opened a tile
    summary = tile_scenes([workspace / "scene.tif"], out, TileOptions(size=64, overwrite=True))
    assert summary.written == 2 and len(list((out / "tiles").iterdir())) == 2
    condensed = tmp_path / "syn"
    for name in ("images/syn_001_0000.tif", "labels/syn_001_0000.tif", "condense.json",
                 "bands.json", "classes.yaml"):
        (condensed / name).parent.mkdir(parents=True, exist_ok=True)
        (condensed / name).write_text("x")
    check_replaceable(condensed, CONDENSED)
    (condensed / "images" / "extra").mkdir()
    with pytest.raises(OutputError, match="images/extra/"):
        check_replaceable(condensed, CONDENSED)
    (tmp_path / "only_stats" / "x").mkdir(parents=True)
    with pytest.raises(OutputError, match="x/"):
        check_replaceable(tmp_path / "only_stats", TILE_SET)


# --- 3. silent wrong results --------------------------------------------------------------

class _Tiny(L.LightningModule):
    """One linear layer; its loss is NaN when the batch asks for it."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.layer(batch).mean() * (float("nan") if batch_idx == 2 else 1.0)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(("batch", "message"), [
    (torch.ones(3, 2), r"step 2: the loss is nan \(no labelled pixel of the batch holds data"),
    (torch.full((3, 2), float("inf")), r"step 0: the loss is (nan|inf) \(the batch holds NaN/inf"),
    (torch.full((3, 2), 3e38), r"the loss is -?inf \(the batch holds values over 1e\+04")])
def test_a_non_finite_loss_stops_training_before_the_step(batch: torch.Tensor, message: str,
                                                          tmp_path: Path) -> None:
    module = _Tiny()
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[NonFiniteLoss()], default_root_dir=tmp_path)
    with warnings.catch_warnings(), pytest.raises(InputError, match=message):
        warnings.simplefilter("ignore")
        trainer.fit(module, DataLoader(list(batch) * 4, batch_size=3))
    assert torch.isfinite(module.layer.weight).all()  # the poisoned step was not applied


def test_finetune_stops_on_a_non_finite_loss_with_one_line(workspace: Path, tmp_path: Path,
                                                          run_cli) -> None:
    """Pixels of inf that are not declared nodata: the run stops at the first NaN loss, says
    why, and leaves no run folder (it had no checkpoint) and no bundle."""
    pixels = np.random.default_rng(3).uniform(1, 255, (3, 64, 80)).astype(np.float32)
    pixels[:, 20:50, 20:60] = np.inf
    scene = write_tif(tmp_path / "inf.tif", pixels, nodata=None)
    result = run_cli("finetune", "--scene", scene, "--labels", workspace / "labels.tif",
                     *sets(FINETUNE), "--out", tmp_path / "run")
    assert result.exit_code == 1, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert re.match(r"Error: training stopped at epoch 0, step 0: the loss is (nan|inf) \(the "
                    r"batch holds values over", result.stderr), result.stderr
    assert not (tmp_path / "run").exists()


def test_finetune_refuses_labels_that_lie_only_on_nodata(workspace: Path, tmp_path: Path,
                                                         run_cli) -> None:
    pixels = np.random.default_rng(4).integers(1, 255, (3, 64, 80)).astype(np.uint8)
    pixels[:, :, :40] = 0
    scene = write_tif(tmp_path / "half.tif", pixels)
    labels = np.zeros((64, 80), dtype=np.uint8)
    labels[::4, :40:4] = 1
    result = run_cli("finetune", "--scene", scene, "--labels",
                     write_tif(tmp_path / "left.tif", labels), *sets(FINETUNE),
                     "--out", tmp_path / "run")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: no labelled training pixel holds data: ")
    assert not (tmp_path / "run").exists()


def test_predict_warns_when_the_scene_is_far_from_the_training_statistics(
        workspace: Path, tmp_path: Path, run_cli) -> None:
    """A uint16 scene for a model trained on 8-bit values: two warnings (dtype, value range),
    naming the bands and by how much; the same scene as uint8: none."""
    pixels = np.random.default_rng(6).integers(1, 255, (3, 64, 80))
    wide = write_tif(tmp_path / "wide.tif", (pixels * 40).astype(np.uint16))
    result = run_cli("predict", wide, "--model", workspace / "model.rsseg", "--out",
                     tmp_path / "p.tif")
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("Warning: ") for line in lines), lines
    assert re.search(r"wide.tif is uint16 with values up to \d.*trained on values up to ~250",
                     lines[0])
    assert re.search(r"r mean \+\d+ training std off, spread x\d+; g mean .*; b mean", lines[1])
    same = write_tif(tmp_path / "same.tif", pixels.astype(np.uint8))
    result = run_cli("predict", same, "--model", workspace / "model.rsseg", "--out",
                     tmp_path / "q.tif")
    assert result.exit_code == 0 and result.stderr == ""


# --- 6. stale partial files --------------------------------------------------------------

def test_partial_files_of_a_killed_run_are_removed_by_the_next_run(workspace: Path,
                                                                  tmp_path: Path,
                                                                  run_cli) -> None:
    """``kill -9`` leaves hidden parts; the next run of the same output removes those of dead
    processes (and says so), keeps a live process's, and leaves no lock file."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = [f".p.tif.{dead}-abc123.part.tif", f".p.tif.{dead}-x_y9.stream.part.tif",
             f".p.tif.{dead}-x_y9.stream.part.tif.aux.xml", f".p.qml.{dead}-qq.part.qml"]
    live = f".p.tif.{os.getppid()}-live1.part.tif"
    for name in [*stale, live]:
        (tmp_path / name).write_text("partial")
    result = run_cli("predict", workspace / "scene.tif", "--model", workspace / "model.rsseg",
                     "--out", tmp_path / "p.tif")
    assert result.exit_code == 0, result.stderr
    assert re.search(r"Warning: removed 3 partial file\(s\) of .*p.tif left by an interrupted "
                     r"run: ", result.stderr)
    assert "removed 1 partial file(s) of " in result.stderr  # the style's
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [live]


# --- 7. messages and permissions ----------------------------------------------------------

@pytest.mark.parametrize("checkpointed", [False, True])
def test_an_interrupt_mentions_resume_only_when_a_checkpoint_exists(
        checkpointed: bool, workspace: Path, tmp_path: Path, run_cli,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import rsseg.pipelines.pretrain as pipeline

    def interrupted(tiles, out, config, resume=False, overwrite=False):
        with run_folder(Path(out), config, resume, overwrite):
            if checkpointed:
                (Path(out) / "checkpoints").mkdir()
                (Path(out) / "checkpoints" / "last.ckpt").write_bytes(b"epoch 0")
            raise Stopped(signal.SIGINT)

    monkeypatch.setattr(pipeline, "pretrain", interrupted)
    result = run_cli("pretrain", workspace / "tiles", "--out", tmp_path / "run")
    assert result.exit_code == 130
    assert len(result.stderr.splitlines()) == 1
    assert ("--resume" in result.stderr) == checkpointed, result.stderr
    assert (tmp_path / "run").exists() == checkpointed


def test_output_folders_get_ordinary_permissions(workspace: Path, tmp_path: Path) -> None:
    before = os.umask(0o022)
    try:
        tile_scenes([workspace / "scene.tif"], tmp_path / "tiles", TileOptions(size=32))
        with atomic_dir(tmp_path / "syn", False, CONDENSED) as tmp:
            (tmp / "condense.json").write_text("{}")
    finally:
        os.umask(before)
    for folder in (tmp_path / "tiles", tmp_path / "tiles" / "tiles", tmp_path / "syn"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder
    assert not list(tmp_path.glob(".*"))  # no lock or partial file left
