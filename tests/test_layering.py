"""The dependency rule of ARCHITECTURE.md, read from the imports of every module of ``rsseg``.

Each top-level component of the package (a subpackage such as ``io`` or a module such as
``labels``) sits on one layer of :data:`LAYERS`; a module may import its own component and the
components of lower layers only, so dependencies point one way and no two components import
each other. Every import counts: module level, inside functions and under ``TYPE_CHECKING``.
The raster and vector libraries are opened through ``rsseg.io`` only (elsewhere rasterio is
imported for its types: windows, errors, CRS).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rsseg

PACKAGE = Path(rsseg.__file__).parent

# Lowest first. ARCHITECTURE.md draws the same layers.
LAYERS: list[set[str]] = [
    {"errors", "rsseg"},  # rsseg: the package root (__version__)
    {"config"},
    {"io"},
    {"registry", "classes", "grid", "tiling", "metrics", "losses", "polygons", "distributed",
     "sampling"},
    {"models", "quicklook"},
    {"labels", "inference", "pretexts", "regularizers"},
    {"training"},
    {"pipelines"},
    {"cli"},
    {"__main__"},
]
LAYER = {component: rank for rank, layer in enumerate(LAYERS) for component in layer}
IO_ONLY = ("geopandas", "pyogrio", "fiona")  # vector files: rsseg.io.vector, .polygons, ...
RASTERIO_TYPES = ("rasterio.windows", "rasterio.errors", "rasterio.crs")  # allowed elsewhere


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out.append((name, path))
    return out


def component(module: str) -> str:
    """``rsseg.io.raster`` → ``io``; ``rsseg.labels`` → ``labels``; ``rsseg`` → ``rsseg``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "rsseg"


def imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every absolute import in the file (``from a import b``: ``a.b``
    too, so that ``from rsseg import io`` counts as ``rsseg.io``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def rsseg_component(name: str) -> str | None:
    """The component an imported name belongs to, None outside rsseg (``rsseg.__version__``,
    a name of the root package, belongs to ``rsseg``)."""
    if name != "rsseg" and not name.startswith("rsseg."):
        return None
    found = component(name)
    return found if found in COMPONENTS else "rsseg"


COMPONENTS = {component(m) for m, _ in modules()}


def test_every_component_has_a_layer() -> None:
    missing = sorted(COMPONENTS - set(LAYER))
    assert not missing, f"give {missing} a layer in LAYERS (and in ARCHITECTURE.md)"


@pytest.mark.parametrize("module,path", modules(), ids=[m for m, _ in modules()])
def test_imports_point_down(module: str, path: Path) -> None:
    mine = component(module)
    bad = []
    for line, name in imports(path):
        other = rsseg_component(name)
        if other is None or other == mine:
            continue
        if LAYER[other] >= LAYER[mine]:
            bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name} "
                       f"({other}, layer {LAYER[other]}) from {mine} (layer {LAYER[mine]})")
    assert not bad, "imports against the layering of ARCHITECTURE.md:\n" + "\n".join(bad)


@pytest.mark.parametrize("module,path", modules(), ids=[m for m, _ in modules()])
def test_files_are_opened_through_io(module: str, path: Path) -> None:
    if component(module) == "io":
        return
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
           for line, name in imports(path)
           if name.split(".")[0] in IO_ONLY
           or (name.split(".")[0] == "rasterio" and not name.startswith(RASTERIO_TYPES))]
    assert not bad, "open rasters and vector files through rsseg.io:\n" + "\n".join(bad)


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    """The check itself: an io module importing labels is refused."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from rsseg.labels import load_labels\n")
    (line, name), *_ = imports(bad)
    assert line == 2 and LAYER[rsseg_component(name)] > LAYER["io"]
