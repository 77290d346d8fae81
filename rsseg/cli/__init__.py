"""The ``rsseg`` command line: one module per command, all registered on one Typer app.

Library code raises :class:`rsseg.errors.RssegError`; :func:`main` turns it into a one-line
message on stderr and exit code 1 (2 for usage errors), never a traceback. Ctrl-C and SIGTERM
stop a command with one line and exit code 130/143 (:func:`rsseg.errors.stop_signals_raise`).
"""

from __future__ import annotations

import errno
import importlib
import signal
import sys
import warnings
from pathlib import Path

import typer

app = typer.Typer(
    name="rsseg",
    help="Remote-sensing semantic segmentation with few labels.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help texts are plain: "[default: 2]" must show, not vanish
)

@app.callback()
def _root() -> None:
    """Remote-sensing semantic segmentation with few labels."""


# Each module registers its command(s) on ``app`` when imported.
_COMMAND_MODULES = ("tile", "pretrain", "finetune", "predict", "evaluate", "info", "demo",
                    "methods", "vectorize", "export_onnx", "condense", "suggest")
for _name in _COMMAND_MODULES:
    importlib.import_module(f"rsseg.cli.{_name}")


# OS errors of the disk or the mount rather than of rsseg: one line, not a traceback
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM}


_RESUMABLE_COMMANDS = ("pretrain", "finetune")  # the commands with --resume


def _left_behind(checkpoint: Path | None = None) -> str:
    """What an interrupted command leaves: nothing partial; a training run that has a
    checkpoint adds how to continue it."""
    if checkpoint is None or not set(sys.argv[1:2]) & set(_RESUMABLE_COMMANDS):
        return "no partial output was left"
    return (f"no partial output was left; the run keeps its last finished epoch in {checkpoint} "
            "(continue it with --resume)")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings reach the user as one line ``Warning: message`` on stderr."""
    typer.echo(f"Warning: {message}", err=True)


def main() -> None:
    """Console-script entry point: run the app, print user errors and warnings as one line."""
    from rsseg.errors import RssegError, Stopped, stop_signals_raise

    warnings.showwarning = _show_warning
    try:
        with stop_signals_raise():
            # standalone: Typer prints usage errors itself (one line + usage, exit 2), whichever
            # click it bundles; exceptions of our own pass through
            app(standalone_mode=True, prog_name="rsseg")
    except RssegError as err:
        typer.echo(f"Error: {err}", err=True)
        sys.exit(err.exit_code)
    except Stopped as stop:  # Ctrl-C or SIGTERM (stop_signals_raise: never a KeyboardInterrupt)
        name = "Interrupted" if stop.signum == signal.SIGINT else "Stopped by SIGTERM"
        typer.echo(f"{name}; {_left_behind(stop.checkpoint)}.", err=True)
        sys.exit(stop.exit_code)
    except OSError as err:
        if err.errno not in _DISK_ERRNOS:
            raise
        where = f" ({err.filename})" if err.filename else ""
        typer.echo(f"Error: {err.strerror}{where}; check free space and permissions", err=True)
        sys.exit(1)
    except RuntimeError as err:
        if "DataLoader worker" not in str(err):
            raise
        # e.g. `pkill -f "rsseg pretrain"` reaches the workers before this process
        typer.echo(f"Error: a data-loading worker stopped ({str(err).strip().rstrip('.')}); "
                   f"{_left_behind(getattr(err, 'checkpoint', None))}.", err=True)
        sys.exit(1)
    except MemoryError as err:  # e.g. an absurd --size: numpy names the allocation
        typer.echo(f"Error: not enough memory ({str(err).strip() or 'allocation failed'}); "
                   "use smaller tiles, windows or batches", err=True)
        sys.exit(1)
