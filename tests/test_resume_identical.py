"""Killed with SIGKILL right after a checkpoint and resumed, a run ends bit-identical to the run
that was never interrupted (issue 12, item 16): the same loss curve, the same weights
(``torch.equal``), the same JSON/CSV files, whatever the number of loader workers.

The uninterrupted run trains in this process. In the slow tests the killed one is a real
``selma3d`` process that ``SELMA3D_TEST_KILL_AFTER_STEP`` makes ``kill -9`` itself once the
checkpoint of that step is on disk (selma3d.training.determinism.kill_point), and the resume is
the user's ``--resume`` command; the fast tests crash the run in this process at the same point
(an exception instead of the kill: the files on disk are the same) and resume it here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import torch

from selma3d.training.determinism import KILL_ENV

# tiny networks of each family (as in test_ssl.py)
TINY_PRETRAIN = {
    "byol": {"model_options": {"features": [4, 8, 16]}, "method_options": {"hidden_dim": 32, "projection_dim": 16}},
    "dino": {"model_options": {"patch_size": 4, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "mlp_dim": 64,
                               "decoder_channels": 4},
             "method_options": {"out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 16, "local_crops": 2,
                                "base_momentum": 0.9}},
    "inpainting": {"model_options": {"features": [4, 8, 16]}, "method_options": {}},
}
STEPS, EVERY, KILL_AT = 5, 2, 2
#: SSL health (its linear probe costs seconds) only where the test is about it: BYOL, at step 0
#: (inside the killed run's checkpoint) and at the end (after the resume)
HEALTH_EVERY = {"byol": STEPS, "dino": 0, "inpainting": 0}
#: fields that may differ between the two runs without touching the result
RUN_ONLY = {"out", "num_workers", "progress", "versions"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def test_seed_step_seeds_like_manual_seed_without_its_stack_traces(monkeypatch):
    """Every step is seeded (what makes a resume bit-identical), so the seeding must be cheap:
    the same draws as ``torch.manual_seed``, without the formatted stack trace it records per
    missing device type (~0.2-0.6 ms a step on a CPU machine)."""
    import random
    import traceback

    import numpy as np

    from selma3d.training.determinism import STEP_STREAM, derived_seed, seed_step

    value = derived_seed(3, STEP_STREAM, 1, 7)
    torch.manual_seed(value)
    expected = torch.rand(5), torch.randn(3)
    np.random.seed(value % 2**32)
    expected_np = np.random.rand(4)
    random.seed(value)
    expected_py = random.random()

    def no_stack(*args, **kwargs):
        raise AssertionError("seed_step formatted a stack trace")

    monkeypatch.setattr(traceback, "format_stack", no_stack)
    seed_step(3, 7, 1)
    assert torch.equal(torch.rand(5), expected[0]) and torch.equal(torch.randn(3), expected[1])
    assert np.array_equal(np.random.rand(4), expected_np) and random.random() == expected_py


def selma3d(*args, cwd: Path, kill_after: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop(KILL_ENV, None)
    if kill_after is not None:
        env[KILL_ENV] = str(kill_after)
    return subprocess.run([sys.executable, "-m", "selma3d", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def differences(a, b, where: str = "") -> list[str]:
    """Paths at which two nested structures (dicts, lists, tensors, numbers) differ, bit for bit;
    keys in RUN_ONLY are skipped."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}/{k}: only in one" for k in set(a) ^ set(b) if k not in RUN_ONLY]
        for key in sorted(set(a) & set(b) - RUN_ONLY, key=str):
            out += differences(a[key], b[key], f"{where}/{key}")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    if torch.is_tensor(a) and torch.is_tensor(b):
        same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [f"{where}: tensors differ (max {float((a.double() - b.double()).abs().max()):.3g})"]
    return [] if a == b or (a != a and b != b) else [f"{where}: {a!r} != {b!r}"]


