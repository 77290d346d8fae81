"""What io needs of a class table to write class rasters and their sidecars.

io is the bottom layer: it does not import :mod:`rsseg.classes`. Its writers take any object with
this shape, which :class:`rsseg.classes.ClassTable` has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Category(Protocol):
    """One class: its pixel value, name and RGB colour."""

    @property
    def id(self) -> int: ...

    @property
    def name(self) -> str: ...

    @property
    def color(self) -> tuple[int, int, int]: ...


class Legend(Protocol):
    """Classes sorted by id, as :class:`rsseg.classes.ClassTable` holds them."""

    @property
    def classes(self) -> Sequence[Category]: ...

    @property
    def ids(self) -> tuple[int, ...]: ...

    @property
    def names(self) -> tuple[str, ...]: ...

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """GDAL colour table entries ``{id: (r, g, b, 255)}``."""
        ...

    def to_records(self) -> list[dict]:
        """``[{id, name, color: [r, g, b]}, ...]``, what the ``CLASSES`` tag holds."""
        ...
