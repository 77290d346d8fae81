"""Two augmented views of one tile with pixel correspondence (GLCNet, Li et al., TGRS 2022, §III-B).

Both views are a random resized crop of the tile; view 2 alone is then flipped, rotated by a
multiple of 90°, photometrically changed, band-copied ("grayscale") and blurred. Every geometric
step is applied to a map of source-pixel ids as well (nearest resampling), so each view pixel
knows which tile pixel it shows.

The photometric change works on **raw pixel values**, as the official ``color_aug`` does before
normalisation (docs/methods.md, "GLCNet — views"): with probability ``photometric_p`` an HSV shift
of the bands the scene names red/green/blue (hue ±30 in OpenCV's 0–180 units, saturation ±5 and
value ±15 on a 0–255 scale; bands of other dtypes scaled by their p98 to that scale), and, on
imagery of other than 3 bands, a per-band brightness blend toward white/black (``f ∈ 1 ± 0.1``),
a contrast factor (``c ∈ 1 ± 0.1``) and salt noise. The tiles arrive normalised; a
:class:`Radiometry` (the tile set's band statistics) maps them back to raw values and forward
again, which equals changing the raw pixels before normalising (resizing is linear).
On 8-bit bands with a std of 20–40 DN the shift is ~0.6–1.3 σ: strong enough that colour is no
shortcut between the views.

Runs in DataLoader workers: numpy in, numpy out, randomness only from the given Generator.

Deviations from the official code (GeoX-Lab/G-RSIM, ``T-SS-GLCNet/utils/data_for_self_GLCNet.py``):
crop aspect ratios are log-uniform (torchvision) instead of uniform with a random swap; the image
is resized bilinearly (antialiased when shrinking) and the id map with exact pixel-centre nearest
(cv2's INTER_NEAREST is half a pixel off); the HSV shift is done in float (hue wraps around, no
uint8 rounding) and uses the named red/green/blue bands rather than the first three; patches
never overlap in either view (see ``sample_patches``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator


class ViewConfig(BaseModel):
    """Augmentation parameters; defaults are the paper's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: tuple[float, float] = (0.4, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    rot90_p: float = Field(0.8, ge=0, le=1)
    photometric_p: float = Field(0.8, ge=0, le=1)
    # HSV shift of the red/green/blue bands: OpenCV units (hue 0–180, saturation/value 0–255).
    hue: float = Field(30, ge=0, le=90)
    saturation: float = Field(5, ge=0, le=255)
    value: float = Field(15, ge=0, le=255)
    # Per-band change: brightness blend toward white/black by up to this fraction of the band's
    # range, contrast ×U(1 ± contrast), salt noise on this fraction of the pixels. ``per_band``
    # None applies it as the official code does (imagery of other than 3 bands), True/False
    # always/never.
    brightness: float = Field(0.1, ge=0, le=1)
    contrast: float = Field(0.1, ge=0, lt=1)
    salt: float = Field(0.001, ge=0, le=0.5)
    per_band: bool | None = None
    gray_p: float = Field(0.1, ge=0, le=1)
    blur_p: float = Field(0.5, ge=0, le=1)
    blur_kernels: tuple[int, ...] = (3, 5, 7)

    @field_validator("scale")
    @classmethod
    def _scale_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError("scale must satisfy 0 < low ≤ high ≤ 1")
        return v

    @field_validator("ratio")
    @classmethod
    def _ratio_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError("ratio must satisfy 0 < low ≤ high")
        return v

    @field_validator("blur_kernels")
    @classmethod
    def _odd_kernels(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(k < 1 or k % 2 == 0 for k in v):
            raise ValueError("blur_kernels must be a non-empty list of odd sizes ≥ 1")
        return v


@dataclass(frozen=True)
class Radiometry:
    """How normalised tiles map to raw values: ``raw = x·std + mean`` per band.

    ``white``: per-band value of "white" (255 for 8-bit bands, else the band's p98); ``clip``:
    raw values are clipped to ``[0, white]`` after the change (8-bit data, as OpenCV's uint8);
    ``rgb``: indices of the red, green and blue bands, or None (no HSV shift).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    white: tuple[float, ...]
    rgb: tuple[int, int, int] | None
    clip: bool = False

    @classmethod
    def of_bands(cls, names: Sequence[str], mean: Sequence[float], std: Sequence[float],
                 white: Sequence[float], eight_bit: bool) -> Radiometry:
        """Radiometry of a tile set: its band names, statistics and "white" per band."""
        return cls(tuple(map(float, mean)), tuple(map(float, std)), tuple(map(float, white)),
                   rgb_bands(names), eight_bit)

    @classmethod
    def unit(cls, bands: int) -> Radiometry:
        """Tiles taken as raw 8-bit-like values on a 0–255 scale (tests, unknown statistics)."""
        return cls((0.0,) * bands, (1.0,) * bands, (255.0,) * bands,
                   (0, 1, 2) if bands >= 3 else None)


def rgb_bands(names: Sequence[str]) -> tuple[int, int, int] | None:
    """Indices of the bands named red, green and blue (``B3_red``, ``Red``, ...), else the first
    three bands of unnamed ≥ 3-band imagery (as the official code), else None."""
    found: dict[str, int] = {}
    for i, name in enumerate(names):
        tokens = {t for t in "".join(c if c.isalnum() else " " for c in name.lower()).split()}
        for colour in ("red", "green", "blue"):
            if colour in tokens:
                found.setdefault(colour, i)
    if len(found) == 3:
        return found["red"], found["green"], found["blue"]
    if len(names) >= 3 and not found:
        return 0, 1, 2
    return None


@dataclass(frozen=True)
class ViewPair:
    """Two views ``(C, S, S)`` float32 and their source-pixel ids ``(S, S)`` int64.

    A source id is ``row * W + col`` in the ``(C, H, W)`` tile; -1 marks an invalid source pixel.
    ``view0`` is view 2 before its photometric change (same geometry; used by ``adversarial``).
    """

    view1: np.ndarray
    view2: np.ndarray
    index1: np.ndarray
    index2: np.ndarray
    view0: np.ndarray


def make_view_pair(
    tile: np.ndarray,
    rng: np.random.Generator,
    size: int,
    config: ViewConfig | None = None,
    valid: np.ndarray | None = None,
    radiometry: Radiometry | None = None,
) -> ViewPair:
    """Draw GLCNet's two views of a normalised tile.

    Args:
        tile: ``(C, H, W)`` normalised image (any real dtype; computed in float32).
        rng: the only source of randomness.
        size: side ``S`` of the square views.
        config: augmentation parameters (paper defaults when None).
        valid: optional ``(H, W)`` bool mask; pixels outside it get id -1 (e.g. nodata).
        radiometry: the tiles' band statistics for the photometric change on raw values
            (None: :meth:`Radiometry.unit`).
    """
    config = config or ViewConfig()
    tile = np.asarray(tile, dtype=np.float32)
    if tile.ndim != 3:
        raise ValueError(f"make_view_pair needs a (C, H, W) tile, got shape {tile.shape}")
    _, h, w = tile.shape
    ids = np.arange(h * w, dtype=np.int64).reshape(h, w)
    if valid is not None:
        ids = np.where(valid, ids, -1)
    view1, index1 = _resized_crop(tile, ids, size, _crop_box(h, w, config, rng))
    view2, index2 = _resized_crop(tile, ids, size, _crop_box(h, w, config, rng))
    view0, index2 = _flip_rotate(view2, index2, config, rng)
    view2 = _photometric(view0, config, rng, radiometry or Radiometry.unit(len(tile)))
    return ViewPair(
        view1=np.ascontiguousarray(view1, dtype=np.float32),
        view2=np.ascontiguousarray(view2, dtype=np.float32),
        index1=np.ascontiguousarray(index1, dtype=np.int64),
        index2=np.ascontiguousarray(index2, dtype=np.int64),
        view0=np.ascontiguousarray(view0, dtype=np.float32),
    )


def sample_patches(
    index1: np.ndarray,
    index2: np.ndarray,
    patch_size: int,
    patch_num: int,
    rng: np.random.Generator,
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """Pick matched, non-overlapping ``patch_size`` boxes in two views (GLCNet local branch).

    Each pick is a source pixel visible in both views whose box, with the pixel at offset
    ``patch_size // 2`` from the box's top-left corner, lies inside each view. After a pick,
    every candidate whose box would overlap the chosen box in view 1 or in view 2 is dropped,
    so the boxes of one view never overlap. (The official code only drops candidates inside the
    chosen view-1 box, so its boxes can overlap by up to half; it also repeats picks when it runs
    out of room, where this returns fewer.)

    Args:
        index1, index2: ``(S, S)`` int64 source ids of the two views (-1 = none).
        patch_size: box side in view pixels, ``≤ S``.
        patch_num: number of boxes wanted.
        rng: the only source of randomness.
        allowed: optional ``(S, S)`` bool map of view 1; only boxes centred on a True pixel are
            picked (e.g. CLAWS's hard-attention mask).

    Returns:
        ``(patch_num, 4)`` int64 rows ``(y1, x1, y2, x2)``: top-left corners of the box in view 1
        and view 2; rows that could not be filled are -1.
    """
    half = patch_size // 2
    y1, x1, y2, x2 = _matched_centres(index1, index2, patch_size)
    out = np.full((patch_num, 4), -1, dtype=np.int64)
    alive = np.ones(y1.shape[0], dtype=bool) if allowed is None else allowed[y1, x1].astype(bool)
    for k in range(patch_num):
        candidates = np.flatnonzero(alive)
        if candidates.size == 0:
            break
        j = candidates[rng.integers(candidates.size)]
        out[k] = (y1[j] - half, x1[j] - half, y2[j] - half, x2[j] - half)
        overlaps1 = (np.abs(y1 - y1[j]) < patch_size) & (np.abs(x1 - x1[j]) < patch_size)
        overlaps2 = (np.abs(y2 - y2[j]) < patch_size) & (np.abs(x2 - x2[j]) < patch_size)
        alive &= ~(overlaps1 | overlaps2)
    return out


@dataclass(frozen=True)
class TwoViewSampler:
    """Dataset recipe for instance contrast: ``{"view1", "view2"}``, each ``(C, S, S)`` float32."""

    size: int
    views: ViewConfig = field(default_factory=ViewConfig)
    radiometry: Radiometry | None = None

    def __call__(
        self, tile: np.ndarray, rng: np.random.Generator, valid: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        pair = make_view_pair(tile, rng, self.size, self.views, valid, self.radiometry)
        return {"view1": pair.view1, "view2": pair.view2}


@dataclass(frozen=True)
class MatchedViewSampler:
    """Dataset recipe for GLCNet: the two views plus ``"patches"`` ``(P, 4)`` int64 boxes."""

    size: int
    patch_size: int
    patch_num: int
    views: ViewConfig = field(default_factory=ViewConfig)
    radiometry: Radiometry | None = None

    def __call__(
        self, tile: np.ndarray, rng: np.random.Generator, valid: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        pair = make_view_pair(tile, rng, self.size, self.views, valid, self.radiometry)
        patches = sample_patches(pair.index1, pair.index2, self.patch_size, self.patch_num, rng)
        return {"view1": pair.view1, "view2": pair.view2, "patches": patches}


def _crop_box(
    h: int, w: int, config: ViewConfig, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of a random-resized-crop box (torchvision's algorithm)."""
    area = h * w
    log_lo, log_hi = math.log(config.ratio[0]), math.log(config.ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*config.scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1)), ch, cw
    aspect = w / h
    if aspect < config.ratio[0]:
        cw, ch = w, min(h, round(w / config.ratio[0]))
    elif aspect > config.ratio[1]:
        ch, cw = h, min(w, round(h * config.ratio[1]))
    else:
        ch, cw = h, w
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _resized_crop(
    tile: np.ndarray, ids: np.ndarray, size: int, box: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``box`` and resize to ``size``: bilinear image, pixel-centre nearest id map."""
    top, left, h, w = box
    crop = torch.from_numpy(np.ascontiguousarray(tile[:, top : top + h, left : left + w]))
    shrink = h > size or w > size  # antialias only matters (and only costs) when shrinking
    view = F.interpolate(
        crop[None], size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
    )[0].numpy()
    centres = np.arange(size) + 0.5
    rows = top + np.floor(centres * h / size).astype(np.int64)
    cols = left + np.floor(centres * w / size).astype(np.int64)
    return view, ids[np.ix_(rows, cols)]


def _flip_rotate(
    view: np.ndarray, index: np.ndarray, config: ViewConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Flip from {horizontal, vertical, both, none, none}, then rot90 (p=rot90_p, k∈0..3)."""
    if config.flip:
        axes = [(-1,), (-2,), (-2, -1), (), ()][int(rng.integers(5))]
        if axes:
            view, index = np.flip(view, axes), np.flip(index, axes)
    if rng.random() < config.rot90_p:
        k = int(rng.integers(4))
        view, index = np.rot90(view, k, axes=(-2, -1)), np.rot90(index, k, axes=(-2, -1))
    return view, index


def _photometric(view: np.ndarray, config: ViewConfig, rng: np.random.Generator,
                 radiometry: Radiometry) -> np.ndarray:
    """Colour change on raw values (p = ``photometric_p``), band-copy grayscale, Gaussian blur."""
    bands = view.shape[0]
    if rng.random() < config.photometric_p:
        mean = np.asarray(radiometry.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(radiometry.std, dtype=np.float32)[:, None, None]
        white = np.asarray(radiometry.white, dtype=np.float32)[:, None, None]
        raw = view * std + mean
        if radiometry.rgb is not None:
            raw = _hsv_shift(raw, radiometry.rgb, white, config, rng)
        per_band = bands != 3 if config.per_band is None else config.per_band
        if per_band:
            raw = _band_change(raw, white, config, rng)
        if radiometry.clip:
            raw = np.clip(raw, 0, white)
        view = (raw - mean) / std
    if rng.random() < config.gray_p:
        view = np.repeat(view[int(rng.integers(bands))][None], bands, axis=0)
    if rng.random() < config.blur_p:
        view = _gaussian_blur(view, int(rng.choice(config.blur_kernels)))
    return view


def _hsv_shift(raw: np.ndarray, rgb: tuple[int, int, int], white: np.ndarray,
               config: ViewConfig, rng: np.random.Generator) -> np.ndarray:
    """Shift hue (wrapping), saturation and value of the ``rgb`` bands of ``raw`` ``(C, H, W)``.

    Shifts are drawn uniformly in ±``config.hue`` (OpenCV 0–180 units), ±``saturation`` and
    ±``value`` (0–255 units); each band is on a 0–255 scale of its ``white``.
    """
    idx = list(rgb)
    scale = white[idx]  # (3, 1, 1)
    image = np.clip(raw[idx] / scale, 0, None).transpose(1, 2, 0)  # (H, W, 3) RGB, white = 1
    hsv = cv2.cvtColor(np.ascontiguousarray(image, dtype=np.float32), cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0] + 2 * rng.uniform(-config.hue, config.hue)) % 360
    hsv[..., 1] = np.clip(hsv[..., 1] + rng.uniform(-config.saturation, config.saturation) / 255,
                          0, 1)
    hsv[..., 2] = np.clip(hsv[..., 2] + rng.uniform(-config.value, config.value) / 255, 0, None)
    out = raw.copy()
    out[idx] = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).transpose(2, 0, 1) * scale
    return out


def _band_change(raw: np.ndarray, white: np.ndarray, config: ViewConfig,
                 rng: np.random.Generator) -> np.ndarray:
    """Per band: brightness blend ``f ∈ 1 ± brightness`` (f > 1: ``x + (f−1)(white − x)``,
    else ``f·x``), contrast ``x·c``, ``c ∈ 1 ± contrast``; then salt (white) on ``salt`` of the
    pixels."""
    bands = raw.shape[0]
    f = rng.uniform(1 - config.brightness, 1 + config.brightness, (bands, 1, 1))
    c = rng.uniform(1 - config.contrast, 1 + config.contrast, (bands, 1, 1))
    raw = np.where(f > 1, raw + (f - 1) * (white - raw), f * raw) * c
    if config.salt > 0:
        salt = rng.random(raw.shape[1:]) < config.salt
        raw = np.where(salt[None], white, raw)
    return raw.astype(np.float32)


def _gaussian_blur(view: np.ndarray, kernel: int) -> np.ndarray:
    """Separable Gaussian blur per band, OpenCV's σ for the kernel size, reflect-101 edges."""
    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
    taps = np.exp(-0.5 * ((np.arange(kernel) - kernel // 2) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    r = kernel // 2
    _, h, w = view.shape
    padded = np.pad(view, ((0, 0), (r, r), (0, 0)), mode="reflect")
    view = sum(t * padded[:, i : i + h] for i, t in enumerate(taps))
    padded = np.pad(view, ((0, 0), (0, 0), (r, r)), mode="reflect")
    return sum(t * padded[:, :, i : i + w] for i, t in enumerate(taps))


def _matched_centres(
    index1: np.ndarray, index2: np.ndarray, patch_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Box centres ``(y1, x1, y2, x2)`` of every source pixel that fits a box in both views.

    A source pixel shown at several view pixels (upsampling) keeps its first position.
    """
    size = index1.shape[0]
    if patch_size > size:
        raise ValueError(f"patch_size {patch_size} exceeds the view size {size}")
    half = patch_size // 2
    last = size - patch_size + half  # largest centre whose box still fits
    positions = []
    for index in (index1, index2):
        inner = index[half : last + 1, half : last + 1]
        ids = inner.ravel()
        keep = np.flatnonzero(ids >= 0)
        unique, first = np.unique(ids[keep], return_index=True)
        rows, cols = np.divmod(keep[first], inner.shape[1])
        positions.append((unique, rows + half, cols + half))
    (u1, r1, c1), (u2, r2, c2) = positions
    _, i1, i2 = np.intersect1d(u1, u2, assume_unique=True, return_indices=True)
    return r1[i1], c1[i1], r2[i2], c2[i2]