def load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_checkpoint(a: Path, b: Path) -> None:
    first, second = load(a), load(b)
    assert first["global_step"] == second["global_step"] == STEPS
    # weights (EMA target/teacher, DINO centers and every buffer), optimizer, scheduler, histories
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "callbacks", "loss_history", "rng_state"):
        if key in first or key in second:
            assert differences(first.get(key), second.get(key), key) == []


class Crash(Exception):
    """The in-process stand-in for the kill, raised where the kill would happen."""


def crash_after(step: int):
    def kill_point(done: int) -> None:
        if done == step:
            raise Crash(f"crashed right after checkpoint {step}")
    return kill_point


# ---------------------------------------------------------------------------------- pretraining

def pretrain_config(method: str, data: Path, out: Path, workers: int, health: bool = True):
    from selma3d.training.pretrain import PretrainConfig

    tiny = TINY_PRETRAIN[method]
    return PretrainConfig(
        method=method, data=str(data), out=str(out), model_options=tiny["model_options"],
        method_options=tiny["method_options"], max_steps=STEPS, patch_size=(16, 16, 16), batch_size=2, lr=1e-3,
        num_workers=workers, fg_fraction=0.02, checkpoint_every=EVERY, health_every=HEALTH_EVERY[method] if health else 0,
        accelerator="cpu", progress=False)


