"""One error hierarchy: library code raises these, only the CLI catches and prints them.

Every error carries a one-line message naming the problem and, where there is one, the fix.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager


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


class Terminated(BaseException):
    """SIGTERM arrived (``kill``, a scheduler's time limit). Raised in the main thread like
    KeyboardInterrupt, so that atomic outputs clean up and training stops; not an ``Exception``,
    so no ``except Exception`` swallows it."""


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside the block, SIGTERM raises :class:`Terminated` in this process (call it from the
    main thread). Forked children (data-loader workers) keep the default: terminate at once."""
    main_pid = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != main_pid:  # a forked worker inherited this handler
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
