"""One error hierarchy: library code raises these, only the CLI catches and prints them.

Every error carries a one-line message naming the problem and, where there is one, the fix.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class RssegError(Exception):
    """Base of every error a user can cause; the CLI prints ``str(err)`` and exits 1."""

    exit_code = 1

    def __init__(self, message: str, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(f"{message} ({fix})" if fix else message)


class InputError(RssegError):
    """A file or value given by the user cannot be used (missing, corrupt, wrong shape...)."""


class OutputError(RssegError):
    """An output cannot be written (exists without --overwrite, folder not writable...)."""


class ConfigError(RssegError):
    """A configuration key or value is unknown or out of range."""


class UsageError(RssegError):
    """Flags that contradict each other; exit code 2 like other usage errors."""

    exit_code = 2


class Stopped(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM (``kill``, a scheduler's time limit) arrived. Raised in the main
    thread so that atomic outputs clean up and training stops; not an ``Exception``, so no
    ``except Exception`` swallows it, and not a KeyboardInterrupt, which Lightning turns into a
    silent exit 1."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.checkpoint: Path | None = None  # set by a training run that can be resumed

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Inside the block, SIGINT and SIGTERM raise :class:`Stopped` in this process (call it from
    the main thread). Forked children (data-loader workers) get the handlers they had before."""
    main_pid = os.getpid()
    previous = {}

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != main_pid:  # a forked worker inherited this handler
            signal.signal(signum, previous[signum])
            if callable(previous[signum]):
                previous[signum](signum, frame)
            elif previous[signum] == signal.SIG_DFL:
                os.kill(os.getpid(), signum)
            return
        raise Stopped(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)
