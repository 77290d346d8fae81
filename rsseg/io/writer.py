"""Streaming raster writers: rows in, Cloud-Optimized GeoTIFFs out, atomically.

Rows arrive top to bottom and are written in whole block rows into a temporary tiled GeoTIFF
(ZSTD level 1, cheap), which GDAL's COG driver then copies into a temporary sibling of the output
(tiled, DEFLATE level 1, overviews); a :class:`~rsseg.io.publish.Publication` renames it onto the
output, together with the run's other outputs. An interrupted or failed run leaves no file under
any output name.

- :func:`class_raster_writer`: uint8 class ids, colour table (nodata transparent), ``CLASSES``
  JSON tag, NEAREST overviews, and the sidecars QGIS and GDAL read the class names from
  (``NAME.qml`` style, ``NAME.tif.aux.xml`` category names + attribute table).
- :func:`byte_raster_writer`: continuous uint8 bands (confidence, probabilities) with band
  descriptions, a nodata value or a per-dataset mask, AVERAGE overviews.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from rsseg.io.gdal_errors import gdal_write_errors
from rsseg.io.legend import Legend
from rsseg.io.locks import part_prefix
from rsseg.io.pam import aux_xml_path, write_category_aux_xml
from rsseg.io.publish import Publication, publishing
from rsseg.io.qml import qml_path, write_qml
from rsseg.io.raster import SceneInfo

BLOCK = 512
GDAL_CACHE_MB = 64
# DEFLATE level 1: 6x faster than the default level 6 on noisy maps, ~10% larger files.
COG_OPTIONS = {"COMPRESS": "DEFLATE", "LEVEL": 1, "NUM_THREADS": "ALL_CPUS", "BLOCKSIZE": BLOCK,
               "OVERVIEW_RESAMPLING": "NEAREST", "BIGTIFF": "IF_SAFER"}


class RowWriter:
    """Takes ``(h, W)`` or ``(count, h, W)`` uint8 rows in order and writes whole block rows.

    Memory: one block row of every band, ``count x 512 x W`` bytes (plus as many mask bytes
    when the output has a per-dataset mask instead of a nodata value).
    """

    def __init__(self, dst: rasterio.io.DatasetWriter, path: Path, masked: bool = False) -> None:
        self.dst = dst
        self.path = path
        self.masked = masked
        self.rows_written = 0
        self._buffer = np.empty((dst.count, BLOCK, dst.width), dtype=np.uint8)
        self._mask = np.empty((BLOCK, dst.width), dtype=np.uint8) if masked else None
        self._buffered = 0

    @property
    def next_row(self) -> int:
        return self.rows_written + self._buffered

    def write(self, row: int, values: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Append scene rows ``row .. row + h``; ``row`` must follow the previous rows.

        ``valid`` ``(h, W)`` bool is required by (and only used for) masked outputs.
        """
        if row != self.next_row:
            raise ValueError(f"rows must be written in order: got row {row}, "
                             f"expected {self.next_row}")
        values = values[None] if values.ndim == 2 else values
        if self.masked and valid is None:
            raise ValueError("a masked output needs the valid mask of its rows")
        done = 0
        while done < values.shape[1]:
            take = min(BLOCK - self._buffered, values.shape[1] - done)
            rows = slice(self._buffered, self._buffered + take)
            self._buffer[:, rows] = values[:, done:done + take]
            if self._mask is not None:
                self._mask[rows] = np.where(valid[done:done + take], 255, 0)
            self._buffered += take
            done += take
            if self._buffered == BLOCK:
                self.flush()

    def flush(self) -> None:
        """Write the buffered rows: a whole block row, or the scene's last rows."""
        if self._buffered:
            window = Window(0, self.rows_written, self.dst.width, self._buffered)
            with _writing(self.path):
                self.dst.write(self._buffer[:, :self._buffered], window=window)
                if self._mask is not None:
                    self.dst.write_mask(self._mask[:self._buffered], window=window)
            self.rows_written += self._buffered
            self._buffered = 0


@contextmanager
def class_raster_writer(path: str | Path, info: SceneInfo, classes: Legend,
                        nodata: int = 255, overwrite: bool = False,
                        publication: Publication | None = None,
                        sidecars: bool = True) -> Iterator[RowWriter]:
    """Open a writer for a uint8 class raster on the grid of ``info`` (size, CRS, transform).

    On a clean exit every row must have been written; the COG with the classes' colour table
    (nodata transparent) and a ``CLASSES`` JSON tag then appears at ``path`` and, with
    ``sidecars``, the QGIS style ``NAME.qml`` (:mod:`rsseg.io.qml`) and GDAL's
    ``NAME.tif.aux.xml`` with category names and an attribute table (:mod:`rsseg.io.pam`)
    beside it. With ``publication`` the files are staged there and appear when its owner
    commits it, together with the other outputs. Raises :class:`OutputError` when an output
    exists without ``overwrite`` or cannot be written.
    """

    def describe(dst: rasterio.io.DatasetWriter) -> None:
        dst.write_colormap(1, {**classes.colormap(), nodata: (0, 0, 0, 0)})
        dst.set_band_description(1, "class")
        dst.update_tags(CLASSES=json.dumps(classes.to_records()))

    with publishing(publication) as pub:
        pub.lock(path)
        if sidecars:  # staged before any pixel is computed: an existing style is refused early
            write_qml(path, classes, nodata, overwrite, publication=pub)
            write_category_aux_xml(path, classes, overwrite, publication=pub)
        with _streamed_cog(path, info, 1, nodata, False, describe, overwrite, pub,
                           COG_OPTIONS, primary=True) as writer:
            yield writer


