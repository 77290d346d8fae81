"""Where the parts of a segmentation model are: encoder (+ASPP), decoder features, head(s), bands.

The one place that knows the layouts rsseg builds (:mod:`rsseg.models.factory`): smp models
(``encoder``, ``decoder``, ``segmentation_head``), the ``pixel`` architecture (``net``, a
``Sequential`` whose last layer is the 1×1 classifier) and the multi-domain model of
:mod:`rsseg.regularizers.multidomain` (``heads``, one per domain, and ``decoder_tap``, an
identity whose output is the decoder features). Fine-tuning (head-only stages, the encoder's
learning rate), the regularizers' feature taps and the pretexts' feature maps ask here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar

import torch
from segmentation_models_pytorch.decoders.deeplabv3.decoder import ASPP
from torch import Tensor, nn

T = TypeVar("T")
PROBE_SIDE = 64  # side of the zero image a probe pass runs on


def encoder(model: nn.Module) -> nn.Module | None:
    """smp's ``encoder`` (a multi-domain model's shared one), None without one."""
    found = getattr(model, "encoder", None)
    return found if isinstance(found, nn.Module) else None


def global_module(model: nn.Module) -> nn.Module:
    """The module whose output is the "global" feature map (ASPP if any, else the encoder)."""
    decoder = getattr(model, "decoder", None)
    if decoder is not None:
        for module in decoder.modules():
            if isinstance(module, ASPP):
                return module
    found = encoder(model)
    if found is None:
        raise TypeError(f"{type(model).__name__} is not a segmentation_models_pytorch model")
    return found


def encoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The encoder's parameters (the shared encoder once for a multi-domain model)."""
    found = {id(m): m for m in (encoder(m) for m in model.modules()) if m is not None}
    return [p for enc in found.values() for p in enc.parameters()]


def smp_head(model: nn.Module) -> nn.Module | None:
    """smp's ``segmentation_head``, None without one (e.g. the ``pixel`` architecture)."""
    head = getattr(model, "segmentation_head", None)
    return head if isinstance(head, nn.Module) else None


def pixel_head(model: nn.Module) -> nn.Module | None:
    """The last layer (the 1×1 classifier) of the ``pixel`` architecture's ``net``, else None."""
    net = getattr(model, "net", None)
    return net[-1] if isinstance(net, nn.Sequential) else None


def head_modules(model: nn.Module) -> list[nn.Module]:
    """The segmentation head(s): multi-domain ``heads``, smp ``segmentation_head``, or the last
    1×1 convolution of the ``pixel`` architecture; TypeError when there is none."""
    heads = getattr(model, "heads", None)
    head = heads if isinstance(heads, nn.Module) else _head(model)
    if head is None:
        raise TypeError(f"{type(model).__name__}: no segmentation head found")
    return [head]


def decoder_features(model: nn.Module) -> tuple[nn.Module, Literal["input", "output"]] | None:
    """``(module, where)``: the decoder features entering the segmentation head are the
    ``where`` of ``module`` (a multi-domain model's ``decoder_tap`` output, else the input of the
    head); None for a model without a head."""
    tap = getattr(model, "decoder_tap", None)
    if isinstance(tap, nn.Module):
        return tap, "output"
    head = _head(model)
    return (head, "input") if head is not None else None


def in_channels(model: nn.Module) -> int | None:
    """The band count the model reads: input channels of the first convolution of its encoder
    (of the model without one); None without a convolution."""
    conv = next((m for m in (encoder(model) or model).modules() if isinstance(m, nn.Conv2d)),
                None)
    return None if conv is None else conv.in_channels


def probe(model: nn.Module, channels: int, run: Callable[[Tensor], T]) -> T:
    """``run(x)`` on a zero image ``x`` ``(1, channels, 64, 64)`` (the model's dtype and device)
    in eval mode without gradient, so batch-norm statistics are untouched; the model's mode is
    restored."""
    param = next(model.parameters())
    x = torch.zeros(1, channels, PROBE_SIDE, PROBE_SIDE, dtype=param.dtype, device=param.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return run(x)
    finally:
        model.train(was_training)


def _head(model: nn.Module) -> nn.Module | None:
    """The one segmentation head of a plain model (smp or ``pixel``), None without one."""
    head = smp_head(model)
    return head if head is not None else pixel_head(model)
