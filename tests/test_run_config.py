"""Runs as configs (issue 10 item 2): ``--config run.yaml`` gives the same resolved settings as the
same options typed as flags, flags override the file, a run folder's ``config.yaml`` repeats the
run, one spelling for one thing in every command. The training itself is replaced by a stand-in
that records the settings it was given (as the real one does) except in the one real round trip.
The hostile-input matrix holds the config files' error cases (unknown key, bad type, missing
file, not a mapping, not YAML)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import yaml

from cli_helpers import run_cli

TRAINING = ("pretrain", "finetune", "study")


# --------------------------------------------------------------------------------- stand-ins

@pytest.fixture
def fake_finetune(monkeypatch):
    """Replace the training of `selma3d finetune`: record the config and write run.json as the
    real run does (its ``training`` block), nothing else."""
    from selma3d.artifacts.run import RUN_FILE
    from selma3d.training import finetune as module

    seen = []

    def finetune(config, resume=False):
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        config = replace(config, data=str(Path(config.data).resolve()))
        seen.append(config)
        training = asdict(config) | {"patch_size": list(config.patch_size)}
        (out / RUN_FILE).write_text(json.dumps({"training": training}))
        return out

    monkeypatch.setattr(module, "finetune", finetune)
    return seen


@pytest.fixture
def fake_pretrain(monkeypatch):
    from selma3d.training import pretrain as module

    seen = []

    def run_pretraining(config, resume=False, given=None, callbacks=None):
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        config = module.replace(config, data=str(Path(config.data).resolve()))
        seen.append(config)
        saved = asdict(config) | {"percentiles": {}, "structures_seen": ["vessel"]}
        (out / module.CONFIG_NAME).write_text(json.dumps(saved, default=str))
        return out / module.ENCODER_NAME

    monkeypatch.setattr(module, "run_pretraining", run_pretraining)
    return seen


@pytest.fixture
def fake_study(monkeypatch):
    from selma3d.study import report, runner

    seen = []

    def run_study(plan, log=None):
        seen.append(plan)
        runner.check_study_folder(plan)  # writes plan.json, as the real study does first
        return runner.StudyRun(out=Path(plan.out), rows=[])

    monkeypatch.setattr(runner, "run_study", run_study)
    monkeypatch.setattr(report, "write_report", lambda out, rows, title="": {})
    monkeypatch.setattr(report, "text_summary", lambda analysis: "")
    return seen


def _without_out(config) -> dict:
    return {k: v for k, v in asdict(config).items() if k != "out"}


def _yaml(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------- finetune

FT_FLAGS = ["--max-steps", "7", "--patch-size", "16,32,32", "--structures", "cfos,vessel", "--lr", "0.002",
            "--model-option", "features=[4,8,16]", "--seed", "3", "--quiet", "--num-workers", "0",
            "--weight-decay", "0.001"]
FT_YAML = """\
max-steps: 7
patch_size: [16, 32, 32]
structures: [cfos, vessel]
lr: 0.002
model_option: {features: [4, 8, 16]}
seed: 3
quiet: true
num_workers: 0
weight_decay: 0.001
"""


def test_finetune_config_file_resolves_like_the_same_flags(tmp_path, tiny_dataset, fake_finetune,
                                                           monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "finetune", "--data", tiny_dataset, "--out", tmp_path / "a",
                           *FT_FLAGS)
    assert code == 0, err
    config = _yaml(tmp_path, FT_YAML + f"data: {tiny_dataset}\n")
    code, _, err = run_cli(monkeypatch, capsys, "finetune", "--config", config, "--out", tmp_path / "b")
    assert code == 0, err
    by_flags, by_file = fake_finetune
    assert _without_out(by_flags) == _without_out(by_file)
    assert by_file.patch_size == (16, 32, 32) and by_file.structures == ["cfos", "vessel"]
    assert by_file.model_options == {"features": [4, 8, 16]} and by_file.progress is False

    # each run folder records the resolved options as a --config file, the same for both
    recorded = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert recorded == yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    assert recorded["max_steps"] == 7 and recorded["patch_size"] == [16, 32, 32]
    assert "out" not in recorded and recorded["data"] == str(Path(tiny_dataset).resolve())
    # ... which repeats the run
    code, _, err = run_cli(monkeypatch, capsys, "finetune", "--config", tmp_path / "a" / "config.yaml",
                           "--out", tmp_path / "c")
    assert code == 0, err
    assert _without_out(fake_finetune[2]) == _without_out(by_flags)


def test_finetune_defaults_are_recorded_resolved(tmp_path, tiny_dataset, fake_finetune, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "finetune", "--data", tiny_dataset, "--out", tmp_path / "a")
    assert code == 0, err
    recorded = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert recorded["max_steps"] == 1000 and recorded["patch_size"] == [64, 64, 64]
    assert recorded["quiet"] is False and recorded["model_option"] == {}


def test_command_line_overrides_the_file(tmp_path, tiny_dataset, fake_finetune, monkeypatch, capsys):
    config = _yaml(tmp_path, FT_YAML + f"data: {tiny_dataset}\n")
    code, _, err = run_cli(monkeypatch, capsys, "finetune", "--config", config, "--out", tmp_path / "b",
                           "--max-steps", "2", "--patch-size", "16", "--model-option", "features=[8,16,32]")
    assert code == 0, err
    (seen,) = fake_finetune
    assert seen.max_steps == 2 and seen.patch_size == (16, 16, 16)
    assert seen.model_options == {"features": [8, 16, 32]}
    assert seen.lr == 0.002 and seen.seed == 3  # the file's, where no flag is given
    # the order of --config among the flags does not matter
    code, _, err = run_cli(monkeypatch, capsys, "finetune", "--max-steps", "2", "--out", tmp_path / "c",
                           "--config", config)
    assert code == 0, err
    assert fake_finetune[1].max_steps == 2 and fake_finetune[1].lr == 0.002


def test_null_in_the_file_means_the_default(tmp_path, tiny_dataset, fake_finetune, monkeypatch, capsys):
    config = _yaml(tmp_path, f"data: {tiny_dataset}\nmax_steps: null\nthreshold: null\n")
    code, _, err = run_cli(monkeypatch, capsys, "finetune", "--config", config, "--out", tmp_path / "a")
    assert code == 0, err
    assert fake_finetune[0].max_steps == 1000 and fake_finetune[0].threshold is None


# --------------------------------------------------------------------------------- pretrain, study

def _flags_file_and_record(monkeypatch, capsys, tmp_path, command, flags, config_text):
    """Run ``command`` three times: with ``flags`` (out a), with a config file of ``config_text``
    (out b), and with the ``config.yaml`` that run a recorded (out c); each must succeed."""
    code, _, err = run_cli(monkeypatch, capsys, command, *flags, "--out", tmp_path / "a")
    assert code == 0, err
    code, _, err = run_cli(monkeypatch, capsys, command, "--config", _yaml(tmp_path, config_text),
                           "--out", tmp_path / "b")
    assert code == 0, err
    code, _, err = run_cli(monkeypatch, capsys, command, "--config", tmp_path / "a" / "config.yaml",
                           "--out", tmp_path / "c")
    assert code == 0, err


def test_pretrain_config_file_resolves_like_the_same_flags(tmp_path, tiny_dataset, fake_pretrain,
                                                           monkeypatch, capsys):
    flags = ["--method", "byol", "--max-steps", "3", "--patch-size", "16x16x16", "--model-option",
             "features=4,8,16", "--method-option", "ema=0.9", "--structures", "vessel", "--quiet",
             "--num-workers", "0", "--fg-fraction", "0"]
    _flags_file_and_record(monkeypatch, capsys, tmp_path, "pretrain", ["--data", tiny_dataset, *flags],
                           f"method: byol\ndata: {tiny_dataset}\nmax_steps: 3\npatch-size: 16\n"
                           "model_option: {features: [4, 8, 16]}\nmethod_option: {ema: 0.9}\nstructures: vessel\n"
                           "quiet: true\nnum_workers: 0\nfg_fraction: 0\n")
    by_flags, by_file, repeated = fake_pretrain
    assert _without_out(by_flags) == _without_out(by_file) == _without_out(repeated)
    assert by_file.model_options == {"features": [4, 8, 16]} and by_file.patch_size == (16, 16, 16)


def test_study_config_file_resolves_like_the_same_flags(tmp_path, tiny_dataset, fake_study, monkeypatch, capsys):
    flags = ["--preset", "tiny", "--labels", "1,all", "--seeds", "0,1", "--structures", "cfos",
             "--steps", "3", "--patch-size", "16", "--model-option", "features=4,8,16", "--quiet"]
    _flags_file_and_record(monkeypatch, capsys, tmp_path, "study", ["--data", tiny_dataset, *flags],
                           f"data: {tiny_dataset}\npreset: tiny\nlabels: [1, all]\nseeds: [0, 1]\n"
                           "structures: [cfos]\nsteps: 3\npatch_size: 16\nmodel_option: {features: [4, 8, 16]}\n"
                           "quiet: true\n")
    plans = [{k: v for k, v in asdict(p).items() if k not in ("out", "data")} for p in fake_study]
    assert plans[0] == plans[1] == plans[2]
    assert fake_study[0].labels == [1, None] and fake_study[0].model_options["unet3d"] == {"features": [4, 8, 16]}


def test_study_patch_size_must_be_a_cube(tmp_path, tiny_dataset, fake_study, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "study", "--data", tiny_dataset, "--out", tmp_path / "s",
                           "--patch-size", "16,32,32")
    assert code == 1 and "--patch-size 16,32,32" in err and "cubic" in err and not fake_study


# --------------------------------------------------------------------------------- one spelling

def _command(name: str):
    import typer

    from selma3d.cli import app_typer

    return typer.main.get_command(app_typer).commands[name]


@pytest.mark.parametrize("name", TRAINING)
def test_training_commands_share_the_spelling(name):
    flags = {opt for p in _command(name).params if not getattr(p, "hidden", False) for opt in p.opts}
    assert {"--config", "--data", "--out", "--structures", "--patch-size", "--quiet", "--model-option",
            "--batch-size", "--num-workers"} <= flags


def test_config_option_on_predict():
    assert "--config" in {opt for p in _command("predict").params for opt in p.opts}


@pytest.mark.parametrize("text", ["16", "16,16,16", "16x16x16", "16 16 16", 16, [16, 16, 16]])
def test_one_size_format(text):
    from selma3d.utils.triples import parse_triple as parse_size

    assert parse_size(text, "--patch-size") == (16, 16, 16)
    assert parse_size("8,16,32", "--block-size") == (8, 16, 32)


@pytest.mark.parametrize("text", ["big", "0", "16,16", "-4", "16,16,16,16"])
def test_bad_sizes_are_one_clear_error(text):
    from selma3d.utils.triples import parse_triple as parse_size
    from selma3d.errors import InputError

    with pytest.raises(InputError, match=r"--patch-size expects N or Z,Y,X positive integers"):
        parse_size(text, "--patch-size")


# --------------------------------------------------------------------------------- --model-option lists

@pytest.mark.parametrize("value, expected", [
    ("4,8,16", [4, 8, 16]), ("[4,8,16]", [4, 8, 16]), ("[4, 8, 16]", [4, 8, 16]), ("8", 8),
    ("batch", "batch"), ("0.5,1", [0.5, 1]), ("'a,b'", "a,b"), ("true", True), ("a,b", ["a", "b"])])
def test_model_option_lists_in_comma_or_bracket_form(value, expected):
    from selma3d.commands.options import parse_options

    assert parse_options([f"features={value}"], "--model-option") == {"features": expected}


def test_finetune_model_option_comma_form(tmp_path, tiny_dataset, fake_finetune, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "finetune", "--data", tiny_dataset, "--out", tmp_path / "a",
                           "--model-option", "features=4,8,16")
    assert code == 0, err
    assert fake_finetune[0].model_options == {"features": [4, 8, 16]}


# --------------------------------------------------------------------------------- the real thing

@pytest.mark.usefixtures("one_torch_thread")
def test_real_finetune_repeated_from_its_config_yaml(tmp_path, tiny_dataset, monkeypatch, capsys):
    """A real (1-step) finetune, then again from RUN/config.yaml: the same training settings in
    run.json, the same config.yaml."""
    code, _, err = run_cli(monkeypatch, capsys, "finetune", "--data", tiny_dataset, "--out", tmp_path / "a",
                           "--max-steps", "1", "--patch-size", "16", "--model-option", "features=4,8,16",
                           "--structures", "cfos", "--val-fraction", "0", "--num-workers", "0", "--quiet",
                           "--threshold", "0.5")
    assert code == 0, err
    code, _, err = run_cli(monkeypatch, capsys, "finetune", "--config", tmp_path / "a" / "config.yaml",
                           "--out", tmp_path / "b")
    assert code == 0, err
    first, second = (json.loads((tmp_path / r / "run.json").read_text())["training"] for r in "ab")
    assert {k: v for k, v in first.items() if k != "out"} == {k: v for k, v in second.items() if k != "out"}
    assert (tmp_path / "a" / "config.yaml").read_text().replace(str(tmp_path / "a"), "") == \
        (tmp_path / "b" / "config.yaml").read_text().replace(str(tmp_path / "b"), "")


@pytest.mark.usefixtures("one_torch_thread")
def test_router_run_records_a_config_yaml_that_repeats_it(tmp_path, tiny_dataset, monkeypatch, capsys):
    """`finetune --router` writes config.yaml too; run again from it, the router trains the same."""
    code, _, err = run_cli(monkeypatch, capsys, "finetune", "--router", "--data", tiny_dataset, "--out",
                           tmp_path / "a", "--router-steps", "3", "--patch-size", "16", "--val-fraction", "0.5",
                           "--seed", "3", "--quiet")
    assert code == 0, err
    recorded = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert recorded["router"] is True and recorded["router_steps"] == 3 and recorded["seed"] == 3
    assert "batch_size" not in recorded  # the router does not use it: the file says only what it used
    code, _, err = run_cli(monkeypatch, capsys, "finetune", "--config", tmp_path / "a" / "config.yaml",
                           "--out", tmp_path / "b")
    assert code == 0, err
    first, second = (json.loads((tmp_path / r / "router.json").read_text()) for r in "ab")
    assert first == second and first["steps"] == 3 and first["crop_size"] == 16
