"""The fine-tuning regularizer interface: a term ``w·L`` added to the supervised loss.

A regularizer is one module in ``rsseg/regularizers/`` holding one ``@register``ed
:class:`Regularizer` subclass (``kind = "regularizer"``; the registry is the one of
:mod:`rsseg.registry`). The fine-tuning engine (:class:`~rsseg.training.modules.
SegmentationModule`) never branches on the method:

    reg = get_regularizer(name, model, info, **params)  # ConfigError: bad name, key or value
    reg.check_data({"labels", "domains"})              # before training: what the run has
    with capture(model, reg.taps) as features:          # feature maps the method reads
        logits = model(x)
    loss, logs = reg(SegStep(parts, ignore_index))      # loss = stage.supervised·L_sup + w·loss
    stage = reg.stage(epoch)                            # optional schedule (two-stage methods)

Feature taps (``taps``), captured by forward hooks during the ordinary ``model(x)`` call:

- ``"decoder"``: the decoder features entering the segmentation head ``(B, Cd, h, w)`` (smp
  models: the input of ``segmentation_head``; ``pixel``: the input of its last 1×1 conv);
- ``"bottleneck"``: the deepest encoder stage ``(B, Ce, H/s, W/s)``.

Like a pretext, a regularizer is an ``nn.Module`` holding only its own heads and state; the
model is passed in and never stored, so bundles hold the model's weights alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import Field
from torch import Tensor, nn

from rsseg.errors import ConfigError
from rsseg.models import parts
from rsseg.registry import MethodConfig, check_needs, method_class, method_names, parse_config

TAPS = frozenset({"decoder", "bottleneck"})


@dataclass(frozen=True)
class SegInfo:
    """What a regularizer may need to know about the fine-tuning run.

    ``classes``: class count per domain (one entry without domains); ``domains``: their names;
    ``epochs``: planned epochs (for schedules).
    """

    classes: tuple[int, ...]
    domains: tuple[str, ...] = ("",)
    epochs: int = 1
    ignore_index: int = 255

    @property
    def class_offsets(self) -> tuple[int, ...]:
        """First global class index of each domain (domain ``d``'s class ``k`` is
        ``offsets[d] + k`` when classes of several domains share one index space)."""
        out, total = [], 0
        for count in self.classes:
            out.append(total)
            total += count
        return tuple(out)


@dataclass
class SegPart:
    """The forward pass of one single-domain (sub-)batch.

    ``images`` ``(B, C, H, W)``; ``labels`` ``(B, H, W)`` int64 class indexes, ``ignore_index``
    where unlabelled; ``logits`` ``(B, K_d, H, W)``; ``features`` the tapped maps by name.
    """

    domain: int
    images: Tensor
    labels: Tensor
    logits: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class SegStep:
    """One training step: one part per domain present in the batch."""

    parts: list[SegPart]
    ignore_index: int = 255


@dataclass(frozen=True)
class Stage:
    """What a regularizer asks of the engine during one epoch.

    ``supervised``: factor on the supervised loss; ``weight``: this regularizer's weight
    (None: its config's ``weight``); ``head_only``: train only the segmentation head(s), the
    rest frozen with batch-norm statistics fixed; ``loss``: supervised loss to use instead of
    the configured one (``"balanced_ce"`` or ``"focal"``).
    """

    supervised: float = 1.0
    weight: float | None = None
    head_only: bool = False
    loss: str | None = None


class RegularizerConfig(MethodConfig):
    """Base of every regularizer's config: its weight ``w`` in ``L_sup + w·L``."""

    weight: float = Field(0.1, ge=0, le=100)


class Regularizer(nn.Module, ABC):
    """One fine-tuning regularizer, built as ``cls(config, model, info)``.

    Class attributes as for pretexts (``name``, ``kind``, ``description``, ``reference``,
    ``needs``, ``config_class``, ``stateful``) plus ``taps``, the feature maps it reads.
    """

    name: ClassVar[str]
    kind: ClassVar[str] = "regularizer"
    description: ClassVar[str]
    reference: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset({"labels"})
    config_class: ClassVar[type[RegularizerConfig]]
    stateful: ClassVar[bool] = False
    taps: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: RegularizerConfig, info: SegInfo) -> None:
        super().__init__()
        self.config = config
        self.info = info

    @classmethod
    def check_data(cls, available: Collection[str]) -> None:
        """Raise ``ConfigError`` unless every kind of data the method needs is available."""
        check_needs(cls.name, cls.needs, available)

    @abstractmethod
    def forward(self, step: SegStep) -> tuple[Tensor, dict[str, Tensor]]:
        """Unweighted scalar loss and detached scalar logs for one training step."""

    def stage(self, epoch: int) -> Stage:
        """The engine's settings for ``epoch`` (default: ``L_sup + w·L`` throughout)."""
        return Stage()


