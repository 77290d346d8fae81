"""``rsseg demo`` on the bundled imagery: the chain runs (tiny budget); its figures (slow)."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from PIL import Image

from rsseg.classes import read_classes
from rsseg.io.raster import NoGeoreferencing
from rsseg.pipelines import demo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AERIAL_PRETRAIN", "NC_PRETRAIN"):
        pre = copy.deepcopy(getattr(demo, name))
        pre["trainer"].update(epochs=1, batch_size=4, steps_per_epoch=2, num_workers=0)
        pre["data"]["diagnostic_samples"] = 8
        monkeypatch.setattr(demo, name, pre)
    for name in ("AERIAL_FINETUNE", "NC_FINETUNE"):
        ft = copy.deepcopy(getattr(demo, name))
        ft["trainer"].update(epochs=1, steps_per_epoch=2, batch_size=4)
        monkeypatch.setattr(demo, name, ft)


def test_demo_chain_on_both_bundled_cases(tiny_budget: None, tmp_path: Path, run_cli) -> None:
    out = tmp_path / "demo"
    result = run_cli("demo", "--out", out)
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for case, classes in (("aerial", 5), ("nc", 7)):
        for arm in ("glcnet", "random"):
            assert set(metrics[case][arm]) == {"oa", "kappa", "miou", "iou"}
            assert 0 <= metrics[case][arm]["oa"] <= 1
            assert len(metrics[case][arm]["iou"]) == classes
        assert metrics[case]["verdict"] in result.stdout
        assert "mIoU points" in metrics[case]["verdict"]
    assert "IoU building" in result.stdout and "IoU forest" in result.stdout
    nc = out / "nc"
    with rasterio.open(nc / "data" / demo.NC_SCENE) as scene, \
            rasterio.open(nc / "prediction_glcnet.tif") as pred:
        assert (pred.crs, pred.transform, pred.shape) == (scene.crs, scene.transform, scene.shape)
        assert pred.nodata == 255
        valid = scene.dataset_mask() > 0
        assert ((pred.read(1) == 255) == ~valid).all()  # nodata exactly where the input has none
    for name in ("glcnet", "random"):  # QGIS style and quicklook beside each map
        assert (nc / f"prediction_{name}.qml").is_file()
        assert (nc / f"preview_{name}.png").stat().st_size > 0
        assert len(list((out / "aerial" / f"prediction_{name}").glob("*.tif"))) == 4
    assert (out / "aerial" / "comparison.png").stat().st_size > 0
    assert run_cli("demo", "--out", out).exit_code == 1  # never overwritten silently


def test_one_case_and_unknown_cases(tiny_budget: None, tmp_path: Path, run_cli) -> None:
    bad = run_cli("demo", "--out", tmp_path / "x", "--case", "landsat")
    assert bad.exit_code == 1 and "aerial, nc" in bad.stderr
    assert not (tmp_path / "x").exists()
    out = tmp_path / "aerial_only"
    assert run_cli("demo", "--out", out, "--case", "aerial").exit_code == 0
    assert set(json.loads((out / "metrics.json").read_text())) >= {"aerial", "seed"}
    assert not (out / "nc").exists()
    assert all((out / "aerial" / f"suggest.{ext}").is_file() for ext in ("gpkg", "qml"))
    record = json.loads((out / "metrics.json").read_text())["aerial"]["suggest"]
    assert record["next"].startswith("Label where it matters")


def _aerial_bundle(folder: Path) -> Path:
    """A per-pixel bundle on the aerial images' 3 bands and 5 classes (seconds, not a demo)."""
    import torch

    from rsseg.models.bundle import BundleMeta, save_bundle
    from rsseg.models.factory import ModelSpec, build_model

    spec = ModelSpec(arch="pixel", in_channels=3, classes=5)
    net = build_model(spec)
    with torch.no_grad():
        net.net[0].weight.copy_(torch.randn(5, 3, 1, 1, generator=torch.Generator().manual_seed(0)))
    classes = read_classes(demo.bundled("dubai_aerial") / demo.AERIAL_CLASSES)
    meta = BundleMeta(model=spec, tile=256, overlap=0,
                      bands=[{"name": f"band {i}", "mean": 100.0, "std": 50.0} for i in (1, 2, 3)],
                      classes=[{"id": c.id, "name": c.name, "color": c.color}
                               for c in classes.classes])
    return save_bundle(folder / "aerial.rsseg", net, meta)


