"""The pretext interface and the one registry of methods (pretexts, regularizers, tools).

A pretext is one module in ``rsseg/pretexts/`` holding one ``Pretext`` subclass decorated with
``@register``; the registry imports every module of the method packages (``rsseg.pretexts``,
``rsseg.regularizers`` when present) on first use, so adding a method is adding a module. Every
registered class carries ``name``, ``kind`` (``pretext`` / ``regularizer`` / ``tool``),
``description``, ``reference``, ``needs`` and ``config_class``; ``rsseg methods`` lists them.
The engine never branches on the method:

    pretext = get_pretext(name, model, **cfg)           # ConfigError on a bad name/key/value
    pretext.check_data({"two_views"})                    # before training: labels? domains?
    pretext.bind_data(DataInfo(bands, mean, std))        # optional: the tiles' named bands
    sampler = pretext.sampler()                          # picklable; the dataset calls it in
    item = sampler(tile, rng, valid)                     # workers: dict of numpy arrays
    loss, logs = pretext(batch, model)                   # batch = default_collate(items)
    pretext.on_epoch_start(epoch, model)                 # per-epoch work (clustering, ...)
    embeddings = pretext.embed(images, model)            # {"global": (N, D), "local": (M, Cl)}

``pretext`` is an ``nn.Module`` holding only its own heads; the segmentation model is passed in
on each call and never stored, so the optimizer takes ``model`` and ``pretext`` parameters and
the exported weights are the model's alone.

Combinations: a pretext whose config has ``base`` and ``base_params`` *wraps* another one
(``adversarial``: a PGD view; ``claws``: hard-attention masks) and is itself a pretext, so a
combination is just a nested config (``{name: claws, params: {base: glcnet, base_params:
{...}}}``). ``compose_pretext(["glcnet", "claws"])`` builds that nesting from a list of names
(``rsseg pretrain --method glcnet --method claws``); two complete objectives (e.g. ``glcnet`` and
``simclr``) do not combine, and a wrapper refuses a base it cannot wrap, with one-line errors.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor, nn

from rsseg.errors import ConfigError
from rsseg.pretexts.features import extract_features
from rsseg.pretexts.views import Radiometry

DATA_NEEDS = frozenset({"two_views", "labels", "domains"})
KINDS = ("pretext", "regularizer", "tool")
# Packages whose modules hold registered methods (a missing package is skipped).
METHOD_PACKAGES = ("rsseg.pretexts", "rsseg.regularizers")


@dataclass(frozen=True)
class DataInfo:
    """What a pretext may need to know about the tiles: band names and their normalisation.

    Tiles reach the sampler normalised as ``(x - mean) / std`` per band; ``mean``/``std`` undo
    that (e.g. for a spectral index on the original values).
    """

    band_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    white: tuple[float, ...] | None = None  # per band: 255 for 8-bit data, else its p98
    eight_bit: bool = False

    def __post_init__(self) -> None:
        if not len(self.band_names) == len(self.mean) == len(self.std):
            raise ValueError("DataInfo needs one name, mean and std per band")

    def radiometry(self) -> Radiometry:
        """What the views' photometric change needs to work on raw values."""
        white = self.white or tuple(m + 2 * s for m, s in zip(self.mean, self.std, strict=True))
        return Radiometry.of_bands(self.band_names, self.mean, self.std, white, self.eight_bit)


class Sampler(Protocol):
    """Dataset-side recipe of a pretext, run in DataLoader workers (must be picklable).

    Args:
        tile: ``(C, H, W)`` normalised float32 tile.
        rng: the only source of randomness (seed it per worker and item).
        valid: optional ``(H, W)`` bool mask of usable (non-nodata) pixels.

    Returns:
        One batch item: a dict of numpy arrays with fixed shapes.
    """

    def __call__(
        self, tile: np.ndarray, rng: np.random.Generator, valid: np.ndarray | None = None
    ) -> dict[str, np.ndarray]: ...


