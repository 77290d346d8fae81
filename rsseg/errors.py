"""One error hierarchy: library code raises these, only the CLI catches and prints them.

Every error carries a one-line message naming the problem and, where there is one, the fix.
"""

from __future__ import annotations


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
