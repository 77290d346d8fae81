"""Model factory: a JSON-able :class:`ModelSpec` → a segmentation ``nn.Module``.

Every model maps ``(B, in_channels, H, W)`` float32 to ``(B, classes, H, W)`` logits. Encoders are
built with random weights (``encoder_weights=None``): nothing is ever downloaded.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

import segmentation_models_pytorch as smp
import torch
from pydantic import BaseModel, ConfigDict, Field
from segmentation_models_pytorch.encoders.resnet import ResNetEncoder
from torch import nn

from rsseg.errors import ConfigError


class ModelSpec(BaseModel):
    """Everything needed to rebuild a model's structure (not its weights)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: str = "unet"
    encoder: str = "resnet18"
    in_channels: int = Field(ge=1)
    classes: int = Field(ge=1)
    kwargs: dict[str, Any] = Field(default_factory=dict)  # extra constructor arguments


class PixelMLP(nn.Module):
    """Per-pixel classifier made of 1×1 convolutions: ``(B, C, H, W)`` → ``(B, K, H, W)``.

    ``hidden=0`` is a single linear 1×1 convolution; otherwise one hidden ReLU layer.
    """

    def __init__(self, in_channels: int, classes: int, hidden: int = 0) -> None:
        super().__init__()
        if hidden:
            self.net = nn.Sequential(nn.Conv2d(in_channels, hidden, 1), nn.ReLU(),
                                     nn.Conv2d(hidden, classes, 1))
        else:
            self.net = nn.Sequential(nn.Conv2d(in_channels, classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


_SMP_ARCHS: dict[str, type[nn.Module]] = {
    "unet": smp.Unet,
    "unetplusplus": smp.UnetPlusPlus,
    "fpn": smp.FPN,
    "deeplabv3": smp.DeepLabV3,
    "deeplabv3plus": smp.DeepLabV3Plus,
    "linknet": smp.Linknet,
    "pspnet": smp.PSPNet,
    "manet": smp.MAnet,
}


def _build_smp(spec: ModelSpec) -> nn.Module:
    _check_encoder(spec.encoder)
    cls = _SMP_ARCHS[spec.arch]
    _check_kwargs(spec, cls)
    model = cls(encoder_name=spec.encoder, encoder_weights=None, in_channels=spec.in_channels,
                classes=spec.classes, **spec.kwargs)
    _drop_unused_stages(model.encoder)
    return model


def _drop_unused_stages(encoder: nn.Module) -> None:
    """smp's ResNet encoders keep ``layer3``/``layer4`` when ``encoder_depth`` < 5, though their
    forward never runs them: drop them (the demo's depth-3 resnet18 U-Net: 11.4 M → 0.9 M
    parameters, a 45 MB → 4 MB bundle). Bundles and backbones saved with them still load
    (:func:`is_unused_stage_key`)."""
    if not isinstance(encoder, ResNetEncoder):
        return
    for stage in range(max(encoder._depth, 1), 5):  # layer k runs when depth >= k + 1
        if hasattr(encoder, f"layer{stage}"):
            delattr(encoder, f"layer{stage}")


def is_unused_stage_key(key: str, model: nn.Module) -> bool:
    """Whether ``key`` (from a file) belongs to an encoder stage ``model`` dropped as unused."""
    parts = key.split(".")
    return (len(parts) > 2 and parts[0] == "encoder" and parts[1].startswith("layer")
            and isinstance(getattr(model, "encoder", None), ResNetEncoder)
            and not hasattr(model.encoder, parts[1]))


def _build_pixel(spec: ModelSpec) -> nn.Module:
    _check_kwargs(spec, PixelMLP)
    return PixelMLP(spec.in_channels, spec.classes, **spec.kwargs)


_SET_BY_SPEC = {"self", "encoder_name", "encoder_weights", "in_channels", "classes"}


def _check_kwargs(spec: ModelSpec, cls: type[nn.Module]) -> None:
    """smp models swallow unknown keywords silently; refuse them here instead."""
    params = inspect.signature(cls).parameters
    valid = sorted(name for name, p in params.items() if name not in _SET_BY_SPEC
                   and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
    unknown = sorted(set(spec.kwargs) - set(valid))
    if unknown:
        raise ConfigError(f"{spec.arch} has no argument(s) {', '.join(unknown)}",
                          f"valid model kwargs: {', '.join(valid)}")


_BUILDERS: dict[str, Callable[[ModelSpec], nn.Module]] = {
    **dict.fromkeys(_SMP_ARCHS, _build_smp),
    "pixel": _build_pixel,
}

ARCHITECTURES: tuple[str, ...] = tuple(sorted(_BUILDERS))


def encoder_names() -> list[str]:
    """Valid ``encoder`` values: smp's encoders (timm ones as ``tu-<name>`` also work)."""
    return sorted(smp.encoders.get_encoder_names())


def _check_encoder(name: str) -> None:
    if name in smp.encoders.get_encoder_names():
        return
    if name.startswith("tu-"):
        import timm

        if timm.is_model(name[3:]):
            return
    close = difflib.get_close_matches(name, encoder_names(), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigError(f"unknown encoder {name!r}",
                      f"{hint}valid: {', '.join(encoder_names())}, or tu-<timm model>")


def _builder(spec: ModelSpec) -> Callable[[ModelSpec], nn.Module]:
    if spec.arch not in _BUILDERS:
        raise ConfigError(f"unknown architecture {spec.arch!r}",
                          f"valid: {', '.join(ARCHITECTURES)}")
    return _BUILDERS[spec.arch]


def build_model(spec: ModelSpec) -> nn.Module:
    """A freshly initialised model for ``spec`` (random weights, training mode).

    Raises :class:`ConfigError` for an unknown architecture, encoder or constructor argument.
    """
    build = _builder(spec)
    try:
        return build(spec)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"cannot build {spec.arch}/{spec.encoder} with {spec.kwargs}: {err}",
                          "check the model kwargs") from None


def required_multiple(spec: ModelSpec) -> int:
    """Side multiple the model's input needs (e.g. 32 for U-Net/resnet, 16 for DeepLabV3+).

    smp models need ``H`` and ``W`` divisible by the encoder's output stride; per-pixel models
    accept any size (1). Computed on the meta device, so no weights are allocated.
    """
    if _builder(spec) is _build_pixel:
        return 1
    with torch.device("meta"):
        model = build_model(spec)
    return int(model.encoder.output_stride)
