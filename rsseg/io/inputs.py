"""Scene arguments → scene files: rasters, folders of rasters, glob patterns, list files.

``rsseg predict`` and ``rsseg tile`` take any mix of them. A folder gives the rasters directly
in it (by suffix, sorted); a pattern with ``*``, ``?`` or ``[`` that names no existing file is
expanded (``**`` crosses folders); a ``.txt``/``.lst`` file lists one scene, folder or pattern per
line (``#`` comments and blank lines skipped, relative entries from the list's folder). Each
scene appears once, in the order given. Every problem is a one-line :class:`InputError`.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rsseg.errors import InputError

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".png", ".jpg", ".jpeg")
LIST_SUFFIXES = (".txt", ".lst")
STAC_SUFFIXES = (".json", ".geojson")
_GLOB_CHARS = set("*?[")

StacReader = Callable[[Path], "list[SceneInput]"]
"""Reads a STAC document into scenes (:func:`rsseg.io.stac.stac_scenes`)."""


@dataclass(frozen=True)
class SceneInput:
    """One scene to process: ``name`` names its outputs, ``path`` is what GDAL opens;
    ``vrt`` is the VRT XML to write at ``path`` first and ``source`` where it comes from (a
    STAC item's stacked assets: ``catalog.json#ITEM_ID``)."""

    name: str
    path: Path
    vrt: str | None = None
    source: str | None = None

    @property
    def label(self) -> str:
        """How reports name the scene."""
        return self.source or str(self.path)


def is_collection(arg: str | Path) -> bool:
    """``arg`` may name several scenes: a folder, a list or STAC document, or a pattern."""
    path = Path(arg)
    if path.is_dir():
        return True
    if path.is_file():
        return path.suffix.lower() in (*LIST_SUFFIXES, *STAC_SUFFIXES)
    return bool(_GLOB_CHARS & set(str(arg)))


def expand_scenes(args: Sequence[str | Path],
                  stac: StacReader | None = None) -> list[SceneInput]:
    """The scenes ``args`` name, in order, each once; STAC documents are read by ``stac``."""
    scenes: list[SceneInput] = []
    seen: set[Path] = set()
    for arg in args:
        for scene in _expand(str(arg), None, stac):
            key = scene.path.resolve()
            if key not in seen:
                seen.add(key)
                scenes.append(scene)
    return scenes


def _expand(arg: str, base: Path | None, stac: StacReader | None) -> list[SceneInput]:
    """``base``: the folder of the list file ``arg`` comes from (None: the command line)."""
    path = Path(arg) if base is None or Path(arg).is_absolute() else base / arg
    if path.is_dir():
        return _folder(path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in LIST_SUFFIXES:
            if base is not None:
                raise InputError(f"{path}: a list file inside a list file",
                                 "list scenes, folders or patterns only")
            return _list_file(path, stac)
        if suffix in STAC_SUFFIXES:
            if stac is None:
                raise InputError(f"{path}: STAC documents are not read here", "give raster files")
            return stac(path)
        return [SceneInput(path.stem, path)]
    if _GLOB_CHARS & set(arg):
        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        files = [p for p in found if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES]
        if not files:
            raise InputError(f"{str(path)!r} matches no raster file",
                             "check the pattern (quote it so that the shell leaves it to rsseg)")
        return [SceneInput(p.stem, p) for p in files]
    raise InputError(f"{path}: no such file or folder", "check the path")


def _folder(folder: Path) -> list[SceneInput]:
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES)
    if not files:
        raise InputError(f"{folder}: no rasters in this folder "
                         f"({', '.join(RASTER_SUFFIXES[:4])}, ...)",
                         "give a folder of GeoTIFFs, or the files themselves")
    return [SceneInput(p.stem, p) for p in files]


def _list_file(path: Path, stac: StacReader | None) -> list[SceneInput]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the scene list ({err})",
                         "give a UTF-8 text file, one scene per line") from None
    entries = [(number, line.strip()) for number, line in enumerate(lines, start=1)]
    entries = [(n, e) for n, e in entries if e and not e.startswith("#")]
    if not entries:
        raise InputError(f"{path}: the scene list is empty", "write one scene path per line")
    scenes: list[SceneInput] = []
    for number, entry in entries:
        try:
            scenes += _expand(entry, path.parent, stac)
        except InputError as err:
            raise InputError(f"{path}, line {number}: {err.message}", err.fix) from None
    return scenes
