"""One writer per output name, and no stale partial files.

Every output (file or folder) is written under an advisory lock on its name
(:func:`output_lock`: ``fcntl.flock`` on ``.NAME.lock`` beside it), so a second run writing the
same output fails at once with one line instead of silently replacing the first one's result.
Partial files are named ``.NAME.<pid>-<random>.part...`` (:func:`part_prefix`); a run killed
with ``kill -9`` cannot remove its own, so the next run that takes the lock on the same name
removes those whose process is gone, and says so.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from rsseg.errors import OutputError

LOCK_SUFFIX = ".lock"


def lock_path(path: Path) -> Path:
    """The lock file of the output ``path``: ``.NAME.lock`` in the same folder."""
    return path.parent / f".{path.name}{LOCK_SUFFIX}"


def part_prefix(path: Path) -> str:
    """Prefix of this process's partial files of ``path`` (``mkstemp(prefix=...)``)."""
    return f".{path.name}.{os.getpid()}-"


def _parts_pattern(path: Path) -> re.Pattern[str]:
    """Partial files of ``path`` by any process; group 1 is the writer's PID."""
    return re.compile(rf"\.{re.escape(path.name)}\.(\d+)-[A-Za-z0-9_]+\..*part(\..+)?")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_parts(path: Path) -> list[Path]:
    """Remove the partial files of ``path`` whose writing process is gone; return them.

    Call it holding :func:`output_lock` on ``path``: no live rsseg run is then writing it.
    """
    pattern = _parts_pattern(path)
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return []
    removed = []
    for entry in sorted(entries):
        match = pattern.fullmatch(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    return removed


@contextmanager
def output_lock(path: str | Path) -> Iterator[None]:
    """Hold the advisory lock on the output name ``path`` for the block (its folder must exist).

    Raises :class:`OutputError` naming the other run's PID when another process holds it. On
    taking it, partial files left by dead runs of the same output are removed with a warning.
    A filesystem without locks (some network mounts) gets a warning and no lock.
    """
    path = Path(path)
    lock = lock_path(path)
    fd = _acquire(path, lock)
    if fd is None:
        yield
        return
    try:
        stale = remove_stale_parts(path)
        if stale:
            warnings.warn(f"removed {len(stale)} partial file(s) of {path} left by an interrupted "
                          f"run: {', '.join(p.name for p in stale)}", UserWarning, stacklevel=3)
        yield
    finally:
        try:
            if _same_file(fd, lock):
                lock.unlink()
        except OSError:
            pass
        os.close(fd)


def _acquire(path: Path, lock: Path) -> int | None:
    """The open, locked lock file (retried when it was replaced meanwhile); None without locks."""
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise OutputError(f"cannot write into {path.parent} ({err.strerror})",
                              "choose another output folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            pid = f" (pid {owner})" if owner.isdigit() else ""
            raise OutputError(f"{path} is being written by another rsseg run{pid}",
                              "wait for it to finish or choose another output") from None
        except OSError:
            os.close(fd)
            warnings.warn(f"cannot lock {lock} on this filesystem: a concurrent run writing "
                          f"{path} would not be detected", UserWarning, stacklevel=4)
            return None
        if _same_file(fd, lock):  # not unlinked by a previous holder between open and flock
            with suppress(OSError):  # the PID only names the holder (a full disk may refuse it)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False
