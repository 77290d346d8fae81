"""``rsseg demo`` on the bundled scene: the chain runs (tiny budget); its figures (slow)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import rasterio

from rsseg.pipelines import demo


@pytest.fixture
def tiny_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    pre = copy.deepcopy(demo.PRETRAIN)
    pre["trainer"].update(epochs=1, batch_size=8, steps_per_epoch=2)
    pre["data"]["diagnostic_samples"] = 8
    ft = copy.deepcopy(demo.FINETUNE)
    ft["trainer"].update(epochs=1, steps_per_epoch=2, batch_size=4)
    monkeypatch.setattr(demo, "PRETRAIN", pre)
    monkeypatch.setattr(demo, "FINETUNE", ft)


def test_demo_chain_on_the_bundled_scene(tiny_budget: None, tmp_path: Path, run_cli) -> None:
    out = tmp_path / "demo"
    result = run_cli("demo", "--out", out)
    assert result.exit_code == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("glcnet", "random"):
        assert set(metrics[name]) == {"oa", "kappa", "miou"}
        assert 0 <= metrics[name]["oa"] <= 1
    assert "glcnet" in result.stdout and "Kappa" in result.stdout
    with rasterio.open(out / "data" / demo.SCENE) as scene, \
            rasterio.open(out / "prediction_glcnet.tif") as pred:
        assert (pred.crs, pred.transform, pred.shape) == (scene.crs, scene.transform, scene.shape)
        assert pred.nodata == 255
        valid = scene.dataset_mask() > 0
        assert ((pred.read(1) == 255) == ~valid).all()  # nodata exactly where the input has none
    for name in ("glcnet", "random"):  # QGIS style and quicklook beside each map
        assert (out / f"prediction_{name}.qml").is_file()
        assert (out / f"preview_{name}.png").stat().st_size > 0
    assert run_cli("demo", "--out", out).exit_code == 1  # never overwritten silently


@pytest.mark.slow
def test_demo_reaches_its_kappa(tmp_path: Path, run_cli) -> None:
    out = tmp_path / "demo"
    assert run_cli("demo", "--out", out).exit_code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["glcnet"]["kappa"] > 0.30
    assert metrics["seconds"] < 600