class PretextConfig(BaseModel):
    """Base of each pretext's config: unknown keys are errors, values are range-checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def check_needs(name: str, needs: Collection[str], available: Collection[str]) -> None:
    """Raise ``ConfigError`` unless every kind of data method ``name`` needs is available."""
    missing = sorted(set(needs) - set(available))
    if missing:
        raise ConfigError(
            f"method {name!r} needs {', '.join(missing)}, which this run does not have",
            fix=f"provide {', '.join(missing)} or choose another method",
        )


class Pretext(nn.Module, ABC):
    """One self-supervised objective. Subclasses are built as ``cls(config, model)``.

    Class attributes: ``name`` (registry key), ``kind`` ("pretext"), ``description`` (one line),
    ``reference`` (paper), ``needs`` (subset of ``DATA_NEEDS``), ``config_class``, ``stateful``
    (True when ``forward`` also updates state such as a queue, a bank or a momentum encoder, so
    it must run exactly once per training step).
    """

    name: ClassVar[str]
    kind: ClassVar[str] = "pretext"
    description: ClassVar[str]
    reference: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset({"two_views"})
    config_class: ClassVar[type[PretextConfig]]
    stateful: ClassVar[bool] = False
    embed_grid: ClassVar[int] = 4  # local embeddings: decoder pixels on a 4×4 grid per tile

    def __init__(self, config: PretextConfig) -> None:
        super().__init__()
        self.config = config
        self.radiometry: Radiometry | None = None  # set by bind_data

    @classmethod
    def check_data(cls, available: Collection[str]) -> None:
        """Raise ``ConfigError`` unless every kind of data the method needs is available."""
        check_needs(cls.name, cls.needs, available)

    @abstractmethod
    def sampler(self) -> Sampler:
        """The recipe the dataset applies to each tile to build this pretext's batch items."""

    @abstractmethod
    def forward(
        self, batch: Mapping[str, Tensor], model: nn.Module
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar loss and detached scalar logs (e.g. ``{"loss_global": ...}``) for one batch."""

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        """Hook before each epoch; pretexts with per-epoch work override it."""

    def bind_data(self, info: DataInfo) -> None:
        """Hook before ``sampler()``: the tiles' band names and normalisation (default: keep the
        radiometry that view samplers need to change colours on raw values).

        Raises ``ConfigError`` when the data cannot serve the config (e.g. a missing band).
        """
        self.radiometry = info.radiometry()

    @torch.no_grad()
    def embed(self, images: Tensor, model: nn.Module) -> dict[str, Tensor]:
        """Representations for the collapse diagnostic (call with the model in eval mode).

        Args:
            images: ``(B, C, H, W)`` normalised tiles.

        Returns:
            ``"global"``: ``(B, Cg)`` spatial mean of the global features; ``"local"``:
            ``(B·g², Cl)`` local features at a fixed ``g×g`` grid of pixels per tile.
        """
        maps = extract_features(model, images)
        h, w = maps.local.shape[-2:]
        g = self.embed_grid
        rows = ((torch.arange(g) + 0.5) * h / g).long()
        cols = ((torch.arange(g) + 0.5) * w / g).long()
        local = maps.local[:, :, rows[:, None], cols[None, :]]  # (B, Cl, g, g)
        return {
            "global": maps.global_.mean(dim=(2, 3)),
            "local": local.permute(0, 2, 3, 1).reshape(-1, local.shape[1]),
        }


P = TypeVar("P", bound=type)
_REGISTRY: dict[str, type] = {}


def register(cls: P) -> P:
    """Class decorator adding a method class to the registry under ``cls.name``.

    The class needs ``name``, ``kind`` (one of ``KINDS``), ``description``, ``reference``,
    ``needs`` (subset of ``DATA_NEEDS``) and ``config_class``.
    """
    missing = [a for a in ("name", "kind", "description", "reference", "needs", "config_class")
               if not hasattr(cls, a)]
    if missing:
        raise ValueError(f"{cls.__name__} lacks {', '.join(missing)}")
    if cls.kind not in KINDS:
        raise ValueError(f"{cls.__name__}.kind must be one of {KINDS}, not {cls.kind!r}")
    if not cls.needs <= DATA_NEEDS:
        raise ValueError(f"{cls.__name__}.needs must be a subset of {sorted(DATA_NEEDS)}")
    known = _REGISTRY.get(cls.name)
    if known is not None and known.__qualname__ != cls.__qualname__:
        raise ValueError(f"method name {cls.name!r} is taken by {known.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def method_names(kind: str | None = None) -> list[str]:
    """Every registered method name (of ``kind`` if given), sorted."""
    _discover()
    return sorted(n for n, c in _REGISTRY.items() if kind is None or c.kind == kind)


def method_class(name: str) -> type:
    """The method class registered as ``name`` (any kind); ``ConfigError`` listing valid names."""
    _discover()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r}", fix=_valid_names())
    return _REGISTRY[name]


def pretext_names() -> list[str]:
    """Every registered pretext name, sorted."""
    return method_names("pretext")


def pretext_class(name: str) -> type[Pretext]:
    """The pretext class registered as ``name``; ``ConfigError`` listing valid names if none."""
    _discover()
    cls = _REGISTRY.get(name)
    if cls is None or cls.kind != "pretext":
        what = f"{name!r} is a {cls.kind}, not a pretext" if cls else f"unknown method {name!r}"
        raise ConfigError(what, fix=f"valid methods: {', '.join(pretext_names())}")
    return cls


def describe_methods() -> list[dict[str, Any]]:
    """One record per registered method: name, kind, description, reference, needs, config."""
    records = []
    for name in method_names():
        cls = _REGISTRY[name]
        records.append({
            "name": name,
            "kind": cls.kind,
            "description": cls.description,
            "reference": cls.reference,
            "needs": sorted(cls.needs),
            "config": cls.config_class().model_dump(mode="json"),
        })
    return records


def _valid_names() -> str:
    groups = [f"{kind}s: {', '.join(names)}" for kind in KINDS
              if (names := method_names(kind))]
    return "valid methods: " + "; ".join(groups)


def parse_config(name: str, cfg: Mapping[str, Any]) -> PretextConfig:
    """Validate ``cfg`` against the config class of method ``name``; ``ConfigError`` if bad."""
    cls = method_class(name)
    try:
        return cls.config_class.model_validate(dict(cfg))
    except ValidationError as err:
        raise _config_error(name, cls.config_class, err) from None


def get_pretext(name: str, model: nn.Module, **cfg: Any) -> Pretext:
    """Build pretext ``name`` for ``model`` from config keys ``cfg`` (defaults for the rest)."""
    config = parse_config(name, cfg)
    return pretext_class(name)(config, model)  # type: ignore[call-arg]


def wraps(name: str) -> bool:
    """Whether pretext ``name`` wraps another (its config has ``base`` and ``base_params``)."""
    fields = pretext_class(name).config_class.model_fields
    return "base" in fields and "base_params" in fields


def compose_pretext(names: Sequence[str], config_name: str | None = None,
                    config_params: Mapping[str, Any] | None = None
                    ) -> tuple[str, dict[str, Any]]:
    """``(name, params)`` of the pretext combining ``names``: one base wrapped by the others.

    The base is the one name that does not wrap (else the first name); the wrappers nest around
    it in the order given, e.g. ``["glcnet", "claws"]`` → ``("claws", {"base": "glcnet",
    "base_params": {...}})``. ``config_params`` (from a config file for ``config_name``) are
    the params of that member; the others start from their defaults. ``ConfigError`` for an
    unknown name, a repeated one, or two complete objectives (nothing to wrap them).
    """
    names = list(names)
    for name in names:
        pretext_class(name)  # unknown: lists the valid names
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"method {repeated[0]!r} is given twice", fix="give each method once")
    cores = [n for n in names if not wraps(n)]
    if len(cores) > 1:
        wrappers = [n for n in pretext_names() if wraps(n)]
        raise ConfigError(
            f"methods {' and '.join(map(repr, cores))} cannot be combined: each is a complete "
            "objective", fix=f"combine one of them with {' or '.join(wrappers)}, e.g. "
            f"--method {cores[0]} --method {wrappers[0]}")
    base = cores[0] if cores else names[0]

    def own(name: str) -> dict[str, Any]:
        return dict(config_params or {}) if name == config_name else {}

    current, params = base, own(base)
    for wrapper in (n for n in names if n != base):
        outer = own(wrapper)
        inner = dict(outer.get("base_params") or {}) if outer.get("base") == current else {}
        outer.update(base=current, base_params={**inner, **params})
        current, params = wrapper, outer
    return current, params


def pretext_label(name: str, params: Mapping[str, Any]) -> str:
    """``glcnet+claws``-style label of a (possibly nested) pretext config."""
    if name not in pretext_names() or not wraps(name):
        return name
    base = params.get("base", pretext_class(name).config_class.model_fields["base"].default)
    if not base:
        return name
    return f"{pretext_label(str(base), params.get('base_params') or {})}+{name}"


def mlp_head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Head ``Linear(in, hidden) → ReLU → Linear(hidden, out)``: ``(N, in) → (N, out)``."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


def _discover() -> None:
    """Import every module of the method packages so that their ``@register`` decorators run."""
    for package in METHOD_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for info in pkgutil.iter_modules(list(spec.submodule_search_locations)):
            importlib.import_module(f"{package}.{info.name}")


def _config_error(name: str, config_class: type[BaseModel], err: ValidationError) -> ConfigError:
    """One-line error naming the first bad key and what it accepts."""
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        owner = _owner(config_class, first["loc"][:-1])
        return ConfigError(
            f"method {name!r}: unknown config key {key!r}",
            fix=f"valid keys: {', '.join(owner.model_fields)}",
        )
    if not key:
        return ConfigError(f"method {name!r}: {first['msg']}")
    field = _owner(config_class, first["loc"][:-1]).model_fields.get(str(first["loc"][-1]))
    bounds = _bounds(field.metadata) if field is not None else ""
    return ConfigError(
        f"method {name!r}: {key}={first['input']!r} is invalid ({first['msg']})",
        fix=f"allowed: {bounds}" if bounds else None,
    )


def _bounds(metadata: list[Any]) -> str:
    """``"0 < x ≤ 1"``-style text from a field's annotated-types constraints ("" if none)."""
    low = high = ""
    for item in metadata:
        for attr, text in (("gt", "{} < "), ("ge", "{} ≤ ")):
            if getattr(item, attr, None) is not None:
                low = text.format(getattr(item, attr))
        for attr, text in (("lt", " < {}"), ("le", " ≤ {}")):
            if getattr(item, attr, None) is not None:
                high = text.format(getattr(item, attr))
    return f"{low}x{high}" if low or high else ""


def _owner(config_class: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel]:
    """The (nested) config model that ``loc`` points into."""
    for part in loc:
        annotation = config_class.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        config_class = annotation
    return config_class
