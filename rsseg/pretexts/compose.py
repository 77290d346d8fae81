"""Combinations of pretexts: a pretext that wraps another, and ``--method`` lists.

A pretext whose config has ``base`` and ``base_params`` *wraps* another one (``adversarial``: a
PGD view; ``claws``: hard-attention masks) and is itself a pretext, so a combination is just a
nested config (``{name: claws, params: {base: glcnet, base_params: {...}}}``). A wrapper
subclasses :class:`Wrapper`, which builds the base (the wrapper's ``view_size`` passed on by
:func:`with_view_size`), refuses a base without GLCNet's two-view pipeline (the pretexts with
``view_pipeline``, or with a stateful forward where ``stateless_base``) naming the ones it can
wrap, and passes data needs, data, epochs and embeddings on to it; :func:`base_views` gives
the wrapper's sampler the base's view pipeline.
``compose_pretext(["glcnet", "claws"])`` builds that nesting from a list of names (``rsseg
pretrain --method glcnet --method claws``); two complete objectives (e.g. ``glcnet`` and
``simclr``) do not combine, and a wrapper refuses a base it cannot wrap, with one-line errors.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from rsseg.errors import ConfigError
from rsseg.pretexts.base import (
    DataInfo,
    Pretext,
    Sampler,
    get_pretext,
    pretext_class,
    pretext_names,
)
from rsseg.pretexts.views import MatchedViewSampler
from rsseg.registry import MethodConfig


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


def with_view_size(name: str, params: Mapping[str, Any], size: int | None) -> dict[str, Any]:
    """``params`` of pretext ``name`` with ``view_size`` defaulting to ``size`` when its config
    has that key (and ``size`` is given); ``ConfigError`` listing the pretexts if ``name`` is
    none."""
    params = dict(params)
    if "view_size" in pretext_class(name).config_class.model_fields and size is not None:
        params.setdefault("view_size", size)
    return params


def wrappable(stateless: bool = False) -> list[str]:
    """The pretexts a wrapper can wrap: those with GLCNet's two-view pipeline (and a stateless
    forward if ``stateless``), sorted."""
    return [n for n in pretext_names() if pretext_class(n).view_pipeline
            and not (stateless and pretext_class(n).stateful)]


def base_views(sampler: Sampler) -> dict[str, Any]:
    """The view pipeline of a base's sampler as keyword arguments for the wrapper's sampler:
    ``size``, ``views``, ``radiometry`` and, with GLCNet's matched patches, ``patch_size`` and
    ``patch_num``."""
    recipe = {"size": sampler.size, "views": sampler.views,  # type: ignore[attr-defined]
              "radiometry": sampler.radiometry}  # type: ignore[attr-defined]
    if isinstance(sampler, MatchedViewSampler):
        recipe.update(patch_size=sampler.patch_size, patch_num=sampler.patch_num)
    return recipe


class Wrapper(Pretext):
    """A pretext around another one: its config's ``base`` (None: none), built from
    ``base_params``, in ``self.base``.

    Class attributes: ``stateless_base``, refuse a base whose forward updates state (a wrapper
    that runs it several times per step); ``needs_views_for``, why the base must draw GLCNet's
    two views (ends the error that refuses one that does not).
    """

    stateless_base: ClassVar[bool] = False
    needs_views_for: ClassVar[str]

    def __init__(self, config: MethodConfig, model: nn.Module, view_size: int | None) -> None:
        super().__init__(config)
        name = getattr(config, "base", None)
        self.base: Pretext | None = None
        if name is not None:
            self.base = self._build_base(str(name), getattr(config, "base_params", {}), model,
                                         view_size)

    def _build_base(self, name: str, params: Mapping[str, Any], model: nn.Module,
                    view_size: int | None) -> Pretext:
        valid = wrappable(self.stateless_base)
        fix = "base: " + (" or ".join([", ".join(valid[:-1]), valid[-1]] if len(valid) > 1
                                      else valid) or "none is registered")
        if name == self.name:
            raise ConfigError(f"method {self.name!r} cannot wrap itself", fix=fix)
        base = get_pretext(name, model, **with_view_size(name, params, view_size))
        if self.stateless_base and base.stateful:
            raise ConfigError(f"method {self.name!r} cannot wrap {name!r}: its forward updates "
                              "a queue, bank or momentum encoder, and this method evaluates it "
                              "several times per step", fix=fix)
        if not base.view_pipeline:
            raise ConfigError(f"method {self.name!r} cannot wrap {name!r}: it needs a base with "
                              f"GLCNet's two-view pipeline {self.needs_views_for}", fix=fix)
        return base

    def check_data(self, available: Collection[str]) -> None:  # type: ignore[override]
        """The wrapper's own data needs, then the base's."""
        super().check_data(available)
        if self.base is not None:
            self.base.check_data(available)

    def bind_data(self, info: DataInfo) -> None:
        super().bind_data(info)
        if self.base is not None:
            self.base.bind_data(info)

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        if self.base is not None:
            self.base.on_epoch_start(epoch, model)

    def embed(self, images: Tensor, model: nn.Module) -> dict[str, Tensor]:
        if self.base is not None:
            return self.base.embed(images, model)
        return super().embed(images, model)
