"""The training engine end to end on tiny data: pretrain, resume, fine-tune from each label form."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from lightning.pytorch.callbacks import Callback
from shapely.geometry import Point

from rsseg.config import FinetuneConfig, PretrainConfig, load_config
from rsseg.models.backbone import load_backbone, read_backbone
from rsseg.models.bundle import load_bundle
from rsseg.models.factory import ModelSpec, build_model
from rsseg.pipelines.finetune import finetune
from rsseg.pipelines.pretrain import pretrain
from rsseg.pipelines.tile import TileOptions, tile_scenes

TINY_PRETRAIN = ["model.arch=unet", "model.encoder=resnet18", "data.view_size=32",
                 "data.diagnostic_samples=8", "pretext.params.patch_size=8",
                 "trainer.batch_size=4", "trainer.steps_per_epoch=2", "trainer.accelerator=cpu"]
TINY_FINETUNE = ["data.crop_size=32", "data.val_block=16", "trainer.batch_size=4",
                 "trainer.steps_per_epoch=2", "trainer.accelerator=cpu", "tile=64", "overlap=16"]


def class_map(height: int = 96, width: int = 112) -> np.ndarray:
    """``(H, W)`` class ids 1..3 in vertical stripes."""
    ids = np.ones((height, width), dtype=np.uint8)
    ids[:, width // 3:] = 2
    ids[:, 2 * width // 3:] = 3
    return ids


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-band uint16 scene whose spectra follow :func:`class_map`, nodata 0 in one corner."""
    rng = np.random.default_rng(0)
    ids = class_map()
    spectra = np.array([[300, 900, 400, 2000], [800, 700, 900, 600], [200, 300, 250, 100]])
    pixels = spectra[ids - 1].transpose(2, 0, 1) + rng.integers(0, 60, (4, *ids.shape))
    pixels = pixels.astype(np.uint16)
    pixels[:, :10, :10] = 0
    path = tmp_path_factory.mktemp("scene") / "scene.tif"
    with rasterio.open(path, "w", driver="GTiff", width=ids.shape[1], height=ids.shape[0],
                       count=4, dtype="uint16", nodata=0, crs="EPSG:32618",
                       transform=Affine(10, 0, 500_000, 0, -10, 4_500_000)) as dst:
        dst.write(pixels)
    return path


@pytest.fixture
def sparse_labels(geotiff_factory) -> Path:
    """Every 7th pixel of :func:`class_map` labelled, 0 elsewhere."""
    ids = class_map()
    sparse = np.zeros_like(ids)
    sparse[::7, ::7] = ids[::7, ::7]
    return geotiff_factory("sparse.tif", sparse, nodata=0)


