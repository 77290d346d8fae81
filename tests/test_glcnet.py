"""GLCNet (and SimCLR) pretexts: features, patch sampling, losses, learning, the registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import default_collate

from rsseg.errors import ConfigError
from rsseg.models.factory import ModelSpec, build_model
from rsseg.pretexts.base import Pretext, get_pretext, pretext_class, pretext_names
from rsseg.pretexts.features import box_mean, extract_features, style_vector
from rsseg.pretexts.glcnet import GLCNet
from rsseg.pretexts.views import make_view_pair, sample_patches

SIZE, PATCH = 64, 16
DEEPLAB = {"encoder_output_stride": 16, "decoder_atrous_rates": [6, 12, 18],
           "decoder_aspp_separable": False}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(arch: str = "unet", bands: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    kwargs = DEEPLAB if arch == "deeplabv3plus" else {}
    return build_model(ModelSpec(arch=arch, encoder="resnet18", in_channels=bands, classes=64,
                                 kwargs=kwargs))


def tiny_batch(pretext: Pretext, bands: int = 4, items: int = 4, seed: int = 0,
               tiles: list[np.ndarray] | None = None) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    if tiles is None:
        rows, cols = np.mgrid[0:80, 0:80] / 80.0
        tiles = [np.stack([np.sin((b + 1 + i) * 3 * rows + (b - i) * cols) for b in range(bands)])
                 .astype(np.float32) for i in range(items)]
    return default_collate([pretext.sampler()(tile, rng) for tile in tiles])


def encoder_grad(model: nn.Module) -> float:
    first = next(m for m in model.encoder.modules() if isinstance(m, nn.Conv2d))
    assert first.weight.grad is not None
    return float(first.weight.grad.abs().sum())


def test_style_vector_is_mean_then_variance() -> None:
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    got = style_vector(x)
    assert got.shape == (2, 6)
    for b in range(2):
        for c in range(3):
            values = [float(v) for v in x[b, c].flatten()]
            mean = sum(values) / len(values)
            var = sum((v - mean) ** 2 for v in values) / len(values)
            assert got[b, c].item() == pytest.approx(mean, abs=1e-5)
            assert got[b, 3 + c].item() == pytest.approx(var, abs=1e-5)


def test_box_mean_matches_slicing_loop() -> None:
    x = torch.randn(3, 5, 20, 24, generator=torch.Generator().manual_seed(0))
    item, top, left = torch.tensor([0, 2, 2, 1]), torch.tensor([0, 13, 4, 7]), torch.tensor(
        [0, 17, 9, 3])
    got = box_mean(x, item, top, left, 7)
    for n in range(4):
        b, y, x0 = int(item[n]), int(top[n]), int(left[n])
        expected = x[b, :, y:y + 7, x0:x0 + 7].mean(dim=(1, 2))
        torch.testing.assert_close(got[n], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("arch", "global_channels", "global_side"),
                         [("deeplabv3plus", 256, SIZE // 16), ("unet", 512, SIZE // 32)])
def test_feature_maps_per_architecture(arch: str, global_channels: int, global_side: int) -> None:
    maps = extract_features(tiny_model(arch), torch.randn(2, 4, SIZE, SIZE))
    assert maps.global_.shape == (2, global_channels, global_side, global_side)
    assert maps.local.shape == (2, 64, SIZE, SIZE)


def test_patches_never_overlap_and_stay_inside_both_views() -> None:
    rng = np.random.default_rng(0)
    tile = np.zeros((1, 100, 100), dtype=np.float32)
    filled = 0
    for _ in range(25):
        pair = make_view_pair(tile, rng, SIZE)
        boxes = sample_patches(pair.index1, pair.index2, PATCH, 6, rng)
        valid = boxes[boxes[:, 0] >= 0]
        assert (boxes[len(valid):] == -1).all()  # filled rows first, then -1
        filled += len(valid)
        assert valid.min(initial=0) >= 0 and valid.max(initial=0) <= SIZE - PATCH
        for view in (0, 1):
            corners = valid[:, 2 * view: 2 * view + 2]
            for i in range(len(corners)):
                for j in range(i):
                    gap = np.abs(corners[i] - corners[j])
                    assert (gap >= PATCH).any(), "boxes overlap"
        half = PATCH // 2
        np.testing.assert_array_equal(pair.index1[valid[:, 0] + half, valid[:, 1] + half],
                                      pair.index2[valid[:, 2] + half, valid[:, 3] + half])
    assert filled > 25 * 2


def test_patch_sampling_runs_out_of_room_gracefully() -> None:
    index = np.arange(SIZE * SIZE).reshape(SIZE, SIZE)
    boxes = sample_patches(index, index, SIZE, 4, np.random.default_rng(0))
    np.testing.assert_array_equal(boxes[0], [0, 0, 0, 0])
    assert (boxes[1:] == -1).all()
    assert (sample_patches(index, -np.ones_like(index), PATCH, 2, np.random.default_rng(0))
            == -1).all()


@pytest.mark.parametrize("arch", ["deeplabv3plus", "unet"])
def test_forward_backward_reaches_the_encoder(arch: str) -> None:
    model = tiny_model(arch)
    pretext = get_pretext("glcnet", model, view_size=SIZE, patch_size=PATCH)
    loss, logs = pretext(tiny_batch(pretext, items=3), model)
    assert loss.shape == () and torch.isfinite(loss)
    assert set(logs) == {"loss", "loss_global", "loss_local", "patches_per_item"}
    assert logs["loss"].item() == pytest.approx(
        0.5 * logs["loss_global"].item() + 0.5 * logs["loss_local"].item(), rel=1e-5)
    loss.backward()
    assert encoder_grad(model) > 0
    assert all(p.grad is not None for p in pretext.parameters())


def test_adam_steps_lower_the_loss_on_a_fixed_batch() -> None:
    model = tiny_model("unet")
    pretext = get_pretext("glcnet", model, view_size=SIZE, patch_size=PATCH)
    batch = tiny_batch(pretext)
    optimizer = torch.optim.Adam([*model.parameters(), *pretext.parameters()], lr=1e-3)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss, _ = pretext(batch, model)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_ablation_switches() -> None:
    model = tiny_model("unet")
    batch = tiny_batch(get_pretext("glcnet", model, view_size=SIZE, patch_size=PATCH), items=2)

    no_style = get_pretext("glcnet", model, view_size=SIZE, patch_size=PATCH, use_style=False)
    assert no_style.global_head[0].in_features == 512
    assert get_pretext("glcnet", model, view_size=SIZE).global_head[0].in_features == 1024

    no_global = get_pretext("glcnet", model, view_size=SIZE, patch_size=PATCH, use_global=False)
    loss, logs = no_global(batch, model)
    assert no_global.global_head is None and "loss_global" not in logs
    assert loss.item() == pytest.approx(logs["loss_local"].item())

    no_local = get_pretext("glcnet", model, view_size=SIZE, use_local=False)
    loss, logs = no_local({k: v for k, v in batch.items() if k != "patches"}, model)
    assert no_local.local_head is None and "loss_local" not in logs
    assert loss.item() == pytest.approx(logs["loss_global"].item())
    loss.backward()
    assert encoder_grad(model) > 0

    with pytest.raises(ConfigError, match="cannot both be false"):
        get_pretext("glcnet", model, use_global=False, use_local=False)


def test_simclr_is_a_second_registered_pretext() -> None:
    model = tiny_model("deeplabv3plus")
    pretext = get_pretext("simclr", model, view_size=SIZE)
    batch = tiny_batch(pretext, items=3)
    assert set(batch) == {"view1", "view2"}
    loss, logs = pretext(batch, model)
    loss.backward()
    assert torch.isfinite(loss) and encoder_grad(model) > 0 and set(logs) == {"loss"}


def test_registry_and_config_errors() -> None:
    assert {"glcnet", "simclr"} <= set(pretext_names())
    assert pretext_class("glcnet") is GLCNet
    with pytest.raises(ConfigError, match=r"valid methods: .*glcnet.*simclr"):
        pretext_class("glcnett")
    model = tiny_model("unet")
    with pytest.raises(ConfigError, match=r"unknown config key 'patchsize'.*patch_size"):
        get_pretext("glcnet", model, patchsize=3)
    with pytest.raises(ConfigError, match=r"lam=1.5.*allowed: 0 ≤ x ≤ 1"):
        get_pretext("glcnet", model, lam=1.5)
    with pytest.raises(ConfigError, match=r"unknown config key 'views\.hues'"):
        get_pretext("glcnet", model, views={"hues": 0.1})
    with pytest.raises(ConfigError, match="exceeds view_size"):
        get_pretext("glcnet", model, view_size=64, patch_size=96)
    GLCNet.check_data({"two_views", "labels"})
    with pytest.raises(ConfigError, match="needs two_views"):
        GLCNet.check_data({"labels"})


def test_embed_gives_global_and_local_vectors() -> None:
    model = tiny_model("deeplabv3plus").eval()
    pretext = get_pretext("glcnet", model, view_size=SIZE, patch_size=PATCH)
    embeddings = pretext.embed(torch.randn(3, 4, SIZE, SIZE), model)
    assert embeddings["global"].shape == (3, 256)
    assert embeddings["local"].shape == (3 * pretext.embed_grid**2, 64)


def real_tiles(path: Path, count: int, side: int) -> list[np.ndarray]:
    """``count`` windows of ``side`` px from the scene, normalised per band over the windows."""
    rasterio = pytest.importorskip("rasterio")
    from rasterio.windows import Window

    with rasterio.open(path) as src:
        rows = np.linspace(0, src.height - side, count).astype(int)
        cols = np.linspace(0, src.width - side, count).astype(int)[::-1]
        raw = np.stack([src.read(window=Window(c, r, side, side)) for r, c in zip(rows, cols,
                                                                                   strict=True)])
    values = raw.astype(np.float32)
    mean, std = values.mean(axis=(0, 2, 3), keepdims=True), values.std(axis=(0, 2, 3),
                                                                        keepdims=True)
    return list((values - mean) / (std + 1e-6))


@pytest.mark.realdata
def test_loss_decreases_on_real_landsat_tiles(shared_data: Path) -> None:
    path = shared_data / "nc_landsat" / "landsat7_2000_6band_uint8.tif"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    tiles = real_tiles(path, count=4, side=80)
    model = tiny_model("unet", bands=6)
    pretext = get_pretext("glcnet", model, view_size=SIZE, patch_size=PATCH)
    batch = tiny_batch(pretext, tiles=tiles)
    optimizer = torch.optim.Adam([*model.parameters(), *pretext.parameters()], lr=1e-3)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss, _ = pretext(batch, model)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
