"""The ``rsseg`` command line: one module per command, all registered on one Typer app.

Library code raises :class:`rsseg.errors.RssegError`; :func:`main` turns it into a one-line
message on stderr and exit code 1 (2 for usage errors), never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(
    name="rsseg",
    help="Remote-sensing semantic segmentation with few labels.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Each module registers its command(s) on ``app`` when imported.
_COMMAND_MODULES = ("tile", "pretrain", "finetune", "predict", "evaluate", "info", "demo")
for _name in _COMMAND_MODULES:
    try:
        importlib.import_module(f"rsseg.cli.{_name}")
    except ModuleNotFoundError as _err:  # a command not written yet must not break the others
        if _err.name != f"rsseg.cli.{_name}":
            raise


def main() -> None:
    """Console-script entry point: run the app, print user errors as one line."""
    from rsseg.errors import RssegError

    try:
        app(standalone_mode=False)
    except RssegError as err:
        typer.echo(f"Error: {err}", err=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        typer.echo("Interrupted; no partial output was left.", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as err:  # click usage errors etc.
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            sys.exit(err.exit_code)
        if isinstance(err, click.exceptions.Abort):
            sys.exit(1)
        raise