@pytest.fixture(scope="module")
def tiles(scene: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiles") / "tiles"
    tile_scenes([scene], out, TileOptions(size=64, stride=16))
    return out


@pytest.fixture(scope="module")
def pretrained(tiles: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch GLCNet run on :func:`tiles`, shared by the fine-tuning tests."""
    run = tmp_path_factory.mktemp("pre") / "pre"
    pretrain(tiles, run, load_config(PretrainConfig, None, [*TINY_PRETRAIN, "trainer.epochs=1"]))
    return run


def as_sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def epochs_logged(run: Path) -> list[int]:
    with (run / "metrics.csv").open() as f:
        return sorted({int(r["epoch"]) for r in csv.DictReader(f) if r.get("loss_epoch")})


def test_pretrain_writes_run_folder_and_resumes(tiles: Path, tmp_path: Path) -> None:
    run = tmp_path / "pre"
    pretrain(tiles, run, load_config(PretrainConfig, None, [*TINY_PRETRAIN, "trainer.epochs=1"]))
    for name in ("config.yaml", "metrics.csv", "loss.png", "spectrum.csv", "spectrum.png",
                 "backbone.safetensors", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    assert epochs_logged(run) == [0]
    _, meta = read_backbone(run)
    assert (meta.epochs, len(meta.bands), meta.pretext) == (1, 4, "glcnet")

    pretrain(tiles, run, load_config(PretrainConfig, None, [*TINY_PRETRAIN, "trainer.epochs=2"]),
             resume=True)
    assert epochs_logged(run) == [0, 1]  # continued at epoch 1, did not restart
    assert read_backbone(run)[1].epochs == 2
    with (run / "spectrum.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {(r["epoch"], r["kind"]) for r in rows} == {
        ("0", "global"), ("0", "local"), ("1", "global"), ("1", "local")}
    assert all(1.0 <= float(r["effective_rank"]) <= int(r["dims"]) for r in rows)


class SignalAt(Callback):
    """Sends this process ``signum`` at the first batch of ``epoch``."""

    def __init__(self, signum: int, epoch: int) -> None:
        self.signum, self.epoch = signum, epoch

    def on_train_batch_start(self, trainer, module, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == 0:
            assert signal.getsignal(self.signum) not in (signal.SIG_DFL, None)
            signal.raise_signal(self.signum)


@pytest.mark.parametrize(("signum", "code", "message"), [
    (signal.SIGTERM, 143, "Stopped by SIGTERM"), (signal.SIGINT, 130, "Interrupted")])
def test_a_stopped_run_exits_with_one_line_and_resumes(
        tiles: Path, tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch, signum: int,
        code: int, message: str) -> None:
    """``kill`` or Ctrl-C in epoch 2 of 3: exit 143/130 with one line, the checkpoint of epoch 1
    is on disk (Lightning writes ``save_last`` only at the end unless a checkpoint is saved each
    epoch), and ``--resume`` finishes the run from there."""
    import rsseg.pipelines.pretrain as pipeline

    def with_signal(*args, callbacks, **kwargs):
        return build_trainer(*args, callbacks=[*callbacks, SignalAt(signum, 1)], **kwargs)

    build_trainer = pipeline.build_trainer
    monkeypatch.setattr(pipeline, "build_trainer", with_signal)
    run = tmp_path / "run"
    sets = as_sets([*TINY_PRETRAIN, "trainer.epochs=3"])
    stopped = run_cli("pretrain", tiles, "--out", run, *sets)
    assert stopped.exit_code == code
    assert stopped.stderr.startswith(message) and len(stopped.stderr.splitlines()) == 1
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert read_backbone(run)[1].epochs == 1

    monkeypatch.setattr(pipeline, "build_trainer", build_trainer)
    resumed = run_cli("pretrain", tiles, "--out", run, "--resume", *sets)
    assert resumed.exit_code == 0, resumed.stderr
    assert epochs_logged(run) == [0, 1, 2]
    assert read_backbone(run)[1].epochs == 3


def test_a_run_stopped_before_its_first_checkpoint_leaves_no_folder(
        tiles: Path, tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in epoch 0, or a setup error once the folder exists: nothing to resume, so the run
    folder goes, and the same command can simply run again."""
    import rsseg.pipelines.pretrain as pipeline

    def with_signal(*args, callbacks, **kwargs):
        return build_trainer(*args, callbacks=[*callbacks, SignalAt(signal.SIGINT, 0)], **kwargs)

    build_trainer = pipeline.build_trainer
    monkeypatch.setattr(pipeline, "build_trainer", with_signal)
    run = tmp_path / "run"
    sets = as_sets(TINY_PRETRAIN)
    assert run_cli("pretrain", tiles, "--out", run, *sets).exit_code == 130
    assert not run.exists()
    monkeypatch.setattr(pipeline, "build_trainer", build_trainer)
    failed = run_cli("pretrain", tiles, "--out", run, *sets, "--precision", "16-mixed")
    assert failed.exit_code == 1 and "needs a GPU" in failed.stderr
    assert not run.exists()  # so the next run meets no "already exists"


def test_finetune_from_raster_labels_with_init(pretrained: Path, scene: Path,
                                                sparse_labels: Path, tmp_path: Path) -> None:
    pre = pretrained
    cfg = load_config(FinetuneConfig, None, [*TINY_FINETUNE, "trainer.epochs=2"])
    bundle = finetune(tmp_path / "ft", cfg, scenes=[scene], labels=sparse_labels, init=pre)
    _, meta = load_bundle(bundle)
    assert [c.id for c in meta.classes] == [1, 2, 3]
    assert (meta.model.arch, meta.model.in_channels, meta.model.classes) == ("unet", 4, 3)
    assert (meta.tile, meta.overlap) == (64, 16)
    assert meta.resolution == pytest.approx(10.0)
    # The backbone holds the encoder and the decoder GLCNet's local branch trained, never the
    # head (64 pretraining channels vs 3 classes).
    tensors, _ = read_backbone(pre)
    assert all(k.startswith(("encoder.", "decoder.")) for k in tensors)
    assert (tmp_path / "ft" / "checkpoints" / "best.ckpt").is_file()


def test_the_decoder_is_stored_where_the_pretext_trained_it(pretrained: Path, tiles: Path,
                                                            tmp_path: Path) -> None:
    tensors, meta = read_backbone(pretrained)  # GLCNet: the local branch reads the decoder
    assert meta.decoder and any(k.startswith("decoder.") for k in tensors)
    simclr = tmp_path / "simclr"
    pretrain(tiles, simclr, load_config(PretrainConfig, None, [
        *TINY_PRETRAIN, "trainer.epochs=1", "pretext.name=simclr", "pretext.params={}"]))
    tensors, meta = read_backbone(simclr)  # SimCLR: pooled encoder features only
    assert not meta.decoder and all(k.startswith("encoder.") for k in tensors)


def test_init_decoder_flag(pretrained: Path, scene: Path, sparse_labels: Path, tmp_path: Path,
                           run_cli) -> None:
    args = ("finetune", "--scene", scene, "--labels", sparse_labels, "--init-decoder")
    result = run_cli(*args, "--out", tmp_path / "alone")
    assert result.exit_code == 2 and "--init-decoder needs --init RUN" in result.stderr
    assert not (tmp_path / "alone").exists()
    result = run_cli(*args, "--init", pretrained, "--out", tmp_path / "ft",
                     *as_sets([*TINY_FINETUNE, "trainer.epochs=1"]))
    assert result.exit_code == 0, result
    assert "init_decoder: true" in (tmp_path / "ft" / "config.yaml").read_text()


@pytest.mark.parametrize("decoder", [True, False])
def test_init_decoder_loads_the_pretrained_decoder(pretrained: Path, decoder: bool) -> None:
    tensors, _ = read_backbone(pretrained)
    spec = ModelSpec(arch="unet", encoder="resnet18", in_channels=4, classes=3)
    torch.manual_seed(0)
    model = build_model(spec)
    load_backbone(model, spec, pretrained, decoder=decoder)
    state = model.state_dict()
    loaded = {k for k, v in tensors.items() if torch.equal(state[k], v)}
    assert {k for k in tensors if k.startswith("encoder.")} <= loaded
    decoder_keys = {k for k, v in tensors.items() if k.startswith("decoder.") and v.ndim == 4}
    assert decoder_keys and (decoder_keys <= loaded) == decoder
    assert decoder or not decoder_keys & loaded


def test_finetune_from_vector_points(scene: Path, tmp_path: Path) -> None:
    with rasterio.open(scene) as src:
        transform = src.transform
    ids = class_map()
    names = {1: "forest", 2: "urban", 3: "water"}
    rows, cols = np.mgrid[5:96:9, 3:112:9]
    points = [Point(*(transform * (c + 0.5, r + 0.5))) for r, c in zip(rows.ravel(), cols.ravel(),
                                                                         strict=True)]
    frame = gpd.GeoDataFrame({"landcover": [names[ids[r, c]] for r, c in
                                            zip(rows.ravel(), cols.ravel(), strict=True)]},
                             geometry=points, crs="EPSG:32618").to_crs("EPSG:4326")
    frame.to_file(tmp_path / "points.gpkg")  # another CRS: reprojected onto the scene grid
    cfg = load_config(FinetuneConfig, None, [*TINY_FINETUNE, "trainer.epochs=1"])
    bundle = finetune(tmp_path / "ft", cfg, scenes=[scene], labels=tmp_path / "points.gpkg",
                      label_column="landcover")
    _, meta = load_bundle(bundle)
    assert [c.name for c in meta.classes] == ["forest", "urban", "water"]


def test_finetune_from_partly_labelled_tile_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for folder in ("images", "labels"):
        (tmp_path / "tiles" / folder).mkdir(parents=True)
    for i in range(6):
        mask = (rng.random((48, 48)) < 0.5).astype(np.uint8)
        image = np.stack([mask * 200 + rng.integers(0, 40, mask.shape)] * 3).astype(np.uint8)
        profile = {"driver": "PNG", "width": 48, "height": 48, "dtype": "uint8"}
        with rasterio.open(tmp_path / "tiles/images" / f"t{i}.png", "w", count=3,
                           **profile) as dst:
            dst.write(image)
        if i < 4:  # tiles 4 and 5 have no mask
            with rasterio.open(tmp_path / "tiles/labels" / f"t{i}.png", "w", count=1,
                               **profile) as dst:
                dst.write(mask[None])
    cfg = load_config(FinetuneConfig, None, [*TINY_FINETUNE, "trainer.epochs=1",
                                              "data.label_fraction=0.75", "data.val_fraction=0.3"])
    bundle = finetune(tmp_path / "ft", cfg, tiles=tmp_path / "tiles")
    _, meta = load_bundle(bundle)
    assert [c.id for c in meta.classes] == [0, 1]
    assert meta.resolution is None  # plain PNG tiles carry no ground resolution


def test_init_for_other_bands_is_refused(pretrained: Path, geotiff_factory,
                                         sparse_labels: Path, tmp_path: Path, run_cli) -> None:
    pre = pretrained
    three = geotiff_factory("three.tif", np.ones((3, 96, 112), dtype=np.uint16))
    result = run_cli("finetune", "--scene", three, "--labels", sparse_labels, "--init", pre,
                     "--out", tmp_path / "ft", *as_sets(TINY_FINETUNE))
    assert result.exit_code == 1
    assert "has 3 bands but the pretrained backbone expects 4" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ft").exists()


@pytest.mark.slow
def test_two_process_ddp_pretraining(tiles: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    sets = as_sets(TINY_PRETRAIN)
    proc = subprocess.run([sys.executable, "-m", "rsseg", "pretrain", str(tiles), "--out",
                           str(run), "--epochs", "1", "--devices", "2", *sets],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
    assert (run / "backbone.safetensors").is_file()


def test_pretrain_bad_input_is_one_line(tiles: Path, tmp_path: Path, run_cli) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in ([tmp_path / "missing"], [empty], [tiles, "--method", "nope"],
                 [tiles, "--set", "optim.lr=-1"], [tiles, "--set", "data.view_size=40"]):
        result = run_cli("pretrain", *args, "--out", tmp_path / "run")
        assert result.exit_code == 1, (args, result)
        assert result.stderr.startswith("Error:") and len(result.stderr.splitlines()) == 1
        assert not (tmp_path / "run").exists()  # nothing half-written
    named = run_cli("pretrain", tiles, "--method", "nope", *as_sets(TINY_PRETRAIN))
    assert "valid methods: " in named.stderr and "glcnet" in named.stderr


def test_help_shows_bracketed_defaults(run_cli) -> None:
    """Help texts are plain text: "[default: glcnet]" is shown, not parsed as markup."""
    result = run_cli("pretrain", "--help")
    assert result.exit_code == 0
    assert "[default: glcnet]" in result.stdout and "[config: trainer.epochs]" in result.stdout


@pytest.mark.parametrize("args", [("predict", "scene.tif"), ("bogus",),
                                  ("tile", "a.tif", "--size", "many")])
def test_usage_errors_print_usage_and_exit_2(run_cli, args) -> None:
    """A missing option, an unknown command or a bad value: usage + one error line, exit 2."""
    result = run_cli(*args)
    assert result.exit_code == 2, result
    assert result.stderr.startswith("Usage: rsseg") and "Traceback" not in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("Error: ")


def test_resume_with_another_config_names_the_difference(pretrained: Path, tiles: Path,
                                                         run_cli) -> None:
    result = run_cli("pretrain", tiles, "--out", pretrained, "--resume",
                     *as_sets([*TINY_PRETRAIN, "optim.lr=0.5"]))
    assert result.exit_code == 1
    assert "optim.lr: 0.001 -> 0.5" in result.stderr
