"""What ``--overwrite`` may replace: only output folders rsseg wrote, recognised by layout.

An existing output folder is replaced only when every entry in it belongs to the layout of the
kind of output being written (:data:`TILE_SET`, :data:`CONDENSED`, :data:`RUN`) and its signature
file is there; a folder holding anything else, or holding (or being) one of the run's inputs, is
refused with the offending entries named, and nothing is deleted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from rsseg.errors import OutputError

# rsseg's own hidden temporaries (partial files, locks), allowed in every layout
_OWN_HIDDEN = (".*.part", ".*.part.*", ".*.lock")
_GDAL_SIDECARS = ("*.aux.xml", "*.ovr")  # written by GDAL/QGIS beside rasters they open
_SHOWN = 3


@dataclass(frozen=True)
class Layout:
    """The entries an rsseg output folder may hold: top-level file patterns and, per
    sub-folder, the patterns of its files; ``trees``: sub-folders rsseg writes whole (anything
    inside is its own); ``signature`` must be present."""

    kind: str
    signature: str
    files: tuple[str, ...]
    folders: dict[str, tuple[str, ...]] = field(default_factory=dict)
    trees: tuple[str, ...] = ()


TILE_SET = Layout("tile set", "stats.json", ("manifest.csv", "stats.json"),
                  {"tiles": ("*.tif", *_GDAL_SIDECARS)})
CONDENSED = Layout("condensed tile set", "condense.json",
                   ("condense.json", "bands.json", "classes.yaml"),
                   {"images": ("*.tif", *_GDAL_SIDECARS), "labels": ("*.tif", *_GDAL_SIDECARS)})
DEMO = Layout("demo folder", "metrics.json", ("metrics.json",), trees=("aerial", "nc"))
RUN = Layout("run folder", "config.yaml",
             ("config.yaml", "metrics.csv", "hparams.yaml", "loss.png", "spectrum.csv",
              "spectrum.png", "*.tmp.png", "backbone.safetensors", "*.rsseg"),
             {"checkpoints": ("*.ckpt", "*.ckpt.tmp")})


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, p) for p in (*patterns, *_OWN_HIDDEN))


def foreign_entries(folder: Path, layout: Layout) -> list[str]:
    """Entries of ``folder`` that are not part of ``layout`` (sub-folders end with ``/``)."""
    foreign = []
    for entry in sorted(folder.iterdir()):
        is_dir = entry.is_dir() and not entry.is_symlink()
        if is_dir and entry.name in layout.trees:
            continue
        if is_dir and entry.name in layout.folders:
            for inner in sorted(entry.iterdir()):
                inner_dir = inner.is_dir() and not inner.is_symlink()
                if inner_dir or not _matches(inner.name, layout.folders[entry.name]):
                    foreign.append(f"{entry.name}/{inner.name}" + ("/" if inner_dir else ""))
        elif is_dir or not _matches(entry.name, layout.files):
            foreign.append(entry.name + ("/" if is_dir else ""))
    return foreign


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_replaceable(path: Path, layout: Layout, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse to replace the existing ``path`` unless it is an rsseg ``layout`` folder without
    foreign entries that holds none of ``inputs`` (:class:`OutputError` naming what is there)."""
    fix = "move them away or choose another --out"
    target = path.resolve()
    for item in inputs:
        if _within(Path(item).resolve(), target):
            what = "is" if Path(item).resolve() == target else "contains"
            raise OutputError(f"--out {path} {what} the input {item}; --overwrite would delete it",
                              "choose another --out")
    if not path.is_dir():
        raise OutputError(f"--out {path} is a file, not a {layout.kind} rsseg wrote; "
                          "--overwrite replaces only rsseg's own outputs", "choose another --out")
    foreign = foreign_entries(path, layout)
    if foreign:
        shown = ", ".join(foreign[:_SHOWN]) + (f" and {len(foreign) - _SHOWN} more"
                                               if len(foreign) > _SHOWN else "")
        raise OutputError(f"--out {path} holds files rsseg did not write as a {layout.kind}: "
                          f"{shown}; --overwrite replaces only rsseg's own outputs", fix)
    entries = [e for e in path.iterdir() if not _matches(e.name, ())]
    if entries and not (path / layout.signature).exists():
        raise OutputError(f"--out {path} is not a {layout.kind} rsseg wrote (no "
                          f"{layout.signature}); --overwrite replaces only rsseg's own outputs",
                          fix)
