"""``--tile auto``: the largest prediction window whose activations and blending band fit
``--max-memory``.

Each scene pixel is computed ``(tile / (tile - overlap))²`` times (1.78× at tile 256, overlap 64;
1.13× at 1024), so on a CPU that runs the model at its convolution kernels' limit a larger window
is the one remaining lever besides precision. How large: the model's activations grow with the
window's pixels, so one probe forward pass (eval mode, a zero image of about 128², never the user's
data) measures the peak bytes of the tensors alive at once, every operator's output included (a
:class:`~torch.utils._python_dispatch.TorchDispatchMode` counts each output's storage until it is
freed), per window pixel. The largest multiple of the model's required multiple whose batch of
windows fits the budget beside the blending band (float32 class sums a window tall and the scene
wide, 204 MiB for 6 classes at 1088 × 8192) bounds the window, never smaller than the bundle's
tile, never larger than the scene (rounded up to the multiple) nor :data:`MAX_AUTO_TILE`. Below
that bound, down to half of it, the window is the one that computes the scene's pixels the fewest
times (:func:`window_work`): the last window row and column are shifted back inside the scene, so a
window a little smaller than the bound can save a whole row of windows (a 2048² scene: 1.27 at
1152², 1.06 at 1056²; 10,000²: 1.33 at 1152², 1.18 at 1088²). The overlap stays the bundle's (or
``--overlap``): the blending band does not need to grow with the window.
"""

from __future__ import annotations

import ctypes
import math
import re
import weakref
from functools import lru_cache

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from rsseg.errors import ConfigError
from rsseg.models.factory import ModelSpec, build_model
from rsseg.tiling.blend import layout

DEFAULT_MAX_MEMORY = 1 << 30  # bytes of activations per model call
MAX_AUTO_TILE = 2048  # a ceiling for small models, whose activations would allow more
PROBE_PIXELS = 128  # side of the probe image, rounded up to the model's multiple
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_memory(text: str | int, name: str = "--max-memory") -> int:
    """``"1G"``, ``"512M"``, ``"1.5GiB"``, ``"300MB"`` or a number of bytes → bytes (binary
    units: 1G = 1024³); a ConfigError for anything else."""
    if isinstance(text, int) and text > 0:
        return text
    found = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    value = int(float(found.group(1)) * _UNITS[found.group(2).lower()]) if found else 0
    if value < 1:
        raise ConfigError(f"{name} {text!r} is not an amount of memory",
                          f"use e.g. {name} 1G or 512M")
    return value


def format_bytes(value: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f} B"


