"""The contract every registered pretext keeps (ARCHITECTURE.md, "Adding a method").

For each name in the registry: it builds from its ``configs/pretrain_<name>_cpu.yaml`` (sizes
shrunk to 64 px views), its own sampler turns real tiles (the NC Landsat scene in
``../shared/data`` when present, else synthetic 6-band tiles) into a batch, forward + backward
gives a finite scalar loss whose gradient reaches the encoder and every trainable head, and a
few Adam steps lower the loss on that fixed batch (state such as queues and banks is held fixed,
so the loss is a function of the trained parameters alone).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import default_collate

from rsseg.config import PretrainConfig, load_config
from rsseg.models.factory import ModelSpec, build_model
from rsseg.pretexts.base import DataInfo, Pretext, get_pretext, pretext_names
from rsseg.pretexts.compose import with_view_size
from rsseg.pretexts.views import MatchedViewSampler, TwoViewSampler

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHARED_SCENE = (Path(os.environ.get("RSSEG_SHARED_DATA",
                                    Path(__file__).resolve().parents[2] / "shared" / "data"))
                / "nc_landsat" / "landsat7_2000_6band_uint8.tif")
VIEW, PATCH, TILE, ITEMS = 64, 16, 80, 4




def tiles_and_info() -> tuple[list[np.ndarray], list[np.ndarray], DataInfo]:
    """``ITEMS`` normalised ``(6, TILE, TILE)`` tiles, their valid masks and band info."""
    if SHARED_SCENE.is_file():
        import rasterio
        from rasterio.windows import Window

        with rasterio.open(SHARED_SCENE) as src:
            names = tuple(src.descriptions)
            rows = np.linspace(60, src.height - TILE - 60, ITEMS).astype(int)
            cols = np.linspace(60, src.width - TILE - 60, ITEMS).astype(int)[::-1]
            raw = np.stack([src.read(window=Window(c, r, TILE, TILE))
                            for r, c in zip(rows, cols, strict=True)]).astype(np.float32)
        valid = raw.any(axis=1)  # nodata 0 in every band
    else:
        names = ("blue", "green", "red", "nir", "swir1", "swir2")
        r, c = np.mgrid[0:TILE, 0:TILE] / TILE
        raw = np.stack([np.stack([50 + 40 * np.sin((b + 1 + i) * 3 * r + (b - i) * c)
                                  for b in range(6)]) for i in range(ITEMS)]).astype(np.float32)
        valid = np.ones((ITEMS, TILE, TILE), dtype=bool)
    mean = np.array([raw[:, b][valid].mean() for b in range(6)], dtype=np.float32)
    std = np.array([raw[:, b][valid].std() + 1e-6 for b in range(6)], dtype=np.float32)
    tiles = [np.where(v, (t - mean[:, None, None]) / std[:, None, None], 0).astype(np.float32)
             for t, v in zip(raw, valid, strict=True)]
    info = DataInfo(names, tuple(float(m) for m in mean), tuple(float(s) for s in std))
    return tiles, list(valid), info


def shrink(params: dict[str, Any]) -> dict[str, Any]:
    """Test-sized copy of a config's params: patch boxes of ``PATCH`` px (nested too)."""
    out = {}
    for key, value in params.items():
        if key == "patch_size":
            value = min(value, PATCH)
        elif isinstance(value, dict) and key.endswith("params"):
            value = shrink(value)
        out[key] = value
    return out


def build(name: str) -> tuple[nn.Module, Pretext, dict[str, torch.Tensor]]:
    path = CONFIGS / f"pretrain_{name}_cpu.yaml"
    assert path.is_file(), f"method {name!r} has no {path.name} in configs/"
    config = load_config(PretrainConfig, path)
    assert config.pretext.name == name
    tiles, valid, info = tiles_and_info()
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch=config.model.arch, encoder=config.model.encoder,
                                  in_channels=len(info.band_names), classes=64,
                                  kwargs=config.model.kwargs))
    params = shrink(dict(config.pretext.params))
    params.pop("view_size", None)
    params = with_view_size(name, params, VIEW)
    pretext = get_pretext(name, model, **params)
    pretext.check_data({"two_views"})
    pretext.bind_data(info)
    sampler = pretext.sampler()
    two_views = isinstance(sampler, TwoViewSampler | MatchedViewSampler)
    assert type(pretext).view_pipeline == two_views, (
        f"{name}: view_pipeline must say whether its sampler draws GLCNet's two views")
    rng = np.random.default_rng(0)
    batch = default_collate([sampler(t, rng, v) for t, v in zip(tiles, valid, strict=True)])
    return model, pretext, batch


def frozen_state(pretext: Pretext) -> dict[str, torch.Tensor]:
    """Buffers and untrained parameters (queues, banks, momentum encoders), copied."""
    state = {n: b.detach().clone() for n, b in pretext.named_buffers()}
    state.update({n: p.detach().clone() for n, p in pretext.named_parameters()
                  if not p.requires_grad})
    return state


def first_conv_grad(model: nn.Module) -> float:
    conv = next(m for m in model.encoder.modules() if isinstance(m, nn.Conv2d))
    return 0.0 if conv.weight.grad is None else float(conv.weight.grad.abs().sum())


def test_registry_lists_the_digest_pretexts() -> None:
    assert {"glcnet", "simclr", "directclr", "hcsc", "claws", "adversarial"} <= set(
        pretext_names())


@pytest.mark.parametrize("name", pretext_names())
def test_method_contract(name: str) -> None:
    model, pretext, batch = build(name)
    model.train()
    pretext.train()
    state = frozen_state(pretext)
    trainable = [p for p in [*model.parameters(), *pretext.parameters()] if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-3)
    losses = []
    for step in range(4):
        with torch.no_grad():
            for key, value in pretext.state_dict(keep_vars=True).items():
                if key in state:
                    value.copy_(state[key])
        torch.manual_seed(1)  # same dropout masks / selective-coding draws every step
        optimizer.zero_grad()
        loss, logs = pretext(batch, model)
        assert loss.shape == () and torch.isfinite(loss), f"{name}: loss {loss}"
        assert all(torch.isfinite(v).all() and v.ndim == 0 for v in logs.values())
        assert "loss" in logs
        loss.backward()
        if step == 0:
            assert first_conv_grad(model) > 0, f"{name}: no gradient reaches the encoder"
            heads = [n for n, p in pretext.named_parameters()
                     if p.requires_grad and p.grad is None]
            assert not heads, f"{name}: no gradient for {heads}"
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], f"{name}: loss did not go down: {losses}"
    pretext.on_epoch_start(0, model)
    pretext.on_epoch_start(100, model)  # per-epoch hooks run on whatever state there is
