"""Combinations of pretexts: a pretext that wraps another, and ``--method`` lists.

A pretext whose config has ``base`` and ``base_params`` *wraps* another one (``adversarial``: a
PGD view; ``claws``: hard-attention masks) and is itself a pretext, so a combination is just a
nested config (``{name: claws, params: {base: glcnet, base_params: {...}}}``).
``compose_pretext(["glcnet", "claws"])`` builds that nesting from a list of names (``rsseg
pretrain --method glcnet --method claws``); two complete objectives (e.g. ``glcnet`` and
``simclr``) do not combine, and a wrapper refuses a base it cannot wrap, with one-line errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rsseg.errors import ConfigError
from rsseg.pretexts.base import pretext_class, pretext_names


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
