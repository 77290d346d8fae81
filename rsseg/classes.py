"""Class tables: ids, names and colours, read from classes files or raster metadata.

A classes file is JSON, YAML or CSV. JSON/YAML hold a list of entries (or ``{"classes": [...]}``),
each ``{id, name, color}``; CSV has a header ``id,name[,color]``. ``color`` is optional: ``#rrggbb``
or ``[r, g, b]``; a missing colour comes from :data:`PALETTE` by id.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from rsseg.errors import InputError
from rsseg.io.pam import read_category_names
from rsseg.io.raster import Scene

IGNORE = 255  # label value of unlabelled pixels; class ids run from 0 to 254
MAX_ID = IGNORE - 1

# Fixed, distinguishable palette (Kelly's colours of maximum contrast, white/black left out).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (242, 243, 244), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
    (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60),
    (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200),
    (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128),
)
# id 0 gets a light grey so that "class 0 = background" rasters read naturally.


def default_color(class_id: int) -> tuple[int, int, int]:
    """The palette colour of ``class_id`` (stable whatever other classes exist)."""
    return PALETTE[class_id % len(PALETTE)]


@dataclass(frozen=True)
class ClassInfo:
    """One class: integer id (0..254, the value in label and prediction rasters), name, RGB."""

    id: int
    name: str
    color: tuple[int, int, int]


@dataclass(frozen=True)
class ClassTable:
    """Classes sorted by id, with unique ids and names."""

    classes: tuple[ClassInfo, ...]

    def __post_init__(self) -> None:
        ids = [c.id for c in self.classes]
        names = [c.name for c in self.classes]
        if len(set(ids)) != len(ids) or len(set(names)) != len(names):
            raise InputError(f"class ids and names must be unique; got ids {ids}, names {names}",
                             "fix the classes file")
        bad = [i for i in ids if not 0 <= i <= MAX_ID]
        if bad:
            raise InputError(f"class id(s) {bad} out of range; ids run from 0 to {MAX_ID} "
                             f"({IGNORE} marks unlabelled pixels)", "renumber the classes")
        object.__setattr__(self, "classes", tuple(sorted(self.classes, key=lambda c: c.id)))

    @classmethod
    def from_ids(cls, ids: Iterable[int], names: Mapping[int, str] | None = None) -> ClassTable:
        """Classes for ``ids`` named from ``names`` or ``class <id>``, palette colours."""
        names = names or {}
        return cls(tuple(ClassInfo(int(i), names.get(int(i), f"class {int(i)}"),
                                   default_color(int(i))) for i in sorted(set(ids))))

    @classmethod
    def from_records(cls, records: Sequence[Mapping], source: str = "classes") -> ClassTable:
        """From ``[{id, name, color?}, ...]`` as found in JSON/YAML/CSV or a model bundle."""
        out = []
        for n, rec in enumerate(records, 1):
            try:
                class_id = int(rec["id"])
                name = str(rec["name"]).strip()
            except (KeyError, TypeError, ValueError):
                raise InputError(f"{source}: entry {n} ({rec!r}) needs an integer 'id' and a "
                                 "'name'", "write entries as {id, name, color}") from None
            color = rec.get("color")
            out.append(ClassInfo(class_id, name, _parse_color(color, source) if color not in
                                 (None, "") else default_color(class_id)))
        if not out:
            raise InputError(f"{source}: no classes defined", "list at least one {id, name}")
        return cls(tuple(out))

    def to_records(self) -> list[dict]:
        """JSON-ready ``[{id, name, color: [r, g, b]}, ...]`` (the inverse of from_records)."""
        return [{"id": c.id, "name": c.name, "color": list(c.color)} for c in self.classes]

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(c.id for c in self.classes)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    def __len__(self) -> int:
        return len(self.classes)

    def name_of(self, class_id: int) -> str:
        return next((c.name for c in self.classes if c.id == class_id), f"class {class_id}")

    def id_of_name(self) -> dict[str, int]:
        return {c.name: c.id for c in self.classes}

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """GDAL colour table entries ``{id: (r, g, b, 255)}``."""
        return {c.id: (*c.color, 255) for c in self.classes}

    def to_index(self, labels: np.ndarray) -> np.ndarray:
        """Map class ids to contiguous indexes ``0..K-1`` (model outputs); ignore stays 255."""
        lut = np.full(256, IGNORE, dtype=np.uint8)
        lut[list(self.ids)] = np.arange(len(self), dtype=np.uint8)
        return lut[labels]


def read_classes(path: str | Path) -> ClassTable:
    """Read a classes file (JSON, YAML or CSV; see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: classes file not found", "check the path")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
        if suffix == ".csv":
            data = list(csv.DictReader(text.splitlines()))
        elif suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise InputError(f"{path}: unknown classes file type {suffix!r}",
                             "use .json, .yaml or .csv")
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError, csv.Error) as err:
        first = str(err).strip().splitlines()[0]
        raise InputError(f"{path}: cannot parse classes file ({first})", "fix its syntax") from None
    if isinstance(data, Mapping):
        data = data.get("classes")
    if not isinstance(data, list) or not all(isinstance(r, Mapping) for r in data):
        raise InputError(f"{path}: expected a list of {{id, name, color}} entries",
                         "see rsseg/data/nc_landsat/classes_nc_landcover.yaml for the format")
    return ClassTable.from_records(data, source=str(path))


def write_classes(path: str | Path, classes: ClassTable) -> None:
    """Write ``classes`` as a YAML classes file (``{"classes": [{id, name, color}, ...]}``), what
    :func:`read_classes` reads back."""
    Path(path).write_text(yaml.safe_dump({"classes": classes.to_records()}, sort_keys=False))


def _parse_color(value: object, source: str) -> tuple[int, int, int]:
    try:
        if isinstance(value, str):
            text = value.strip().lstrip("#")
            if len(text) != 6:
                raise ValueError
            rgb = tuple(int(text[i:i + 2], 16) for i in (0, 2, 4))
        else:
            rgb = tuple(int(v) for v in value)[:3]  # type: ignore[union-attr]
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise ValueError
    except (TypeError, ValueError):
        raise InputError(f"{source}: colour {value!r} is not '#rrggbb' or [r, g, b]",
                         "fix the colour") from None
    return rgb  # type: ignore[return-value]


def raster_classes(scene: Scene) -> ClassTable | None:
    """Class names a class raster carries, or None.

    Names come from the dataset tag ``CLASSES`` (JSON ``[{id, name, color}, ...]``, what rsseg
    writes) or else from GDAL category names in the ``.aux.xml`` sidecar (QGIS/GDAL); colours from
    the band's colour table where it has one.
    """
    tag = scene.tag("CLASSES")
    table = None
    if tag:
        try:
            table = ClassTable.from_records(json.loads(tag), source=f"{scene.info.path} CLASSES")
        except (json.JSONDecodeError, InputError):
            table = None
    if table is None:
        names = {i: name for i, name in read_category_names(scene.info.path).items()
                 if i <= MAX_ID}
        table = ClassTable.from_ids(names, names) if names else None
    if table is None:
        return None
    cmap = scene.colormap(1)
    if cmap is None:
        return table
    return ClassTable(tuple(ClassInfo(c.id, c.name, tuple(cmap[c.id][:3]) if c.id in cmap
                                      else c.color) for c in table.classes))
