"""Several output files that appear together: staged as temporary siblings, renamed at the end.

``rsseg predict`` writes a class raster and, on request, its style sidecars, a confidence raster,
a probability stack, polygons and a quicklook. Each is written to a temporary sibling of its
output (:meth:`Publication.stage`); only when every one is complete are they renamed into place
(:meth:`Publication.commit`), the primary output (the class raster) last, so once it is there
everything is. On any failure, Ctrl-C included, every temporary file and every folder the run
created is removed: nothing appears under an output name. Each output name is locked while it is
staged (:func:`rsseg.io.locks.output_lock`), and every file is flushed to disk before the renames,
so a full disk fails the run instead of leaving a truncated output.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from rsseg.errors import OutputError
from rsseg.io.atomic import check_output, fsync_file, umask
from rsseg.io.locks import output_lock, part_prefix


class Publication:
    """Temporary files staged for their outputs; see the module docstring.

    ``lock=False`` (a cache, where concurrent writers write the same bytes) stages without
    locking the output names.
    """

    def __init__(self, lock: bool = True) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (temporary, output), primary first
        self._primaries = 0
        self._removals: list[Path] = []
        self._created: list[Path] = []  # folders this publication created, deepest first
        self._locks = ExitStack()
        self._lock = lock
        self._locked: set[Path] = set()
        self.committed = False

    @property
    def outputs(self) -> list[Path]:
        return [final for _, final in self._staged]

    def stage(self, path: str | Path, overwrite: bool = False, primary: bool = False) -> Path:
        """A new temporary sibling of ``path`` (same suffix) that :meth:`commit` renames onto it.

        ``primary`` outputs are renamed after all the others.

        Raises :class:`OutputError` when ``path`` exists without ``overwrite``, is staged twice,
        is being written by another run, or its folder cannot be written.
        """
        path = check_output(path, overwrite, file=True)
        if path.absolute() in (p.absolute() for p in self.outputs):
            raise OutputError(f"{path} is given for two outputs", "give each output its own name")
        self.lock(path)
        try:
            fd, name = tempfile.mkstemp(prefix=part_prefix(path), suffix=".part" + path.suffix,
                                        dir=path.parent)
        except OSError as err:
            raise OutputError(f"cannot write into {path.parent} ({err.strerror})",
                              "choose another output folder") from None
        os.close(fd)
        self._staged.insert(self._primaries if primary else len(self._staged), (Path(name), path))
        self._primaries += primary
        return Path(name)

    def lock(self, path: str | Path) -> None:
        """Create ``path``'s folder (removed again if the run fails) and take the lock on the
        output name ``path`` (:meth:`stage` does it too): the primary output's before its
        sidecars', so that a clash names the primary output."""
        path = Path(path)
        missing = [p for p in path.absolute().parents if not p.exists()]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"cannot write into {path.parent} ({err.strerror})",
                              "choose another output folder") from None
        self._created = [*missing, *self._created]
        if self._lock and path.absolute() not in self._locked:
            self._locks.enter_context(output_lock(path))
            self._locked.add(path.absolute())

    def write(self, path: str | Path, data: str | bytes, overwrite: bool = False) -> Path:
        """Stage ``path`` and write ``data`` (text as UTF-8) into its temporary file."""
        tmp = self.stage(path, overwrite)
        try:
            tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        except OSError as err:
            raise OutputError(f"cannot write {path} ({err.strerror})",
                              "check free space and permissions of the output folder") from None
        return tmp

    def remove_on_commit(self, path: str | Path) -> None:
        """Delete ``path`` (e.g. a stale sidecar of a replaced output) when committing."""
        self._removals.append(Path(path))

    def commit(self) -> list[Path]:
        """Rename every staged file onto its output, primaries last; returns the outputs."""
        mode = 0o666 & ~umask()  # mkstemp creates 0600; outputs are ordinary files
        for tmp, final in self._staged:
            try:
                fsync_file(tmp)
            except OSError as err:
                raise OutputError(f"cannot write {final} ({err.strerror})",
                                  "check free space and permissions of the output folder"
                                  ) from None
        try:
            for stale in self._removals:
                stale.unlink(missing_ok=True)
            for tmp, final in reversed(self._staged):
                os.chmod(tmp, mode)
                os.replace(tmp, final)
        except OSError as err:
            raise OutputError(f"cannot publish the outputs ({err.strerror}: {err.filename})",
                              "check free space and permissions of the output folder") from None
        self.committed = True
        return self.outputs

    def discard(self) -> None:
        """Remove the temporary files that were not published, release the output names and
        remove the folders created empty."""
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._locks.close()
        if not self.committed:
            for folder in self._created:
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()


@contextmanager
def publishing(publication: Publication | None = None, lock: bool = True
               ) -> Iterator[Publication]:
    """A :class:`Publication` committed when the block succeeds, discarded whatever happens.

    Given an existing ``publication``, yields it untouched: its owner commits it.
    """
    if publication is not None:
        yield publication
        return
    publication = Publication(lock)
    try:
        yield publication
        publication.commit()
    finally:
        publication.discard()