def assert_same_pretraining(whole: Path, run: Path, method: str, health: bool = True) -> None:
    assert (run / "loss.csv").read_text() == (whole / "loss.csv").read_text()
    assert len((run / "loss.csv").read_text().splitlines()) == 1 + STEPS
    if HEALTH_EVERY[method] and health:
        assert (run / "health.csv").read_text() == (whole / "health.csv").read_text()
        assert len((run / "health.csv").read_text().splitlines()) == 3  # steps 0 and STEPS
    for name in ("summary.json", "config.json"):
        assert differences(json.loads((whole / name).read_text()), json.loads((run / name).read_text()), name) == []
    assert differences(load(whole / "encoder.pt"), load(run / "encoder.pt"), "encoder.pt") == []
    assert_same_checkpoint(whole / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")


def test_pretraining_crashed_after_a_checkpoint_resumes_bit_identical(tiny_dataset, tmp_path, monkeypatch):
    """BYOL in this process (SSL health off: the slow test has it): 0 loader workers
    uninterrupted, 2 before the crash, 1 after it. The crashed run is started with a relative
    ``--data`` and resumed from another directory with the absolute one and the method's
    default model named explicitly: the same settings, so accepted."""
    from selma3d.training import pretrain
    from selma3d.training.pretrain import run_pretraining

    data = Path(tiny_dataset).resolve()
    run_pretraining(pretrain_config("byol", data, tmp_path / "whole", workers=0, health=False))
    monkeypatch.setattr(pretrain, "kill_point", crash_after(KILL_AT))
    monkeypatch.chdir(data.parent)
    with pytest.raises(Crash):
        run_pretraining(pretrain_config("byol", Path(data.name), tmp_path / "run", workers=2, health=False))
    assert load(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == KILL_AT
    monkeypatch.chdir(tmp_path)
    config = pretrain_config("byol", data, tmp_path / "run", workers=1, health=False)
    config.model = "unet3d"
    run_pretraining(config, resume=True, given={"method", "num_workers", "data", "model"})
    assert_same_pretraining(tmp_path / "whole", tmp_path / "run", "byol", health=False)

def pretrain_args(method: str, data: Path, out: str, workers: int) -> list[str]:
    tiny = TINY_PRETRAIN[method]
    args = ["pretrain", "--method", method, "--data", data, "--out", out, "--patch-size", "16",
            "--batch-size", "2", "--max-steps", STEPS, "--checkpoint-every", EVERY, "--lr", "1e-3",
            "--fg-fraction", "0.02", "--num-workers", workers, "--health-every", HEALTH_EVERY[method],
            "--accelerator", "cpu",
            "--no-progress"]
    for key, value in tiny["model_options"].items():
        args += ["--model-option", f"{key}={json.dumps(value)}"]
    for key, value in tiny["method_options"].items():
        args += ["--method-option", f"{key}={json.dumps(value)}"]
    return args


@pytest.mark.slow
@pytest.mark.parametrize("method", list(TINY_PRETRAIN))
def test_pretraining_killed_at_a_checkpoint_resumes_bit_identical(method, tiny_dataset, tmp_path):
    from selma3d.training.pretrain import run_pretraining

    data = Path(tiny_dataset).resolve()
    whole = tmp_path / "whole"
    run_pretraining(pretrain_config(method, data, whole, workers=0))

    killed = selma3d(*pretrain_args(method, os.path.relpath(data, tmp_path), "run", workers=2), cwd=tmp_path,
                     kill_after=KILL_AT)
    run = tmp_path / "run"
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert load(run / "checkpoints" / "last.ckpt")["global_step"] == KILL_AT
    assert not (run / "encoder.pt").exists() and not (run / "summary.json").exists()
    assert len((run / "loss.csv").read_text().splitlines()) == 1 + KILL_AT
    killed_config = yaml.safe_load((run / "config.yaml").read_text())  # written while it trained

    # the user's resume from another directory: another worker count, the method's default model
    # named, the data path (relative when started) absolute
    default_model = {"byol": "unet3d", "dino": "vit3d", "inpainting": "unet3d"}[method]
    (tmp_path / "elsewhere").mkdir()
    resumed = selma3d("pretrain", "--method", method, "--out", "../run", "--resume", "--num-workers", "1",
                      "--model", default_model, "--data", data, "--no-progress", cwd=tmp_path / "elsewhere")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_pretraining(whole, run, method)
    resumed_config = yaml.safe_load((run / "config.yaml").read_text())
    assert resumed_config.pop("num_workers") == 1 and killed_config.pop("num_workers") == 2  # as each was run
    assert resumed_config == killed_config


# ---------------------------------------------------------------------------------- finetuning

def finetune_config(data: Path, out: Path, workers: int):
    from selma3d.training.finetune import FinetuneConfig

    return FinetuneConfig(data=str(data), out=str(out), model_options={"features": [4, 8, 16]},
                          patch_size=(16, 16, 16), structures=["vessel"], val_fraction=0.5, checkpoint_every=EVERY,
                          max_steps=STEPS, batch_size=2, num_workers=workers, progress=False)


def assert_same_finetuning(whole: Path, run: Path) -> None:
    assert (run / "curves.csv").read_text() == (whole / "curves.csv").read_text()
    info, expected = json.loads((run / "run.json").read_text()), json.loads((whole / "run.json").read_text())
    assert differences(expected, info, "run.json") == []
    assert info["best"]["step"] is not None and "threshold_calibration" in info
    assert differences(load(whole / "model.pt"), load(run / "model.pt"), "model.pt") == []
    assert_same_checkpoint(whole / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")


def assert_validation_logged_at_the_kill(run: Path) -> None:
    assert load(run / "checkpoints" / "last.ckpt")["global_step"] == KILL_AT
    before = (run / "curves.csv").read_text().splitlines()
    assert len(before) == 1 + KILL_AT and before[-1].split(",")[-1] != ""  # the step's validation is there


def test_finetuning_crashed_after_a_checkpoint_resumes_bit_identical(tiny_dataset, tmp_path, monkeypatch):
    """Crashed right after the checkpoint of a validated step: the validation values logged
    before the crash, the best model and the calibrated threshold all come out the same."""
    from selma3d.training import finetune as finetuning

    data = Path(tiny_dataset).resolve()
    finetuning.finetune(finetune_config(data, tmp_path / "whole", workers=0))
    monkeypatch.setattr(finetuning.callbacks, "kill_point", crash_after(KILL_AT))
    with pytest.raises(Crash):
        finetuning.finetune(finetune_config(data, tmp_path / "run", workers=1))
    assert_validation_logged_at_the_kill(tmp_path / "run")
    monkeypatch.undo()
    finetuning.finetune(finetuning.resume_config(tmp_path / "run"), resume=True)
    assert_same_finetuning(tmp_path / "whole", tmp_path / "run")


@pytest.mark.slow
def test_finetuning_killed_at_a_checkpoint_resumes_bit_identical(tiny_dataset, tmp_path):
    from selma3d.training.finetune import finetune

    data = Path(tiny_dataset).resolve()
    whole = tmp_path / "whole"
    finetune(finetune_config(data, whole, workers=0))
    args = ["finetune", "--data", data, "--out", "run", "--model-option", "features=[4,8,16]", "--patch-size", "16",
            "--structures", "vessel", "--val-fraction", "0.5", "--checkpoint-every", EVERY,
            "--max-steps", STEPS, "--batch-size", "2", "--num-workers", "2", "--quiet"]
    killed = selma3d(*args, cwd=tmp_path, kill_after=KILL_AT)
    run = tmp_path / "run"
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert_validation_logged_at_the_kill(run)
    killed_config = yaml.safe_load((run / "config.yaml").read_text())  # written while it trained
    assert killed_config["max_steps"] == STEPS and killed_config["structures"] in ("vessel", ["vessel"])
    resumed = selma3d("finetune", "--out", "run", "--resume", "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_finetuning(whole, run)
    assert yaml.safe_load((run / "config.yaml").read_text()) == killed_config


# ---------------------------------------------------------------------------------- resume checks

def test_pretrain_resume_accepts_the_default_model_named_and_a_relative_data_path(tiny_dataset, tmp_path,
                                                                                   monkeypatch):
    """The saved ``model: null`` equals ``--model unet3d`` for BYOL; a relative ``--data`` equal to
    the saved absolute path is the same dataset; a really changed option is still refused."""
    from selma3d.errors import Selma3dError
    from selma3d.training.pretrain import CONFIG_NAME, PretrainConfig, _resume_config

    run = tmp_path / "run"
    run.mkdir()
    saved = PretrainConfig(method="byol", data=str(Path(tiny_dataset).resolve()), out=str(run))
    from dataclasses import asdict

    (run / CONFIG_NAME).write_text(json.dumps(asdict(saved), default=str))
    monkeypatch.chdir(Path(tiny_dataset).parent)
    given = PretrainConfig(method="byol", data=Path(tiny_dataset).name, out=str(run), model="unet3d")
    resumed = _resume_config(given, {"method", "model", "data"})
    assert resumed.model is None and resumed.data == saved.data
    with pytest.raises(Selma3dError, match="cannot change model"):
        _resume_config(PretrainConfig(method="byol", data=saved.data, out=str(run), model="swinunetr"),
                       {"method", "model"})
    with pytest.raises(Selma3dError, match="cannot change data"):
        _resume_config(PretrainConfig(method="byol", data=str(tmp_path), out=str(run)), {"method", "data"})


def test_patch_stream_does_not_depend_on_workers_or_the_resume_step(tiny_dataset):
    """Step s gets the same patches with 0 or 3 loader workers, and from a dataset resumed at s."""
    from selma3d.data.sampling import PatchDataset, volumes_from_dataset

    sources = volumes_from_dataset(tiny_dataset)

    def batches(workers: int, start: int, count: int) -> list[torch.Tensor]:
        dataset = PatchDataset(sources, 8, seed=4, start_step=start, batch_size=2, fg_threshold=None)
        dataset.prepare()
        loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=workers)
        out = []
        for batch in loader:
            out.append(batch["image"])
            if len(out) == count:
                return out

    single = batches(0, 0, 6)
    assert all(torch.equal(x, y) for x, y in zip(single, batches(3, 0, 6)))
    assert all(torch.equal(x, y) for x, y in zip(single[4:], batches(2, 4, 2)))
    assert len({tuple(b.flatten().tolist()) for b in single}) == 6  # steps differ from each other


def test_finetune_crops_do_not_depend_on_workers_or_the_resume_step(tiny_dataset):
    from selma3d.training.finetune_data import FinetuneDataModule

    def batches(workers: int, start: int, count: int) -> list[torch.Tensor]:
        data = FinetuneDataModule(tiny_dataset, (16, 16, 16), structures=["cfos"], batch_size=2, val_fraction=0.0,
                                  seed=3, num_workers=workers, samples_per_epoch=4)
        data.setup("fit")
        data.start_step = start
        out = []
        torch.manual_seed(start)  # the global generator must not matter
        for batch in data.train_dataloader():
            out.append(batch["image"])
            if len(out) == count:
                return out

    single = batches(0, 0, 5)
    assert all(torch.equal(x, y) for x, y in zip(single, batches(2, 0, 5)))
    assert all(torch.equal(x, y) for x, y in zip(single[3:], batches(2, 3, 2)))
    assert not torch.equal(single[0], single[2])  # a second pass over the patches is reshuffled/augmented anew


# ---------------------------------------------------------------------------------- study

@pytest.mark.slow
def test_study_killed_twice_finishes_with_identical_results(tiny_dataset, tmp_path):
    """``selma3d study`` killed (1) right after its pretraining's last checkpoint, before
    encoder.pt, and (2) in its second arm, once the first arm's result is written; the rerun
    keeps the finished arm and gives the results of the study that was never interrupted."""
    import time

    from typer.testing import CliRunner

    from selma3d.cli import app_typer
    from selma3d.study.plan import StudyPlan

    data = Path(tiny_dataset).resolve()
    settings = ["--data", data, "--preset", "tiny", "--methods", "byol", "--modes", "full", "--labels", "all",
                "--seeds", "0", "--structures", "cfos", "--steps", "3", "--pretrain-steps", "2", "--quiet"]
    whole = tmp_path / "whole"
    result = CliRunner().invoke(app_typer, ["study", "--out", str(whole), *map(str, settings)])
    assert result.exit_code == 0, result.output

    study = tmp_path / "study"
    first = selma3d("study", "--out", study, *settings, cwd=tmp_path, kill_after=2)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert (study / "pretrain" / "byol" / "checkpoints" / "last.ckpt").is_file()
    assert not (study / "pretrain" / "byol" / "encoder.pt").exists()

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop(KILL_ENV, None)
    process = subprocess.Popen([sys.executable, "-m", "selma3d", "study", "--out", str(study), *map(str, settings)],
                               cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    arms = [f"{a.key}.json" for a in StudyPlan.from_preset(str(data), str(study), "tiny", methods=["byol"],
                                                           modes=["full"], labels=[None], seeds=[0],
                                                           structures=["cfos"]).arms()]
    assert len(arms) == 2 and sorted(arms) == sorted(p.name for p in (whole / "arms").glob("*.json")
                                                     if p.name != "otsu.json")
    first_arm = study / "arms" / arms[0]
    deadline = time.monotonic() + 600
    while not first_arm.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (study / "results.json").exists()  # killed in the middle, not after the end
    assert [p.name for p in (study / "arms").glob("*.json") if p.name != "otsu.json"] == arms[:1]

    last = selma3d("study", "--out", study, *settings, cwd=tmp_path)
    assert last.returncode == 0, last.stderr[-3000:]
    assert "1 arms run now, 1 found finished" in last.stdout + last.stderr
    for name in ("results.json", "results.csv"):
        assert (study / name).read_text() == (whole / name).read_text(), name
    for name in arms:  # every arm record but its wall and CPU times
        first_record, second_record = (json.loads((d / "arms" / name).read_text()) for d in (whole, study))
        assert differences({**first_record, "seconds": 0}, {**second_record, "seconds": 0}, name) == []
    assert differences(load(whole / "pretrain" / "byol" / "encoder.pt"),
                       load(study / "pretrain" / "byol" / "encoder.pt"), "encoder.pt") == []
