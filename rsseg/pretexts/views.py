"""Two augmented views of one tile with pixel correspondence (GLCNet, Li et al., TGRS 2022, §III-B).

Both views are a random resized crop of the tile; view 2 alone is then flipped, rotated by a
multiple of 90°, photometrically changed, band-copied ("grayscale") and blurred. Every geometric
step is applied to a map of source-pixel ids as well (nearest resampling), so each view pixel
knows which tile pixel it shows. The photometric steps are per-band and work on normalised
float32 arrays, hence for any band count and any source dtype.

Runs in DataLoader workers: numpy in, numpy out, randomness only from the given Generator.

Deviations from the official code (GeoX-Lab/G-RSIM, ``T-SS-GLCNet/utils/data_for_self_GLCNet.py``):
crop aspect ratios are log-uniform (torchvision) instead of uniform with a random swap; the image
is resized bilinearly (antialiased when shrinking) and the id map with exact pixel-centre nearest
(cv2's INTER_NEAREST is half a pixel off); the photometric change is per-band contrast ×U(1±c)
and brightness +U(±b) in normalised units, never an HSV shift (band semantics are unknown), and
without the official salt noise; patches never overlap in either view (see ``sample_patches``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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
    brightness: float = Field(0.1, ge=0, le=1)
    contrast: float = Field(0.1, ge=0, lt=1)
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
) -> ViewPair:
    """Draw GLCNet's two views of a normalised tile.

    Args:
        tile: ``(C, H, W)`` normalised image (any real dtype; computed in float32).
        rng: the only source of randomness.
        size: side ``S`` of the square views.
        config: augmentation parameters (paper defaults when None).
        valid: optional ``(H, W)`` bool mask; pixels outside it get id -1 (e.g. nodata).
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
    view2 = _photometric(view0, config, rng)
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

    def __call__(
        self, tile: np.ndarray, rng: np.random.Generator, valid: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        pair = make_view_pair(tile, rng, self.size, self.views, valid)
        return {"view1": pair.view1, "view2": pair.view2}


@dataclass(frozen=True)
class MatchedViewSampler:
    """Dataset recipe for GLCNet: the two views plus ``"patches"`` ``(P, 4)`` int64 boxes."""

    size: int
    patch_size: int
    patch_num: int
    views: ViewConfig = field(default_factory=ViewConfig)

    def __call__(
        self, tile: np.ndarray, rng: np.random.Generator, valid: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        pair = make_view_pair(tile, rng, self.size, self.views, valid)
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


def _photometric(view: np.ndarray, config: ViewConfig, rng: np.random.Generator) -> np.ndarray:
    """Per-band contrast/brightness, band-copy grayscale and Gaussian blur, each at random."""
    bands = view.shape[0]
    if rng.random() < config.photometric_p:
        contrast = rng.uniform(1 - config.contrast, 1 + config.contrast, size=(bands, 1, 1))
        brightness = rng.uniform(-config.brightness, config.brightness, size=(bands, 1, 1))
        view = view * contrast.astype(np.float32) + brightness.astype(np.float32)
    if rng.random() < config.gray_p:
        view = np.repeat(view[int(rng.integers(bands))][None], bands, axis=0)
    if rng.random() < config.blur_p:
        view = _gaussian_blur(view, int(rng.choice(config.blur_kernels)))
    return view


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
