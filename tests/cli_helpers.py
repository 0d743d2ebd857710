"""Running the ``selma3d`` console entry point in-process, as a user's shell would."""

from __future__ import annotations

import sys


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``selma3d ARGS`` through :func:`selma3d.cli.app`."""
    from selma3d import cli

    monkeypatch.setattr(sys, "argv", ["selma3d", *map(str, args)])
    code = 0
    try:
        cli.app()
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err
