"""The one registry of methods: pretexts, fine-tuning regularizers and data tools.

A method is a class decorated with :func:`register` in a module of one of the method packages
(:data:`METHOD_PACKAGES`); the registry imports every module of those packages on first use, so
adding a method is adding a module. Every registered class carries ``name`` (the registry key),
``kind`` (one of :data:`KINDS`), ``description`` (one line), ``reference`` (the paper),
``needs`` (a subset of :data:`DATA_NEEDS`) and ``config_class`` (a :class:`MethodConfig`
subclass); ``rsseg methods`` lists them (:func:`describe_methods`).

    cls = method_class("glcnet")            # ConfigError listing the valid names if unknown
    config = parse_config("glcnet", {...})   # ConfigError naming the bad key and its range
    check_needs("glcnet", cls.needs, {"two_views"})

The interfaces of each kind live with it: pretexts in :mod:`rsseg.pretexts.base`, regularizers
in :mod:`rsseg.regularizers.base`.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from rsseg.config import config_error
from rsseg.errors import ConfigError

DATA_NEEDS = frozenset({"two_views", "labels", "domains"})
KINDS = ("pretext", "regularizer", "tool")
# Packages whose modules hold registered methods (a missing package is skipped).
METHOD_PACKAGES = ("rsseg.pretexts", "rsseg.regularizers")
_ATTRIBUTES = ("name", "kind", "description", "reference", "needs", "config_class")


class MethodConfig(BaseModel):
    """Base of every method's config: unknown keys are errors, values are range-checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=type)
_REGISTRY: dict[str, type] = {}


def register(cls: M) -> M:
    """Class decorator adding a method class to the registry under ``cls.name``.

    The class needs ``name``, ``kind`` (one of ``KINDS``), ``description``, ``reference``,
    ``needs`` (subset of ``DATA_NEEDS``) and ``config_class``.
    """
    missing = [a for a in _ATTRIBUTES if not hasattr(cls, a)]
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


def valid_names(kind: str | None = None) -> str:
    """``valid methods: ...``: the names of ``kind``, or of every kind grouped by kind."""
    if kind is not None:
        return f"valid methods: {', '.join(method_names(kind))}"
    groups = [f"{k}s: {', '.join(names)}" for k in KINDS if (names := method_names(k))]
    return "valid methods: " + "; ".join(groups)


def method_class(name: str, kind: str | None = None) -> type:
    """The method class registered as ``name``.

    ``ConfigError`` listing the valid names (of ``kind`` if given) when there is none, or when
    ``kind`` is given and the method is of another kind.
    """
    _discover()
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ConfigError(f"unknown method {name!r}", fix=valid_names(kind))
    if kind is not None and cls.kind != kind:
        raise ConfigError(f"{name!r} is a {cls.kind}, not a {kind}", fix=valid_names(kind))
    return cls


def parse_config(name: str, cfg: Mapping[str, Any]) -> MethodConfig:
    """Validate ``cfg`` against the config class of method ``name``; ``ConfigError`` if bad."""
    cls = method_class(name)
    try:
        return cls.config_class.model_validate(dict(cfg))
    except ValidationError as err:
        raise config_error(f"method {name!r}", cls.config_class, err) from None


def check_needs(name: str, needs: Collection[str], available: Collection[str]) -> None:
    """Raise ``ConfigError`` unless every kind of data method ``name`` needs is available."""
    missing = sorted(set(needs) - set(available))
    if missing:
        raise ConfigError(
            f"method {name!r} needs {', '.join(missing)}, which this run does not have",
            fix=f"provide {', '.join(missing)} or choose another method",
        )


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


def _discover() -> None:
    """Import every module of the method packages so that their ``@register`` decorators run."""
    for package in METHOD_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for info in pkgutil.iter_modules(list(spec.submodule_search_locations)):
            importlib.import_module(f"{package}.{info.name}")
