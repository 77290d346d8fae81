"""Outputs appear atomically: write to a temporary sibling, rename into place on success.

Every output is written under :func:`rsseg.io.locks.output_lock` (one writer per name; stale
partial files of dead runs removed); ``--overwrite`` replaces a file, or a folder only when it
is an rsseg output of the same kind holding none of the run's inputs (:mod:`rsseg.io.owned`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rsseg.errors import OutputError
from rsseg.io.locks import output_lock, part_prefix
from rsseg.io.owned import Layout, check_replaceable


def check_output(path: str | Path, overwrite: bool, file: bool = False) -> Path:
    """Refuse an existing output without ``overwrite`` and an unwritable parent folder; a
    ``file`` output also when a folder has its name (``--overwrite`` replaces files only)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputError(f"{path} already exists", "pass --overwrite to replace it")
    if file and path.is_dir():
        raise OutputError(f"{path} is a folder; --overwrite replaces files only",
                          "choose another output name")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not os.access(parent, os.W_OK):
        raise OutputError(f"output folder {parent} is not writable", "choose another --out")
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"{parent} is not a folder", "choose another --out")
    return path


def umask() -> int:
    """The process umask (new files get ``0o666 & ~umask``, folders ``0o777 & ~umask``)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_file(path: Path) -> None:
    """Flush ``path`` to disk: a full disk or a failing network mount shows up here, before the
    rename, rather than as a truncated output later (OSError)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot write into {path.parent} ({err.strerror})",
                          "choose another --out") from None


@contextmanager
def atomic_path(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; on success rename it onto ``path``.

    On any exception (including KeyboardInterrupt) the temporary file is removed, so nothing
    appears under the output name.
    """
    path = check_output(path, overwrite, file=True)
    _make_parent(path)
    with output_lock(path):
        try:
            fd, tmp = tempfile.mkstemp(prefix=part_prefix(path), suffix=".part" + path.suffix,
                                       dir=path.parent)
        except OSError as err:
            raise OutputError(f"cannot write into {path.parent} ({err.strerror})",
                              "choose another --out") from None
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            yield tmp_path
            try:
                fsync_file(tmp_path)
                os.chmod(tmp_path, 0o666 & ~umask())  # mkstemp creates 0600
                os.replace(tmp_path, path)
            except OSError as err:
                raise OutputError(f"cannot write {path} ({err.strerror})",
                                  "check free space and permissions of the output folder"
                                  ) from None
        finally:
            tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path, overwrite: bool, layout: Layout,
               inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Like :func:`atomic_path` for a whole output folder of ``layout`` (e.g. a tile set).

    An existing folder is replaced only when :func:`~rsseg.io.owned.check_replaceable` accepts
    it (checked before and again at the end, just before the old folder goes); the new folder
    gets ordinary permissions (``0o777 & ~umask``).
    """
    path = check_output(path, overwrite)
    inputs = list(inputs)
    _make_parent(path)
    with output_lock(path):
        if path.exists():
            check_replaceable(path, layout, inputs)
        try:
            tmp_path = Path(tempfile.mkdtemp(prefix=part_prefix(path), suffix=".part",
                                             dir=path.parent))
            os.chmod(tmp_path, 0o777 & ~umask())  # mkdtemp creates 0700
        except OSError as err:
            raise OutputError(f"cannot write into {path.parent} ({err.strerror})",
                              "choose another --out") from None
        old = tmp_path.with_name(tmp_path.name + ".old.part")
        try:
            yield tmp_path
            if path.exists():
                check_replaceable(path, layout, inputs)
            _swap_in(tmp_path, path, old)
        finally:
            shutil.rmtree(tmp_path, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)


def _swap_in(new: Path, path: Path, old: Path) -> None:
    """Rename the folder ``new`` onto ``path``; an existing ``path`` is moved to ``old`` first
    and put back if the rename fails."""
    try:
        if path.exists():
            os.replace(path, old)
        try:
            os.replace(new, path)
        except OSError:
            if old.exists():
                os.replace(old, path)
            raise
    except OSError as err:
        raise OutputError(f"cannot replace {path} ({err.strerror})",
                          "check the permissions of its folder") from None
