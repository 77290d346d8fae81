"""Does a scene look like the data a model was trained on? One warning line per problem.

A model normalises every band with its training statistics (``(x - mean) / std``); a scene of
another bit depth, scaling or sensor runs without an error and gives a plausible-looking but
wrong map. Before predicting, :func:`check_radiometry` samples a grid of small windows of the
scene (a few blocks read, whatever the scene's size) and warns when

- the scene's dtype cannot hold the training values, or holds values far beyond the range the
  training statistics describe (e.g. a uint16 scene for a model trained on 8-bit data);
- a band's mean lies more than :data:`MEAN_SHIFT` training standard deviations from the
  training mean, or its spread differs by more than the factors of :data:`SPREAD`.
"""

from __future__ import annotations

import warnings

import numpy as np
from rasterio.windows import Window

from rsseg.io.raster import Scene
from rsseg.models.bundle import BundleMeta

GRID = 5  # sampled windows per side
WINDOW = 32  # side of a sampled window in pixels
MIN_VALUES = 64  # fewer valid samples of a band: no opinion on it
MEAN_SHIFT = 4.0  # |scene mean - training mean| in training std
SPREAD = (1 / 20, 5.0)  # scene std / training std outside this: another scaling
EIGHT_BIT = 255


def sample(scene: Scene) -> list[np.ndarray]:
    """Valid, finite values of each selected band in a ``GRID x GRID`` grid of windows."""
    info = scene.info
    h, w = min(WINDOW, info.height), min(WINDOW, info.width)
    rows = np.unique(np.linspace(0, info.height - h, GRID).astype(int))
    cols = np.unique(np.linspace(0, info.width - w, GRID).astype(int))
    parts: list[list[np.ndarray]] = [[] for _ in range(scene.count)]
    for row in rows:
        for col in cols:
            pixels = scene.read(Window(int(col), int(row), w, h))
            missing = scene.band_missing(pixels)
            for band in range(scene.count):
                values = pixels[band][~missing[band]].astype(np.float64)
                parts[band].append(values[np.isfinite(values)])
    return [np.concatenate(p) for p in parts]


def check_radiometry(scene: Scene, meta: BundleMeta) -> None:
    """Warn (one line per problem) when ``scene`` is far from ``meta``'s training statistics;
    ``scene``'s bands must be in the model's order."""
    values = sample(scene)
    path, dtype = scene.info.path, np.dtype(scene.info.dtype)
    seen = [(b, v) for b, v in zip(meta.bands, values, strict=True) if v.size >= MIN_VALUES]
    if not seen:
        return
    top = max(b.mean + 3 * b.std for b, _ in seen)  # what the training data reached
    scene_max = max(float(v.max()) for _, v in seen)
    if dtype == np.uint8 and top > 2 * EIGHT_BIT:
        warnings.warn(f"{path} is uint8, but the model was trained on values up to ~{top:.4g} "
                      "(16-bit or scaled data?): predictions will be wrong",
                      UserWarning, stacklevel=3)
    elif dtype.kind in "ui" and dtype.itemsize > 1 and top <= EIGHT_BIT < scene_max:
        warnings.warn(f"{path} is {dtype.name} with values up to {scene_max:.4g}, but the "
                      f"model was trained on values up to ~{top:.4g} (8-bit data?): rescale "
                      "the scene to the training data's range", UserWarning, stacklevel=3)
    far = []
    for band, v in seen:
        shift = (float(v.mean()) - band.mean) / band.std
        spread = float(v.std()) / band.std
        narrow = 0 < spread < SPREAD[0]  # a constant band (spread 0) says nothing of scaling
        if abs(shift) > MEAN_SHIFT or narrow or spread > SPREAD[1]:
            far.append(f"{band.name} mean {shift:+.3g} training std off, spread x{spread:.2g}")
    if far:
        warnings.warn(f"{path}: band(s) far from the model's training statistics ({'; '.join(far)}"
                      "): another sensor, scaling or band order? predictions may be wrong",
                      UserWarning, stacklevel=3)
