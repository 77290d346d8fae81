"""Combined pretexts: a base wrapped by ``claws`` masks or an ``adversarial`` view,
from a nested config or repeated ``rsseg pretrain --method``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import default_collate

from rsseg.errors import ConfigError
from rsseg.models.factory import ModelSpec, build_model
from rsseg.pipelines.tile import TileOptions, tile_scenes
from rsseg.pretexts.base import DataInfo, get_pretext
from rsseg.pretexts.compose import compose_pretext, pretext_label

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE, PATCH = 32, 8
LANDSAT = ("B1_blue", "B2_green", "B3_red", "B4_nir", "B5_swir1", "B7_swir2")
STILL = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "flip": False, "rot90_p": 0.0,
         "photometric_p": 0.0, "gray_p": 0.0, "blur_p": 0.0}  # views = the tile itself
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ["model.arch=unet", "model.encoder=resnet18", "model.kwargs={}", "data.view_size=32",
        "data.diagnostic_samples=8", "trainer.batch_size=4", "trainer.steps_per_epoch=2",
        "trainer.epochs=1", "trainer.accelerator=cpu"]


def unet(bands: int = 6) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelSpec(arch="unet", encoder="resnet18", in_channels=bands, classes=64))


def vegetation_tiles(items: int = 4) -> tuple[list[np.ndarray], DataInfo]:
    """Normalised 6-band 48×48 tiles: NDVI 0.6 left of a column that moves per item, < 0 right."""
    tiles = []
    for i in range(items):
        raw = np.full((6, 48, 48), 50.0, dtype=np.float32)
        edge = 16 + 4 * i
        raw[2, :, :edge], raw[3, :, :edge] = 20.0, 80.0
        raw[2, :, edge:], raw[3, :, edge:] = 60.0, 50.0
        raw += np.random.default_rng(i).normal(0, 2, raw.shape).astype(np.float32)
        tiles.append((raw - 50.0) / 10.0)
    return tiles, DataInfo(LANDSAT, (50.0,) * 6, (10.0,) * 6)


def test_compose_nests_the_wrappers_around_the_base() -> None:
    nested = ("claws", {"base": "glcnet", "base_params": {}})
    assert compose_pretext(["glcnet", "claws"]) == nested
    assert compose_pretext(["claws", "glcnet"]) == nested  # the base is the non-wrapper
    assert compose_pretext(["glcnet", "adversarial"]) == (
        "adversarial", {"base": "glcnet", "base_params": {}})
    # A config file's params go to the member it names.
    assert compose_pretext(["glcnet", "claws"], "glcnet", {"patch_size": 28}) == (
        "claws", {"base": "glcnet", "base_params": {"patch_size": 28}})
    adversarial = {"base": "glcnet", "base_params": {"patch_size": 28}, "eps": 0.02}
    assert compose_pretext(["glcnet", "adversarial"], "adversarial", adversarial) == (
        "adversarial", adversarial)
    three = compose_pretext(["glcnet", "claws", "adversarial"])
    assert three == ("adversarial", {"base": "claws",
                                     "base_params": {"base": "glcnet", "base_params": {}}})
    assert pretext_label(*three) == "glcnet+claws+adversarial"
    assert pretext_label("adversarial", {}) == "glcnet+adversarial"  # its default base
    assert pretext_label("claws", {}) == "claws"


def test_compose_refuses_what_does_not_combine() -> None:
    with pytest.raises(ConfigError, match=r"'glcnet' and 'simclr' cannot be combined") as err:
        compose_pretext(["glcnet", "simclr"])
    assert "--method glcnet --method" in str(err.value.fix)
    with pytest.raises(ConfigError, match="'glcnet' is given twice"):
        compose_pretext(["glcnet", "claws", "glcnet"])
    with pytest.raises(ConfigError, match=r"unknown method 'glcnett'"):
        compose_pretext(["glcnett", "claws"])
    # Nesting that a wrapper cannot serve: one line from the wrapper, before any training.
    name, params = compose_pretext(["glcnet", "claws", "adversarial"])
    with pytest.raises(ConfigError, match=r"'adversarial' cannot wrap 'claws'"):
        get_pretext(name, unet(), **params)
    name, params = compose_pretext(["glcnet", "adversarial", "claws"])
    with pytest.raises(ConfigError, match=r"'claws' cannot wrap 'adversarial'"):
        get_pretext(name, unet(), **params)


def claws_around_glcnet(weight: float = 1.0) -> tuple[nn.Module, nn.Module,
                                                      dict[str, torch.Tensor]]:
    tiles, info = vegetation_tiles()
    model = unet()
    pretext = get_pretext("claws", model, base="glcnet", view_size=SIZE, weight=weight,
                          base_params={"patch_size": PATCH, "views": STILL})
    pretext.check_data({"two_views"})
    pretext.bind_data(info)
    rng = np.random.default_rng(0)
    batch = default_collate([pretext.sampler()(t, rng) for t in tiles])
    return model, pretext, batch


def test_claws_masks_glcnet_views_and_patches_and_adds_its_loss() -> None:
    model, pretext, batch = claws_around_glcnet()
    assert pretext.base.name == "glcnet" and pretext.base.config.view_size == SIZE
    assert set(batch) == {"view1", "view2", "mask1", "mask2", "patches"}
    assert batch["view1"].shape[-1] == SIZE
    # Every matched box is centred on a pixel attended (vegetation) in view 1 (the views are
    # the whole tile, so attended centres exist).
    half = PATCH // 2
    for item, rows in enumerate(batch["patches"]):
        for y1, x1, _, _ in rows.tolist():
            if y1 >= 0:
                assert batch["mask1"][item, y1 + half, x1 + half] == 1
    assert 0 < batch["mask1"].mean() < 1
    loss, logs = pretext(batch, model)
    assert {"loss_base", "loss_global", "loss_local", "loss_claws", "mask_fraction"} <= set(logs)
    assert loss.item() == pytest.approx((logs["loss_base"] + logs["loss_claws"]).item(),
                                        rel=1e-5)
    # The base saw the masked views.
    masked = {**batch, "view1": batch["view1"] * batch["mask1"][:, None],
              "view2": batch["view2"] * batch["mask2"][:, None]}
    with torch.no_grad():
        base_loss, _ = pretext.base(masked, model)
    assert base_loss.item() == pytest.approx(logs["loss_base"].item(), rel=1e-4)
    loss.backward()
    assert all(p.grad is not None for p in pretext.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_claws_with_weight_zero_is_the_masking_alone() -> None:
    model, pretext, batch = claws_around_glcnet(weight=0.0)
    assert pretext.head is None
    loss, logs = pretext(batch, model)
    assert "loss_claws" not in logs
    assert loss.item() == pytest.approx(logs["loss_base"].item())


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import rasterio
    from affine import Affine

    folder = tmp_path_factory.mktemp("combo")
    rng = np.random.default_rng(0)
    pixels = rng.integers(20, 200, (6, 96, 96)).astype(np.uint8)
    pixels[3, :, :48] = 230  # NIR high on the left: NDVI > 0.2 there
    scene = folder / "scene.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=96, height=96, count=6, dtype="uint8",
                       crs="EPSG:32618", transform=Affine(30, 0, 500_000, 0, -30, 4_500_000)
                       ) as dst:
        dst.write(pixels)
        dst.descriptions = LANDSAT
    tile_scenes([scene], folder / "tiles", TileOptions(size=48, stride=16))
    return folder / "tiles"


@pytest.mark.parametrize("wrapper", ["claws", "adversarial"])
def test_cli_repeated_method_combines(tiles: Path, tmp_path: Path, run_cli, wrapper: str) -> None:
    run = tmp_path / "run"
    sets = [*TINY, "pretext.params.base_params.patch_size=8"]
    result = run_cli("pretrain", tiles, "--out", run, "--config",
                     CONFIGS / "pretrain_glcnet_cpu.yaml", "--method", "glcnet",
                     "--method", wrapper, *[a for s in sets for a in ("--set", s)])
    assert result.exit_code == 0, result.stderr
    assert f"Pretrained glcnet+{wrapper}" in result.stdout
    resolved = yaml.safe_load((run / "config.yaml").read_text())["pretext"]
    assert resolved["name"] == wrapper and resolved["params"]["base"] == "glcnet"
    # The config file's GLCNet params went to the base; --set applied on top.
    assert resolved["params"]["base_params"] == {"patch_size": 8, "patch_num": 4}
    assert (run / "backbone.safetensors").is_file()


def test_cli_refuses_two_complete_objectives(tiles: Path, tmp_path: Path, run_cli) -> None:
    result = run_cli("pretrain", tiles, "--out", tmp_path / "run", "--method", "glcnet",
                     "--method", "simclr", *[a for s in TINY for a in ("--set", s)])
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot be combined" in result.stderr
    assert not (tmp_path / "run").exists()


def test_config_file_combination_is_the_repeated_method_one() -> None:
    from rsseg.config import PretrainConfig, load_config

    config = load_config(PretrainConfig, CONFIGS / "pretrain_glcnet_claws_cpu.yaml")
    name, params = config.pretext.name, dict(config.pretext.params)
    assert pretext_label(name, params) == "glcnet+claws"
    glcnet = load_config(PretrainConfig, CONFIGS / "pretrain_glcnet_cpu.yaml").pretext
    composed = compose_pretext(["glcnet", "claws"], glcnet.name, glcnet.params)
    assert composed[1]["base_params"] == params["base_params"]
    pretext = get_pretext(name, unet(), **{**params, "view_size": 64,
                                           "base_params": {"patch_size": PATCH}})
    pretext.bind_data(vegetation_tiles()[1])
    assert pretext.sampler().patch_size == PATCH and pretext.sampler().size == 64
