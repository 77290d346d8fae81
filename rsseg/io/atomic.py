"""Outputs appear atomically: write to a temporary sibling, rename into place on success."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rsseg.errors import OutputError


def check_output(path: str | Path, overwrite: bool) -> Path:
    """Refuse an existing output without ``overwrite`` and an unwritable parent folder."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputError(f"{path} already exists", "pass --overwrite to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not os.access(parent, os.W_OK):
        raise OutputError(f"output folder {parent} is not writable", "choose another --out")
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"{parent} is not a folder", "choose another --out")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; on success rename it onto ``path``.

    On any exception (including KeyboardInterrupt) the temporary file is removed, so nothing
    appears under the output name.
    """
    path = check_output(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + path.suffix,
                                   dir=path.parent)
    except OSError as err:
        raise OutputError(f"cannot write into {path.parent} ({err.strerror})",
                          "choose another --out") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Like :func:`atomic_path` for a whole output folder (e.g. a tile set)."""
    path = check_output(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part",
                                         dir=path.parent))
    except OSError as err:
        raise OutputError(f"cannot write into {path.parent} ({err.strerror})",
                          "choose another --out") from None
    try:
        yield tmp_path
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            shutil.rmtree(tmp_path)
