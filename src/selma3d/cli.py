"""The ``selma3d`` command. Each sub-command lives in ``selma3d.commands.<name>`` and
registers itself on :data:`app`; user errors (:class:`~selma3d.errors.Selma3dError`) are
printed on one line without a traceback, and warnings (e.g. the sampler's "no patch with >= 10 %
of voxels above ...") as one ``warning: <message>`` line, without Python's file:line prefix and
the source line it quotes."""

from __future__ import annotations

import contextlib
import errno
import importlib
import sys
import warnings

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
    "stats",
    "dataset",
    "export",
)

for _name in COMMAND_MODULES:
    importlib.import_module(f"selma3d.commands.{_name}").register(app_typer)


def format_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as the command line shows it: ``warning: <message>`` (the whole message; the
    file, line number and quoted source line are for developers, not for the user)."""
    return f"warning: {message}\n"


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` of the command: :func:`format_warning` on stderr."""
    stream = file if file is not None else sys.stderr
    if stream is None:  # no stderr (pythonw)
        return
    try:
        stream.write(format_warning(message, category, filename, lineno, line))
        stream.flush()
    except (OSError, ValueError):  # stderr closed or gone: nothing to tell the user on
        pass


@contextlib.contextmanager
def one_line_warnings():
    """Show warnings through :func:`show_warning` (and :func:`format_warning`, which logging's
    captured warnings use) while the command runs; the previous hooks come back afterwards.
    Loader worker processes forked meanwhile inherit the hooks."""
    saved = warnings.showwarning, warnings.formatwarning
    warnings.showwarning, warnings.formatwarning = show_warning, format_warning
    try:
        yield
    finally:
        warnings.showwarning, warnings.formatwarning = saved


def app() -> None:
    """Console entry point."""
    with one_line_warnings():
        _run()


def _run() -> None:
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
    except OSError as exc:
        # The environment refused a file operation (read-only disk, no permission, disk full):
        # the user's problem, not a bug; name the file and say what the system said.
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        typer.echo(f"error: {where}{exc.strerror or exc}", err=True)
        sys.exit(1)
    except Exception as exc:  # click usage errors and the like
        for module in _click_exception_modules():
            if isinstance(exc, module.ClickException):
                if isinstance(exc, module.UsageError) and exc.ctx is None:
                    exc.ctx = _command_context()  # some parser errors come without one: no usage line
                exc.show()
                sys.exit(exc.exit_code)
            abort = getattr(module, "Abort", None)  # typer._click (0.29) has none
            if abort is not None and isinstance(exc, abort):
                typer.echo("aborted", err=True)
                sys.exit(1)
        raise


#: OSError numbers that describe the user's environment rather than a bug in selma3d.
ENVIRONMENT_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT}


def _click_exception_modules() -> list:
    """The ``exceptions`` modules of every click the command may raise from.

    typer >= 0.29 vendors click as ``typer._click`` (its exceptions are *not* subclasses of the
    installed click's), older typer uses the installed ``click``; accept both, whichever exists."""
    modules = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            continue
    return modules


def _command_context():
    """A click context for the sub-command named on the command line (or the group), parsed
    leniently, so that a usage error raised without one still prints its ``Usage:`` line."""
    try:
        group = typer.main.get_command(app_typer)
        name = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
        parent = group.make_context("selma3d", [], resilient_parsing=True)
        command = group.get_command(parent, name) if name else None
        if command is None:
            return parent
        return command.make_context(name, [], parent=parent, resilient_parsing=True)
    except Exception:  # only decoration: the error message itself is printed regardless
        return None