def test_aerial_case_ends_with_points_to_label(tmp_path: Path) -> None:
    """suggest.gpkg on the training images (laid side by side), away from their points, and
    the line that fine-tunes on them: the files it names load as finetune reads them."""
    import geopandas as gpd

    from rsseg.io.raster import open_scene
    from rsseg.labels import load_label_files

    data = demo.bundled("dubai_aerial")
    out = tmp_path / "aerial"
    out.mkdir()
    classes = read_classes(data / demo.AERIAL_CLASSES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoGeoreferencing)
        record = demo.suggest_next(out, data, classes, _aerial_bundle(tmp_path), seed=0)
    assert record["points"] == demo.SUGGEST_POINTS
    assert "QGIS" in record["next"] and f"--labels {out / 'suggest.gpkg'}" in record["next"]
    frame = gpd.read_file(out / "suggest.gpkg")
    assert len(frame) == demo.SUGGEST_POINTS and frame["label"].isna().all()
    assert (out / "suggest.qml").is_file()
    with rasterio.open(out / "training_images.tif") as src:
        cols, rows = ~src.transform * (frame.geometry.x.to_numpy(), frame.geometry.y.to_numpy())
        rows, cols = np.floor(rows).astype(int), np.floor(cols).astype(int)
        valid = src.dataset_mask() > 0
        assert src.count == 3 and src.crs is None
    with rasterio.open(out / "training_points.tif") as src:
        points = src.read(1)
    assert (points != 255).sum() == 160 and valid[rows, cols].all()
    labelled = np.argwhere(points != 255)
    got = np.column_stack([rows, cols])
    assert np.sqrt(((got[:, None] - labelled[None]) ** 2).sum(-1)).min() >= 5
    frame["label"] = frame["predicted"]  # the analyst's answers
    frame.to_file(out / "suggest.gpkg")
    with open_scene(out / "training_images.tif") as scene:
        joined = load_label_files([out / "training_points.tif", out / "suggest.gpkg"],
                                  scene.info, "label")
    assert (joined.labels != 255).sum() == 160 + demo.SUGGEST_POINTS
    assert list(joined.classes.names) == list(classes.names)


def test_bundled_points_are_sparse_and_apart_from_the_reference() -> None:
    """Training reads 20 points per image; the dense labels of the held-out images only score."""
    folder = demo.bundled("dubai_aerial")
    points = sorted((folder / "points").glob("*.png"))
    reference = sorted((folder / "reference").glob("*.png"))
    assert len(points) == 8 and len(reference) == 4
    assert not {p.stem for p in points} & {p.stem for p in reference}
    for p in points:
        assert ((np.array(Image.open(p)) != 255).sum()) == 20
    labels = np.concatenate([np.array(Image.open(p)).ravel() for p in points])
    assert set(np.unique(labels[labels != 255])) == {0, 1, 2, 3, 4}  # every class has points


def test_aerial_case_fine_tunes_with_the_cpu_recipe() -> None:
    """The demo's fine-tuning is configs/finetune_cpu.yaml (both arms) but for its budget and
    the validation split that 160 points cannot spare; its model is the pretraining one."""
    recipe = yaml.safe_load((ROOT / "configs" / "finetune_cpu.yaml").read_text())
    mine = demo.AERIAL_FINETUNE
    assert mine["model"] == recipe["model"] == demo.AERIAL_PRETRAIN["model"]
    assert mine["optim"] == recipe["optim"]
    for key in ("encoder_lr_scale", "init_decoder", "ema", "tile", "overlap"):
        assert mine[key] == recipe[key]
    assert {k: v for k, v in mine["data"].items() if k != "val_fraction"} == \
        {k: v for k, v in recipe["data"].items() if k not in ("val_fraction", "val_block")}
    pretrain = yaml.safe_load((ROOT / "configs" / "pretrain_glcnet_cpu.yaml").read_text())
    assert demo.AERIAL_PRETRAIN["model"] == pretrain["model"]
    assert demo.AERIAL_PRETRAIN["pretext"]["params"] == pretrain["pretext"]["params"]


@pytest.mark.slow
def test_demo_reaches_its_figures(tmp_path: Path, run_cli) -> None:
    out = tmp_path / "demo"
    assert run_cli("demo", "--out", out).exit_code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["nc"]["glcnet"]["kappa"] > 0.30
    assert metrics["aerial"]["glcnet"]["miou"] > metrics["aerial"]["random"]["miou"]
    assert metrics["seconds"] < 600


def test_overwrite_replaces_only_a_demo_folder(tmp_path: Path, run_cli) -> None:
    precious = tmp_path / "project"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    result = run_cli("demo", "--out", precious, "--overwrite")
    assert result.exit_code == 1 and "notes.txt" in result.stderr
    assert (precious / "notes.txt").read_text() == "mine"