def regularizer_names() -> list[str]:
    """Every registered regularizer name, sorted."""
    return method_names("regularizer")


def regularizer_class(name: str) -> type[Regularizer]:
    """The regularizer registered as ``name``; ``ConfigError`` naming the valid ones if none."""
    cls = method_class(name)
    if cls.kind != "regularizer":
        hint = f"rsseg pretrain --method {name}" if cls.kind == "pretext" else f"rsseg {name}"
        raise ConfigError(f"{name!r} is a {cls.kind}, not a fine-tuning regularizer "
                          f"(use {hint})",
                          fix=f"fine-tuning regularizers: {', '.join(regularizer_names())}")
    return cls


def check_regularizers(table: Mapping[str, Mapping[str, object]]) -> None:
    """Every regularizer of ``table`` (name → params) exists, is a regularizer and has valid
    params; ``ConfigError`` naming the first that does not."""
    for name, params in table.items():
        regularizer_class(name)
        parse_config(name, params)


def get_regularizer(name: str, model: nn.Module, info: SegInfo, **cfg: object) -> Regularizer:
    """Build regularizer ``name`` for ``model`` from config keys ``cfg`` (defaults elsewhere)."""
    cls = regularizer_class(name)
    config = parse_config(name, cfg)
    return cls(config, model, info)  # type: ignore[call-arg]


# --- feature taps ------------------------------------------------------------------------------

def _tap(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """``(module, where)``: the module to hook for tap ``name`` and whether its input, output or
    last output (a list of encoder stages) is the map."""
    if name not in TAPS:
        raise ValueError(f"unknown feature tap {name!r}; valid: {sorted(TAPS)}")
    found = parts.decoder_features(model) if name == "decoder" else (
        (enc, "last") if (enc := parts.encoder(model)) is not None else None)
    if found is None:
        raise ConfigError(f"{type(model).__name__} has no {name} features to regularize",
                          "use an encoder-decoder architecture such as unet or deeplabv3plus")
    return found


@contextmanager
def capture(model: nn.Module, names: Collection[str]) -> Iterator[dict[str, Tensor]]:
    """Within the block, each ``model(x)`` call stores the tapped maps in the yielded dict."""
    found: dict[str, Tensor] = {}
    handles = []
    for name in sorted(set(names)):
        module, where = _tap(model, name)
        if where == "input":
            def pre(_m: nn.Module, inputs: tuple, _name: str = name) -> None:
                found[_name] = inputs[0]
            handles.append(module.register_forward_pre_hook(pre))
        else:
            def post(_m: nn.Module, _inputs: tuple, output: object, _name: str = name,
                     _last: bool = where == "last") -> None:
                found[_name] = output[-1] if _last and isinstance(output, (list, tuple)) \
                    else output  # type: ignore[assignment]
            handles.append(module.register_forward_hook(post))
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


def tap_channels(model: nn.Module, name: str, in_channels: int | None = None) -> int:
    """Channel count of tap ``name``, from one 64×64 eval-mode pass without gradient.

    ``in_channels``: the model's band count (read from its first convolution when None).
    """
    _tap(model, name)  # ConfigError before any work when the model lacks the tap
    if in_channels is None:
        in_channels = parts.in_channels(model)
    if in_channels is None:
        raise ConfigError(f"{type(model).__name__} has no convolution to probe")

    def channels(x: Tensor) -> int:
        with capture(model, [name]) as found:
            model(x)
        return int(found[name].shape[1])

    return parts.probe(model, in_channels, channels)
