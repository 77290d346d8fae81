"""All rasterio access: opening scenes, reading windows, nodata masks.

Everything above this module deals in numpy arrays, :class:`rasterio.windows.Window` and plain
profile dicts. Arrays are band-first: ``(C, H, W)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from rsseg.errors import InputError


@dataclass(frozen=True)
class SceneInfo:
    """What callers need to know about a raster without reading its pixels."""

    path: Path
    width: int
    height: int
    count: int
    dtype: str
    crs: object | None  # rasterio.crs.CRS
    transform: object  # affine.Affine
    nodata: float | None
    block_shape: tuple[int, int]  # (rows, cols) of band 1's internal blocks
    band_names: tuple[str, ...]
    georeferenced: bool

    @property
    def resolution(self) -> tuple[float, float]:
        return (abs(self.transform.a), abs(self.transform.e))


class Scene:
    """An open raster with a resolved nodata value and an optional band selection.

    ``bands`` are 1-based band indexes, as in GDAL and ``rsseg tile --bands``.
    """

    def __init__(self, src: rasterio.DatasetReader, info: SceneInfo, bands: tuple[int, ...]):
        self.src = src
        self.info = info
        self.bands = bands

    @property
    def count(self) -> int:
        return len(self.bands)

    def read(self, window: Window, boundless: bool = False) -> np.ndarray:
        """Pixels of ``window`` for the selected bands, shape ``(C, h, w)``, source dtype.

        With ``boundless=True`` the parts outside the scene are filled with nodata (or 0).
        """
        fill = self.info.nodata if self.info.nodata is not None else 0
        return self.src.read(list(self.bands), window=window, boundless=boundless,
                             fill_value=fill)

    def valid_mask(self, pixels: np.ndarray) -> np.ndarray:
        """``(H, W)`` bool, True where a pixel holds data in at least one band.

        A pixel is nodata when every selected band equals the nodata value (or is NaN).
        """
        invalid = np.zeros(pixels.shape[1:], dtype=bool)
        if np.issubdtype(pixels.dtype, np.floating):
            invalid |= np.isnan(pixels).all(axis=0)
        if self.info.nodata is not None and not np.isnan(self.info.nodata):
            invalid |= (pixels == np.asarray(self.info.nodata, dtype=pixels.dtype)).all(axis=0)
        return ~invalid


def _parse_bands(bands: Sequence[int] | None, count: int, path: Path) -> tuple[int, ...]:
    if not bands:
        return tuple(range(1, count + 1))
    bad = [b for b in bands if not 1 <= b <= count]
    if bad:
        raise InputError(f"{path}: band(s) {bad} do not exist; the file has bands 1..{count}",
                         "choose --bands from that range")
    return tuple(int(b) for b in bands)


@contextmanager
def open_scene(path: str | Path, nodata: float | None = None,
               bands: Sequence[int] | None = None) -> Iterator[Scene]:
    """Open a raster for window reads; ``nodata`` overrides the file's declared value.

    Raises :class:`InputError` with a one-line message for a missing, unreadable or truncated
    file. Non-georeferenced files (PNG/JPEG) open with a warning.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file", "check the path")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a raster file", "give a GeoTIFF/PNG/JPEG file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            src = rasterio.open(path)
        except RasterioIOError as err:
            raise InputError(f"{path}: not a readable raster ({_first_line(err)})",
                             "give a GeoTIFF, PNG or JPEG file") from None
    try:
        info = _scene_info(src, path, nodata)
        if not info.georeferenced:
            warnings.warn(f"{path} has no CRS/georeferencing; outputs will use pixel coordinates",
                          UserWarning, stacklevel=3)
        yield Scene(src, info, _parse_bands(bands, src.count, path))
    finally:
        src.close()


def _scene_info(src: rasterio.DatasetReader, path: Path, nodata: float | None) -> SceneInfo:
    descriptions = tuple(d or f"B{i + 1}" for i, d in enumerate(src.descriptions))
    georeferenced = src.crs is not None or not src.transform.is_identity
    return SceneInfo(
        path=path, width=src.width, height=src.height, count=src.count, dtype=src.dtypes[0],
        crs=src.crs, transform=src.transform,
        nodata=nodata if nodata is not None else src.nodata,
        block_shape=tuple(src.block_shapes[0]), band_names=descriptions,
        georeferenced=georeferenced,
    )


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
