"""Fine-tuning options: discriminative learning rate of a pretrained encoder, config fields."""

from __future__ import annotations

import pytest

from rsseg.config import FinetuneConfig, load_config
from rsseg.errors import ConfigError
from rsseg.models.factory import ModelSpec, build_model
from rsseg.training.modules import SegmentationModule

SPEC = ModelSpec(arch="unet", encoder="resnet18", in_channels=3, classes=4,
                 kwargs={"encoder_depth": 3, "decoder_channels": [32, 16, 8]})


def _groups(scale: float, model=None) -> list[dict]:
    model = model or build_model(SPEC)
    optim = load_config(FinetuneConfig, sets=["optim.lr=0.01"]).optim
    module = SegmentationModule(model, 4, 255, optim, 3, encoder_lr_scale=scale)
    return module.configure_optimizers()["optimizer"].param_groups


def test_encoder_learns_at_a_fraction_of_the_decoder_lr() -> None:
    model = build_model(SPEC)
    encoder = {id(p) for p in model.encoder.parameters()}
    groups = _groups(0.1, model)
    assert [g["lr"] for g in groups] == pytest.approx([0.001, 0.01])
    assert {id(p) for p in groups[0]["params"]} == encoder
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))
    assert not encoder & {id(p) for p in groups[1]["params"]}


def test_one_learning_rate_by_default() -> None:
    groups = _groups(1.0)
    assert len(groups) == 1 and groups[0]["lr"] == pytest.approx(0.01)


def test_new_options_are_validated() -> None:
    cfg = load_config(FinetuneConfig, sets=["data.balance=0.5", "data.jitter=0.05",
                                             "encoder_lr_scale=0.2"])
    assert (cfg.data.balance, cfg.data.jitter, cfg.encoder_lr_scale) == (0.5, 0.05, 0.2)
    for bad in ("data.balance=2", "data.jitter=-1", "encoder_lr_scale=0"):
        with pytest.raises(ConfigError):
            load_config(FinetuneConfig, sets=[bad])


def test_ema_averages_the_weights_and_is_what_validation_scores() -> None:
    import torch

    model = build_model(SPEC)
    optim = load_config(FinetuneConfig).optim
    module = SegmentationModule(model, 4, 255, optim, 3, ema=0.5)
    assert not any(p.requires_grad for p in module.ema_model.parameters())
    opt_params = module.configure_optimizers()["optimizer"].param_groups[0]["params"]
    assert len(opt_params) == len(list(model.parameters()))  # the average is not optimised
    module.on_train_batch_end(None, None, 0)  # first update: a copy
    weight = model.segmentation_head[0].weight
    before = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)
    model(torch.zeros(2, 3, 32, 32))  # batch-norm statistics move (train mode)
    module.on_train_batch_end(None, None, 1)
    averaged = module.trained_model().segmentation_head[0].weight
    torch.testing.assert_close(averaged, before + 0.5)
    assert module.trained_model() is module.ema_model.module