class _PeakBytes(TorchDispatchMode):
    """Counts the storages of every operator's output while they are alive; keeps the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self.live:  # views and in-place results share a storage
            return
        self.live[key] = size
        self.now += size
        self.peak = max(self.peak, self.now)
        weakref.finalize(storage, self._drop, key)

    def _drop(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor):
                self.add(item)
        return out


def peak_activation_bytes(net: torch.nn.Module, x: torch.Tensor) -> int:
    """Peak bytes of the tensors alive at once while ``net`` (eval mode) runs on ``x``, the
    input included."""
    counter = _PeakBytes()
    with torch.inference_mode(), counter:
        counter.add(x)
        net(x)
    return counter.peak


@lru_cache(maxsize=16)
def _bytes_per_pixel(spec_json: str, multiple: int) -> float:
    spec = ModelSpec.model_validate_json(spec_json)
    torch.manual_seed(0)  # the weights do not matter, only the shapes: no bundle loaded
    net = build_model(spec).eval()
    side = multiple * math.ceil(PROBE_PIXELS / multiple)
    x = torch.zeros(1, spec.in_channels, side, side)
    return peak_activation_bytes(net, x) / side**2


def activation_bytes_per_pixel(spec: ModelSpec, multiple: int) -> float:
    """Peak activation bytes of one window pixel of the model ``spec`` in float32 (measured once
    per process and architecture)."""
    return _bytes_per_pixel(spec.model_dump_json(), multiple)


def auto_tile(per_pixel: float, batch: int, budget: int, multiple: int, bundle_tile: int,
              overlap: int, height: int, width: int, classes: int) -> int:
    """The window side (a multiple of ``multiple``) with the least :func:`window_work` among
    those from the largest whose ``batch`` windows (``per_pixel`` bytes per window pixel) and
    blending band (:func:`band_bytes`: ``classes`` float32 sums over the window's rows and the
    scene's ``width``) fit ``budget`` bytes together, down to half of it; at least the bundle's
    tile, at most the scene's longer side rounded up to ``multiple`` and :data:`MAX_AUTO_TILE`,
    always above ``overlap``. ConfigError (naming the minimum) when the budget cannot hold one
    batch of the smallest window and its band."""
    scene_side = multiple * math.ceil(max(height, width) / multiple)
    above_overlap = multiple * (overlap // multiple + 1)
    ceiling = max(min(scene_side, MAX_AUTO_TILE // multiple * multiple), above_overlap)
    floor = min(max(bundle_tile, above_overlap), ceiling)
    # the largest side s with a·s² + b·s ≤ budget: activations a·s², the band b·s
    a, b = batch * per_pixel, band_bytes(classes, width, 1)
    fits = int((math.sqrt(b * b + 4 * a * budget) - b) / (2 * a)) // multiple * multiple
    if fits < floor:
        need = a * floor**2 + band_bytes(classes, width, floor)
        raise ConfigError(
            f"--max-memory {format_bytes(budget)} is too small for one batch of {batch} "
            f"window(s) of {floor}² ({format_bytes(per_pixel)} of activations per pixel) and "
            f"its blending band: at least {format_bytes(need)} is needed",
            f"use --max-memory {math.ceil(need / (1 << 20))}M or more, a smaller --batch-size, "
            "or --tile N")
    largest = min(fits, ceiling)
    sides = range(largest, max(floor, largest // 2) - 1, -multiple)
    # the least work to a hundredth; of equals, the largest window (fewer, larger model calls)
    return min(sides, key=lambda side: (round(window_work(side, overlap, multiple, height, width),
                                              2), -side))


@lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (Linux), else None."""
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def trim_freed_memory() -> None:
    """On glibc (Linux), hand freed heap memory back to the system once 64 KiB of it is free,
    as Dask's workers do (``MALLOC_TRIM_THRESHOLD_=65536``), instead of glibc's dynamic
    threshold, which rises to 32 MiB per arena once large arrays have been freed and lets the
    blended bands' memory pile up: a 10,000² int8 prediction peaked at 2.06 GiB without it,
    1.76 GiB with it (docs/performance.md). Elsewhere nothing happens."""
    if (libc := _glibc()) is not None:
        libc.mallopt(-1, 65536)  # M_TRIM_THRESHOLD


def release_freed_memory() -> None:
    """On glibc, return the free pages of every heap arena to the system now
    (``malloc_trim(0)``), between two batches of windows. Where the dynamic threshold is left on
    (Dask's local workers, for speed: :mod:`rsseg.distributed`), the blocks one forward pass
    freed otherwise stay in the arenas of the model and prefetch threads, and which stay depends
    on how the threads interleave: a strip worker of a 6,144² scene peaked at 1,461–1,517 MiB
    without it, 1,407–1,449 MiB with it, at the same speed within noise (four alternating pairs,
    docs/performance.md). Elsewhere nothing happens."""
    if (libc := _glibc()) is not None:
        libc.malloc_trim(0)


def band_bytes(classes: int, width: int, rows: int) -> int:
    """Bytes of the blending band of a scene ``width`` wide and ``rows`` (a window) tall: the
    float32 sums of ``classes`` probabilities
    (:class:`~rsseg.inference.accumulate.RowBandAccumulator`)."""
    return 4 * classes * width * rows


def window_work(tile: int, overlap: int, multiple: int, height: int, width: int) -> float:
    """Window pixels computed per scene pixel by the layout of ``tile`` windows."""
    lay = layout(height, width, tile, overlap, multiple)
    return lay.count * lay.win_h * lay.win_w / (height * width)
