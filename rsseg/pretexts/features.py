"""GLCNet's two feature maps from a segmentation-models-pytorch model, and pooling on them.

- "global": the ASPP module's output for DeepLabV3/V3+ (256 channels, stride 16; in smp ≥ 0.3 the
  ``ASPP`` instance inside ``decoder.aspp``: branches + 1×1 projection + dropout, the same point as
  the official code's ``Encoder`` output), else the deepest encoder stage (U-Net, FPN, ...).
- "local": a decoder feature of at least ``LOCAL_MIN_CHANNELS`` (64) channels, bilinearly resized
  to the input size: the model's output map (built with ``classes=64`` for pretraining, as the
  official code does) when the decoder's last stage is that wide (DeepLabV3+: 256 channels), else
  the last decoder stage that is (smp U-Net's (256, 128, 64, 32, 16) decoder: the 64-channel
  stage at stride 4), so the local contrast is never starved to a 16-channel stage
  (docs/methods.md, "GLCNet — local matching branch").

Both come from one ordinary ``model(x)`` call with forward hooks, so any smp architecture works.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsseg.models import parts
from rsseg.models.parts import global_module

LOCAL_MIN_CHANNELS = 64  # the local branch never reads a narrower decoder feature


@dataclass(frozen=True)
class FeatureMaps:
    """``global_``: ``(B, Cg, h, w)``; ``local``: ``(B, Cl, H, W)`` at the input size."""

    global_: Tensor
    local: Tensor


def local_module(model: nn.Module) -> nn.Module | None:
    """The decoder stage whose output is the "local" map, or None for the model's output.

    None when the segmentation head reads ≥ ``LOCAL_MIN_CHANNELS`` channels; else the last block
    of ``decoder.blocks`` whose last convolution has that many (its output channels).
    """
    head = parts.smp_head(model)
    head_in = _conv_channels(head, first=True) if head is not None else None
    blocks = getattr(getattr(model, "decoder", None), "blocks", None)
    if head_in is None or head_in >= LOCAL_MIN_CHANNELS or blocks is None:
        return None
    stages = blocks.values() if isinstance(blocks, nn.ModuleDict) else blocks
    wide = [b for b in stages if (_conv_channels(b) or 0) >= LOCAL_MIN_CHANNELS]
    return wide[-1] if wide else None


def extract_features(model: nn.Module, x: Tensor) -> FeatureMaps:
    """Run ``model(x)`` once and return its global and local feature maps.

    Args:
        x: ``(B, C, H, W)`` input; ``H, W`` must suit the model (smp: multiples of 32).
    """
    stage = local_module(model)
    with _captured(global_module(model)) as captured:
        if stage is None:
            local = model(x)
        else:
            with _captured(stage) as stage_out:
                model(x)
            local = stage_out[0]
    if local.shape[-2:] != x.shape[-2:]:
        local = F.interpolate(local, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return FeatureMaps(global_=captured[0], local=local)


def global_features(model: nn.Module, x: Tensor) -> Tensor:
    """Only the global map ``(B, Cg, h, w)``: encoder (+ ASPP), skipping the rest of the decoder."""
    deepest = model.encoder(x)[-1]
    module = global_module(model)
    return module(deepest) if module is not model.encoder else deepest


def feature_channels(model: nn.Module) -> tuple[int, int]:
    """``(Cg, Cl)`` channel counts of the global and local maps, from one tiny eval-mode pass.

    Eval mode and no gradient, so batch-norm statistics are untouched.
    """
    channels = parts.in_channels(model)
    if channels is None:
        raise TypeError(f"{type(model).__name__} has no Conv2d layer to read the band count from")
    maps = parts.probe(model, channels, lambda x: extract_features(model, x))
    return maps.global_.shape[1], maps.local.shape[1]


def style_vector(features: Tensor) -> Tensor:
    """GLCNet style: concat(per-channel spatial mean, per-channel spatial variance).

    ``(B, C, h, w) → (B, 2C)`` float32. Population variance (the official code uses torch.var's
    unbiased default, a constant factor hw/(hw-1) that the projection head absorbs; this one
    stays finite on 1×1 maps).
    """
    flat = features.flatten(2).float()  # float32 statistics under mixed precision too
    return torch.cat([flat.mean(dim=2), flat.var(dim=2, unbiased=False)], dim=1)


def box_mean(features: Tensor, batch: Tensor, top: Tensor, left: Tensor, size: int) -> Tensor:
    """Mean of ``features`` over square boxes, all boxes in one gather (RoI pooling + mean).

    Gathers only the ``N·size²`` box pixels (≈10× faster on a CPU than an integral image of the
    whole map); accumulates in float32 whatever the feature dtype.

    Args:
        features: ``(B, C, H, W)``.
        batch, top, left: ``(N,)`` int64 item index and box top-left corner per box.
        size: box side; each box must lie inside the map.

    Returns:
        ``(N, C)`` float32 box means.
    """
    offsets = torch.arange(size, device=features.device)
    rows = (top[:, None] + offsets)[:, :, None]  # (N, size, 1)
    cols = (left[:, None] + offsets)[:, None, :]  # (N, 1, size)
    pixels = features[batch[:, None, None], :, rows, cols]  # (N, size, size, C)
    return pixels.mean(dim=(1, 2), dtype=torch.float32)


def _conv_channels(module: nn.Module, first: bool = False) -> int | None:
    """Input channels of ``module``'s first Conv2d (``first``), else output of its last one."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return None
    return convs[0].in_channels if first else convs[-1].out_channels


@contextmanager
def _captured(module: nn.Module) -> Iterator[list[Tensor]]:
    """Collect ``module``'s output (the last element if it returns a list of stages)."""
    outputs: list[Tensor] = []

    def hook(_module: nn.Module, _inputs: object, output: Tensor | list[Tensor]) -> None:
        outputs.append(output[-1] if isinstance(output, (list, tuple)) else output)

    handle = module.register_forward_hook(hook)
    try:
        yield outputs
    finally:
        handle.remove()
