"""Usage errors of every command print click's usage message and exit 2, never a traceback, with
whatever click typer really uses (typer >= 0.29 vendors its own as ``typer._click``); and a CLI
smoke run. Marked ``drift``: `make test-latest` runs these against the newest dependencies."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from selma3d.cli import app_typer

pytestmark = pytest.mark.drift

COMMANDS = sorted(command.name or command.callback.__name__ for command in app_typer.registered_commands)


def selma3d_command() -> list[str]:
    """The installed console script (what a user runs), else ``python -m selma3d``."""
    script = Path(sys.executable).with_name("selma3d")
    return [str(script)] if script.exists() else [sys.executable, "-m", "selma3d"]


def run(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*selma3d_command(), *map(str, args)], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def assert_usage_error(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("Usage: ") and lines[-1].startswith("Error: "), result.stderr
    for text in expected:
        assert text in lines[-1], result.stderr


def test_every_command_is_covered():
    assert set(COMMANDS) >= {"convert", "demo", "evaluate", "finetune", "leaderboard", "predict", "pretrain",
                             "report", "synth"}


@pytest.mark.parametrize("command", COMMANDS)
def test_unknown_option_is_a_usage_error(command):
    assert_usage_error(run(command, "--no-such-option-xyz"), "No such option", "--no-such-option-xyz")


def test_unknown_command_and_bad_values_are_usage_errors():
    assert_usage_error(run("frobnicate"), "No such command")
    assert_usage_error(run("synth", "x", "--seed", "abc"), "'--seed'")
    assert_usage_error(run("predict"), "Missing")


def test_handled_click_is_the_one_typer_raises():
    """The exception classes the CLI catches include those typer's parser really raises."""
    from typer.testing import CliRunner

    from selma3d.cli import _click_exception_modules

    result = CliRunner().invoke(app_typer, ["synth", "--no-such-option-xyz"], standalone_mode=False)
    assert result.exception is not None
    assert any(isinstance(result.exception, m.ClickException) for m in _click_exception_modules())


def test_cli_smoke_run(tmp_path):
    """synth → convert → evaluate → report through the console script, each exit 0."""
    data = tmp_path / "data"
    assert run("synth", data, "--preset", "tiny", "--quiet").returncode == 0
    volume = sorted((data / "unannotated" / "vessel").iterdir())[0]
    converted = run("convert", volume, tmp_path / "v.zarr", "--chunks", "32")
    assert converted.returncode == 0, converted.stderr
    assert json.loads((tmp_path / "v.zarr" / "zarr.json").read_text())["attributes"]["selma3d"]["verified"]
    pred = tmp_path / "pred"
    shutil.copytree(data / "annotated" / "final_test" / "cfos", pred)
    for image in pred.glob("*_img.nii.gz"):
        image.unlink()
    evaluated = run("evaluate", pred, data / "annotated" / "final_test" / "cfos", "--out", tmp_path / "m.json",
                    "--quiet")
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["cases"] and all(case["dice"] == 1.0 for case in metrics["cases"])
    reported = run("report", tmp_path / "m.json", "--out", tmp_path / "report")
    assert reported.returncode == 0, reported.stderr
    assert (tmp_path / "report" / "index.html").is_file()


def test_a_genuine_bug_keeps_its_own_traceback(monkeypatch):
    """An unexpected exception is re-raised as itself: the usage-error filter must not replace it
    with an error of its own (typer 0.29's vendored click has no ``Abort``)."""
    import selma3d.cli as cli

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "app_typer", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.app()


def test_pretrain_spells_structures_and_quiet_like_the_other_commands():
    """``--structures a,b`` and ``--quiet`` as in finetune and study; the old ``--structure`` and
    ``--no-progress`` still work for one release, hidden from the help."""
    from typer.testing import CliRunner

    from selma3d.commands.pretrain import _structure_list

    assert _structure_list("cfos, vessel", None) == ["cfos", "vessel"]
    assert _structure_list(None, ["cfos", "vessel", "cfos"]) == ["cfos", "vessel"]
    assert _structure_list("cfos", ["vessel"]) == ["cfos", "vessel"] and _structure_list(None, None) is None
    text = CliRunner().invoke(app_typer, ["pretrain", "--help"], env={"COLUMNS": "200"}).output
    assert "--structures" in text and "--quiet" in text
    assert "--no-progress" not in text and "--structure " not in text


def test_a_warning_is_one_line_and_the_hooks_come_back(monkeypatch, capsys):
    """Inside a command a warning prints as ``warning: <message>`` (all of it, no file:line, no
    quoted source line); after the command Python's own hooks are back."""
    import warnings

    import selma3d.cli as cli

    before = warnings.showwarning, warnings.formatwarning

    def command(*args, **kwargs):
        warnings.warn("volume v: something odd\nsecond line", RuntimeWarning, stacklevel=2)
        return 0

    monkeypatch.setattr(cli, "app_typer", command)
    cli.app()
    assert capsys.readouterr().err == "warning: volume v: something odd\nsecond line\n"
    assert (warnings.showwarning, warnings.formatwarning) == before


def test_the_samplers_warning_reaches_the_user_as_one_line(tiny_dataset, tmp_path):
    result = run("pretrain", "--method", "inpainting", "--data", tiny_dataset, "--out", tmp_path / "run",
                 "--max-steps", "1", "--patch-size", "16", "--batch-size", "2", "--model-option", "features=[4,8,16]",
                 "--num-workers", "1", "--health-every", "0", "--fg-threshold", "1000000", "--quiet")
    assert result.returncode == 0, result.stderr
    dim = [line for line in result.stderr.splitlines() if "no patch with" in line]
    assert dim, result.stderr
    for line in dim:  # from the loader worker process: the hook is inherited
        assert re.fullmatch(r"warning: \w+/\w+: no patch with >= 10% of voxels above 1000000\.0 in 20 tries; "
                            r"using the most foreground-rich one \(\d+\.\d%\)\. Lower --fg-threshold/--fg-fraction "
                            r"if this volume is dim\.", line), line
    assert "sampling.py" not in result.stderr and "RuntimeWarning" not in result.stderr
    assert "sample_from" not in result.stderr