@contextmanager
def byte_raster_writer(path: str | Path, info: SceneInfo, descriptions: Sequence[str],
                       nodata: int | None = None, overwrite: bool = False,
                       publication: Publication | None = None,
                       tags: dict[str, str] | None = None) -> Iterator[RowWriter]:
    """Open a writer for a continuous uint8 raster (one band per description) on ``info``'s grid.

    Without ``nodata`` the output carries a per-dataset mask (255 valid, 0 nodata) so that all
    256 values stay data; rows are then written with their valid mask. Overviews are averaged.
    A stale ``.aux.xml``/``.qml`` beside a replaced output is removed. Otherwise as
    :func:`class_raster_writer`.
    """

    def describe(dst: rasterio.io.DatasetWriter) -> None:
        for band, text in enumerate(descriptions, start=1):
            dst.set_band_description(band, text)
        if tags:
            dst.update_tags(**tags)

    options = {**COG_OPTIONS, "OVERVIEW_RESAMPLING": "AVERAGE"}
    with publishing(publication) as pub:
        if overwrite:  # a class raster replaced by this one must not keep its class sidecars
            pub.remove_on_commit(aux_xml_path(path))
            pub.remove_on_commit(qml_path(path))
        with _streamed_cog(path, info, len(descriptions), nodata, nodata is None, describe,
                           overwrite, pub, options) as writer:
            yield writer


@contextmanager
def _streamed_cog(path: str | Path, info: SceneInfo, count: int, nodata: int | None,
                  masked: bool, describe: Callable[[rasterio.io.DatasetWriter], None],
                  overwrite: bool, publication: Publication, cog_options: dict,
                  primary: bool = False) -> Iterator[RowWriter]:
    """Rows → temporary tiled GTiff → COG staged in ``publication`` (see the module docstring)."""
    path = Path(path)
    with ExitStack() as stack:
        with _writing(path):
            final = publication.stage(path, overwrite, primary=primary)
            stream = stack.enter_context(_temporary_sibling(path))
            profile = _stream_profile(info, nodata, count)
            if masked:
                stack.enter_context(rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True))
            dst = stack.enter_context(_open_for_writing(stream, profile))
            describe(dst)
        writer = RowWriter(dst, path, masked)
        yield writer
        writer.flush()
        if writer.rows_written != info.height:
            raise ValueError(f"{writer.rows_written} of {info.height} rows were written")
        with _writing(path):
            dst.close()
            rasterio.shutil.copy(stream, final, driver="COG", **cog_options)


@contextmanager
def _open_for_writing(path: Path, profile: dict) -> Iterator[rasterio.io.DatasetWriter]:
    """``rasterio.open(path, "w")`` whose close, when the block already failed (a full disk
    fails the close too), cannot replace the block's one-line error."""
    dst = rasterio.open(path, "w", **profile)
    try:
        yield dst
    except BaseException:
        with suppress(Exception):
            dst.close()
        raise
    dst.close()


@contextmanager
def bounded_gdal_cache(megabytes: int = GDAL_CACHE_MB) -> Iterator[None]:
    """Cap GDAL's block cache (process-wide) so streamed reads and writes stay small in RAM.

    GDAL's default cache (5% of RAM) would keep every block of a scene that was read once.
    """
    with rasterio.Env(GDAL_CACHEMAX=megabytes):
        yield


def _stream_profile(info: SceneInfo, nodata: int | None, count: int = 1) -> dict:
    profile = {"driver": "GTiff", "width": info.width, "height": info.height, "count": count,
               "dtype": "uint8", "nodata": nodata, "tiled": True, "blockxsize": BLOCK,
               "blockysize": BLOCK, "compress": "ZSTD", "zstd_level": 1, "bigtiff": "IF_SAFER"}
    if info.georeferenced:
        profile.update(crs=info.crs, transform=info.transform)
    return profile


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """GDAL/libtiff/OS errors while writing ``path`` → one-line :class:`OutputError`
    (:func:`~rsseg.io.gdal_errors.gdal_write_errors`)."""
    with gdal_write_errors(path), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


@contextmanager
def _temporary_sibling(path: Path) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(prefix=part_prefix(path), suffix=".stream.part.tif",
                                dir=path.parent)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)
