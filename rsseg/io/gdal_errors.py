"""GDAL and libtiff failures while writing a raster become one :class:`OutputError`.

GDAL reports a failed write in three ways, and only the first reached rsseg before:

- the call fails: rasterio raises a ``RasterioError``, a ``CPLE_*`` exception (not a
  ``RasterioError``) or, when GDAL returned an error without a message, ``SystemError``;
- the call "succeeds" but GDAL emitted an error: rasterio only logs it (logger ``rasterio``);
- libtiff's own I/O errors (``_tiffWriteProc: No space left on device.``): with GDAL's libtiff
  open options they go to libtiff's global handler, by default a ``fprintf`` to stderr, and the
  file is left truncated while every call succeeds.

:func:`gdal_write_errors` catches all three in the writing thread: a recording libtiff handler
(installed once, through ctypes, on the libtiff that GDAL loaded; it also keeps those lines off
the terminal) and a logging handler on ``rasterio`` collect the messages, and the block raises
one :class:`OutputError` naming the first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import rasterio
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError

from rsseg.errors import OutputError

_MAX_KEPT = 64
_failures: deque[tuple[int, int, str]] = deque(maxlen=_MAX_KEPT)  # (serial, thread, message)
_serial = 0
_guard = threading.Lock()
_handler_ref: list[object] = []  # keeps the ctypes callback alive


def _record(message: str) -> None:
    global _serial
    with _guard:
        _serial += 1
        _failures.append((_serial, threading.get_ident(), message.strip().rstrip(".")))


def _mark() -> int:
    with _guard:
        return _serial


def _since(mark: int) -> list[str]:
    """Messages recorded in this thread after ``mark``."""
    me = threading.get_ident()
    with _guard:
        return [m for serial, thread, m in _failures if serial > mark and thread == me]


class _RasterioErrors(logging.Handler):
    """GDAL errors (CE_Failure and worse) that rasterio logs instead of raising."""

    def emit(self, record: logging.LogRecord) -> None:
        _record(record.getMessage())


def _libtiff() -> ctypes.CDLL | None:
    """The libtiff that rasterio's GDAL uses (wheel-bundled, else the system's)."""
    here = Path(rasterio.__file__).parent
    bundled = sorted([*here.parent.glob("rasterio.libs/libtiff*"),
                      *here.glob(".dylibs/libtiff*")])
    for candidate in [*map(str, bundled), ctypes.util.find_library("tiff")]:
        if candidate:
            try:
                return ctypes.CDLL(candidate)
            except OSError:
                continue
    return None


def _install() -> None:
    """Install the recording handlers, once per process."""
    if _handler_ref:
        return
    handler = _RasterioErrors(level=logging.ERROR)
    logging.getLogger("rasterio").addHandler(handler)
    _handler_ref.append(handler)
    lib = _libtiff()
    if lib is None or not hasattr(lib, "TIFFSetErrorHandler") or sys.platform == "win32":
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                               ctypes.c_void_p]
    prototype = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)

    def on_error(module: bytes | None, fmt: bytes | None, args: int | None) -> None:
        text = ctypes.create_string_buffer(512)
        if fmt:
            libc.vsnprintf(text, len(text), fmt, args)
        prefix = f"{module.decode(errors='replace')}: " if module else ""
        _record(prefix + text.value.decode(errors="replace"))

    callback = prototype(on_error)
    lib.TIFFSetErrorHandler.argtypes = [prototype]
    lib.TIFFSetErrorHandler.restype = ctypes.c_void_p
    lib.TIFFSetErrorHandler(callback)
    _handler_ref.append(callback)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@contextmanager
def gdal_write_errors(path: str | Path, fix: str = "check free space and permissions of the "
                                                   "output folder") -> Iterator[None]:
    """Inside the block, any GDAL/libtiff/OS failure while writing ``path`` raises one
    :class:`OutputError` (the first message GDAL or libtiff gave, else the exception's)."""
    _install()
    mark = _mark()
    try:
        yield
    except (RasterioError, CPLE_BaseError, OSError, SystemError) as err:
        if isinstance(err, SystemError) and "GDAL" not in str(err):
            raise
        recorded = _since(mark)
        raise OutputError(f"cannot write {path} ({recorded[0] if recorded else _first_line(err)})",
                          _fix(recorded, err, fix)) from None
    recorded = _since(mark)
    if recorded:
        raise OutputError(f"cannot write {path} ({recorded[0]})", _fix(recorded, None, fix))


def _fix(recorded: list[str], err: BaseException | None, default: str) -> str:
    full = " ".join(recorded) + (str(err) if err else "")
    return "free space on that disk and run again" if "No space left" in full else default
