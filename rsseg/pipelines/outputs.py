"""The optional outputs of ``rsseg predict``, fed from the same blended bands as the class raster.

- ``--confidence OUT.tif``: uint8 COG, the most probable class's probability x 255 (rounded; at
  least 1 wherever there is data, since it is at least 1/K), nodata 0.
- ``--probs OUT.tif``: uint8 COG, one band per class (probability x 255, rounded), band
  descriptions = class names; a per-dataset mask marks nodata, so all 256 values stay data.
- ``--vector OUT.gpkg``: polygons per class (:mod:`rsseg.pipelines.vectorize`).
- ``--preview OUT.png``: the scene's RGB beside the prediction with a legend
  (:mod:`rsseg.quicklook`).

Every output is staged in the run's :class:`~rsseg.io.publish.Publication` and appears together
with the class raster. Memory stays one band of rows (plus a block row per raster, the
thumbnails and the polygons).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsseg.errors import ConfigError
from rsseg.inference.sliding import RowBand
from rsseg.io.atomic import check_output
from rsseg.io.publish import Publication
from rsseg.io.raster import Scene
from rsseg.io.thumbnail import read_thumbnail
from rsseg.io.writer import RowWriter, byte_raster_writer
from rsseg.models.bundle import BundleMeta
from rsseg.pipelines.vectorize import VectorOptions, VectorSink, VectorSummary, check_vector_options
from rsseg.quicklook import ClassThumbnail, render_quicklook, resolve_bands, stretch, thumbnail_step


@dataclass(frozen=True)
class OutputOptions:
    """Paths of the optional outputs (None: not written) and their settings."""

    confidence: Path | None = None
    probs: Path | None = None
    vector: Path | None = None
    min_area: float = 0.0  # m², for --vector
    simplify: float = 0.0  # CRS units, for --vector
    preview: Path | None = None
    preview_bands: str | None = None  # "R,G,B" band names or 1-based numbers

    @property
    def paths(self) -> dict[str, Path]:
        flags = {"--confidence": self.confidence, "--probs": self.probs,
                 "--vector": self.vector, "--preview": self.preview}
        return {flag: Path(p) for flag, p in flags.items() if p is not None}


def check_outputs(options: OutputOptions, out: Path, scene: Path, meta: BundleMeta,
                  overwrite: bool) -> None:
    """Refuse bad outputs before any pixel is predicted (one-line errors): names shared with
    each other or with the input ``scene``, wrong extensions, existing files."""
    outputs = {"--out": out, **options.paths}
    seen = {scene.resolve(): "the input scene"}
    for flag, path in outputs.items():
        if path.resolve() in seen:
            raise ConfigError(f"{flag} {path} is also {seen[path.resolve()]}",
                              "give each output its own name")
        seen[path.resolve()] = f"given as {flag}"
        if flag != "--out":  # checked first, by predict_scene
            check_output(path, overwrite)
    for flag in ("--out", "--confidence", "--probs"):
        path = outputs.get(flag)
        if path is not None and path.suffix.lower() not in (".tif", ".tiff"):
            raise ConfigError(f"{flag} {path}: rasters are written as Cloud-Optimized GeoTIFF",
                              "name it .tif")
    if options.vector is not None:
        check_vector_options(options.vector, _vector_options(options, overwrite))
    elif options.min_area or options.simplify:
        raise ConfigError("--min-area/--simplify apply to polygons", "add --vector OUT.gpkg")
    if options.preview is not None:
        if options.preview.suffix.lower() != ".png":
            raise ConfigError(f"--preview {options.preview}: the quicklook is a PNG",
                              "name it .png")
        resolve_bands([b.name for b in meta.bands], options.preview_bands)


class ExtraOutputs:
    """Receives each finished band with its class ids and feeds every requested output."""

    def __init__(self) -> None:
        self.confidence: RowWriter | None = None
        self.probs: RowWriter | None = None
        self.vector: VectorSink | None = None
        self.thumbnail: ClassThumbnail | None = None
        self.vector_summary: VectorSummary | None = None

    def add(self, band: RowBand, class_ids: np.ndarray) -> None:
        if self.confidence is not None:
            best = np.rint(band.probs.max(axis=0) * 255)
            conf = np.maximum(best, 1).astype(np.uint8)
            conf[~band.valid] = 0
            self.confidence.write(band.row, conf)
        if self.probs is not None:
            probs = np.rint(band.probs * 255).astype(np.uint8)
            probs[:, ~band.valid] = 0  # under the mask: zeros compress best
            self.probs.write(band.row, probs, band.valid)
        if self.vector is not None:
            self.vector.add(band.row, class_ids)
        if self.thumbnail is not None:
            self.thumbnail.add(band.row, class_ids)


@contextmanager
def extra_outputs(options: OutputOptions, scene: Scene, meta: BundleMeta,
                  publication: Publication, overwrite: bool) -> Iterator[ExtraOutputs]:
    """Open the requested outputs; on a clean exit finish them into ``publication``."""
    info, classes = scene.info, meta.class_table()
    extras = ExtraOutputs()
    with ExitStack() as stack:
        if options.confidence is not None:
            extras.confidence = stack.enter_context(byte_raster_writer(
                options.confidence, info, ["confidence"], nodata=0, overwrite=overwrite,
                publication=publication, tags={"SCALE_NOTE": "max class probability x 255"}))
        if options.probs is not None:
            extras.probs = stack.enter_context(byte_raster_writer(
                options.probs, info, list(classes.names), overwrite=overwrite,
                publication=publication, tags={"SCALE_NOTE": "class probability x 255"}))
        if options.vector is not None:
            extras.vector = VectorSink(options.vector, info, classes, meta.nodata_id,
                                       _vector_options(options, overwrite), publication)
        if options.preview is not None:
            preview = publication.stage(options.preview, overwrite)
            step = thumbnail_step(info.height, info.width)
            extras.thumbnail = ClassThumbnail(info.height, info.width, meta.nodata_id, step)
        yield extras
        if extras.vector is not None:
            extras.vector_summary = extras.vector.finish()
        if extras.thumbnail is not None:
            names = [b.name for b in meta.bands]
            bands = resolve_bands(names, options.preview_bands)
            pixels, valid = read_thumbnail(scene, bands, extras.thumbnail.image.shape)
            render_quicklook(preview, stretch(pixels, valid), extras.thumbnail.image, classes,
                             meta.nodata_id, title=info.path.name,
                             band_label="(" + ", ".join(names[b - 1] for b in bands) + ")")


def _vector_options(options: OutputOptions, overwrite: bool) -> VectorOptions:
    return VectorOptions(min_area=options.min_area, simplify=options.simplify,
                         overwrite=overwrite)
