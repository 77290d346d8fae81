"""Shared fixtures: tiny real-format GeoTIFFs, the CLI run in-process, the shared real data.

- ``geotiff_factory(name, array, *, crs, transform, nodata, blocksize, descriptions) -> Path``
  writes a GeoTIFF under ``tmp_path`` (2-D arrays become one band).
- ``run_cli(*args) -> CliResult(exit_code, stdout, stderr)`` runs ``rsseg ARGS`` through
  :func:`rsseg.cli.main`, exactly as the console script does (errors → one line, exit 1).
- ``shared_data`` is ``../shared/data`` (or ``$RSSEG_SHARED_DATA``); the test skips without it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import rasterio
from affine import Affine

DEFAULT_CRS = "EPSG:32618"
DEFAULT_TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_500_000.0)  # 10 m, UTM 18N
SHARED_DATA = Path(os.environ.get("RSSEG_SHARED_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "data"))


class CliResult(NamedTuple):
    exit_code: int
    stdout: str
    stderr: str


GeoTiffFactory = Callable[..., Path]


@pytest.fixture
def geotiff_factory(tmp_path: Path) -> GeoTiffFactory:
    """Return ``make(name, array, *, crs="EPSG:32618", transform=None, nodata=None,
    blocksize=None, descriptions=None) -> Path``.

    ``array`` is ``(C, H, W)`` or ``(H, W)`` in the dtype to write. ``transform`` defaults to a
    10 m grid at (500000, 4500000); ``crs=None`` without a transform writes a
    non-georeferenced file. ``blocksize``: an int gives square internal tiles (a multiple of
    16); ``(rows, cols)`` with ``cols == W`` gives strips of ``rows`` rows; None leaves GDAL's
    default strips.
    """

    def make(name: str, array: np.ndarray, *, crs: str | None = DEFAULT_CRS,
             transform: Affine | None = None, nodata: float | None = None,
             blocksize: int | tuple[int, int] | None = None,
             descriptions: Sequence[str] | None = None) -> Path:
        data = array[None] if array.ndim == 2 else array
        count, height, width = data.shape
        profile = {"driver": "GTiff", "width": width, "height": height, "count": count,
                   "dtype": data.dtype, "nodata": nodata}
        if crs is not None or transform is not None:
            profile.update(crs=crs, transform=transform or DEFAULT_TRANSFORM)
        if isinstance(blocksize, int):
            profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
        elif blocksize is not None:
            rows, cols = blocksize
            profile.update(tiled=cols != width, blockysize=rows,
                           **({"blockxsize": cols} if cols != width else {}))
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            for i, text in enumerate(descriptions or (), start=1):
                dst.set_band_description(i, text)
        return path

    return make


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Return ``run(*args) -> CliResult``: ``rsseg ARGS`` in-process via ``rsseg.cli.main``.

    Arguments may be paths or numbers (converted with ``str``). An exception that ``main`` does
    not turn into a message propagates, so the test fails with its traceback.
    """
    from rsseg.cli import main

    def run(*args: object) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["rsseg", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run a test on one torch thread (tiny models are slower, not faster, on two)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def shared_data() -> Path:
    """The shared real data folder; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set RSSEG_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def rgbn_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A per-pixel (1x1 conv) bundle with fixed weights: bands red, green, blue, nir (mean 10,
    std 5), classes 1 "water", 2 "field", 5 "forest"; tile 32, overlap 8."""
    import torch

    from rsseg.models.bundle import BundleMeta, save_bundle
    from rsseg.models.factory import ModelSpec, build_model

    spec = ModelSpec(arch="pixel", in_channels=4, classes=3)
    net = build_model(spec)
    weights = torch.tensor([[1.0, -1.0, 0.5, -2.0], [-1.0, 2.0, 0.0, 1.0], [0.0, -1.0, 1.0, 1.5]])
    with torch.no_grad():
        net.net[0].weight.copy_(weights[:, :, None, None])
        net.net[0].bias.zero_()
    meta = BundleMeta(
        model=spec, tile=32, overlap=8,
        bands=[{"name": n, "mean": 10.0, "std": 5.0} for n in ("red", "green", "blue", "nir")],
        classes=[{"id": 1, "name": "water", "color": (0, 0, 255)},
                 {"id": 2, "name": "field", "color": (255, 255, 0)},
                 {"id": 5, "name": "forest", "color": (0, 128, 0)}])
    return save_bundle(tmp_path_factory.mktemp("bundle") / "rgbn.rsseg", net, meta)


@pytest.fixture(scope="module")
def load_tool() -> Iterator[Callable[[str], object]]:
    """``load(name)`` imports ``tools/NAME.py`` as module ``NAME`` (registered in sys.modules
    while the test module runs: dataclasses look their module up)."""
    import importlib.util

    loaded: list[str] = []

    def load(name: str) -> object:
        path = Path(__file__).resolve().parents[1] / "tools" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loaded.append(name)
        spec.loader.exec_module(module)
        return module

    yield load
    for name in loaded:
        sys.modules.pop(name, None)
