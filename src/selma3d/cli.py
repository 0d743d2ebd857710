"""The ``selma3d`` command. Each sub-command lives in ``selma3d.commands.<name>`` and
registers itself on :data:`app`; user errors (:class:`~selma3d.errors.Selma3dError`) are
printed on one line without a traceback."""

from __future__ import annotations

import importlib
import sys

import typer

from .errors import Selma3dError

app_typer = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                        help="selma3d: self-supervised LSM segmentation, SELMA3D-style.")

# One module per sub-command, each with a ``register(app)`` function.
COMMAND_MODULES = (
    "pretrain",
    "finetune",
    "predict",
    "synth",
    "evaluate",
    "leaderboard",
    "convert",
    "report",
    "demo",
    "study",
)

for _name in COMMAND_MODULES:
    importlib.import_module(f"selma3d.commands.{_name}").register(app_typer)


def app() -> None:
    """Console entry point."""
    try:
        # Without standalone mode typer *returns* the exit code of ``typer.Exit`` and turns Ctrl-C
        # into a returned 130 instead of raising; pass those codes on instead of exiting 0.
        code = app_typer(standalone_mode=False)
        if isinstance(code, int) and not isinstance(code, bool) and code != 0:
            if code == 130:
                typer.echo("interrupted", err=True)
            sys.exit(code)
    except Selma3dError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors and the like
        import click
        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise
