"""Progress in logs (a line every few seconds when stdout is not a terminal) and no Lightning
chatter on the user's screen."""

from __future__ import annotations

import io
import subprocess
import sys
from types import SimpleNamespace

import torch

from selma3d.training.progress import LogProgress, format_duration, progress_display


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _trainer(step, total=100, loss=0.5):
    return SimpleNamespace(global_step=step, max_steps=total, is_global_zero=True,
                           callback_metrics={"loss": torch.tensor(loss)})


def test_a_line_every_few_seconds_and_at_the_last_step():
    clock, out = _Clock(), io.StringIO()
    callback = LogProgress("pretrain", every=5.0, stream=out, clock=clock)
    callback.on_train_start(_trainer(20), None)  # resumed at step 20: the rate counts this run's steps
    for step in range(21, 101):
        clock.now += 0.5  # 2 steps/s
        callback.on_train_batch_end(_trainer(step, loss=1.0 / step), None, None, None, None)
    lines = out.getvalue().splitlines()
    assert lines[0] == "[pretrain] step 21/100 (21 %) · 2.00 steps/s · ETA 0:00:40 · loss 0.0476"
    assert len(lines) == 1 + 80 // 10 and lines[-1].startswith("[pretrain] step 100/100 (100 %)")
    steps = [int(line.split()[2].split("/")[0]) for line in lines]
    assert steps == [21, 31, 41, 51, 61, 71, 81, 91, 100]  # every 5 s = 10 steps, and the last one


def test_the_line_shows_the_loss_of_the_step_just_done():
    """Pretraining keeps the step's loss on the module (``latest_loss``): the log line shows it
    even though Lightning's own metric (for the terminal bar) is refreshed only every few steps."""
    out = io.StringIO()
    callback = LogProgress("pretrain", every=5.0, stream=out, clock=_Clock())
    callback.on_train_start(_trainer(0), None)
    callback.on_train_batch_end(_trainer(100, loss=0.5), SimpleNamespace(latest_loss=0.25), None, None, None)
    callback.on_train_batch_end(_trainer(100, loss=0.5), SimpleNamespace(latest_loss=None), None, None, None)
    assert [line.rsplit(" ", 1)[1] for line in out.getvalue().splitlines()] == ["0.2500", "0.5000"]


def test_pretraining_logs_to_lightning_only_every_few_steps(tiny_dataset, tmp_path, monkeypatch):
    """Lightning's ``self.log`` costs ~0.3-0.6 ms, a few % of a small SSL step: pretraining
    gives its bar the loss at the first step, every BAR_LOSS_EVERY steps and at the last."""
    from selma3d.training import pretrain

    logged = []
    monkeypatch.setattr(pretrain.PretrainModule, "log",
                        lambda self, name, value, **kw: logged.append((self.global_step + 1, name)))
    monkeypatch.setattr(pretrain, "BAR_LOSS_EVERY", 5)
    config = pretrain.PretrainConfig(
        method="inpainting", data=str(tiny_dataset), out=str(tmp_path / "run"), model_options={"features": [4, 8, 16]},
        max_steps=12, patch_size=(16, 16, 16), batch_size=2, num_workers=0, fg_fraction=0.02,
        checkpoint_every=100, health_every=0, accelerator="cpu", progress=False)
    pretrain.run_pretraining(config)
    assert logged == [(1, "loss"), (5, "loss"), (10, "loss"), (12, "loss")]


def test_bar_on_a_terminal_lines_in_a_log_nothing_when_quiet():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert progress_display(True, "x", Terminal()) == (True, [])
    bar, callbacks = progress_display(True, "x", io.StringIO())
    assert bar is False and isinstance(callbacks[0], LogProgress)
    assert progress_display(False, "x", io.StringIO()) == (False, [])
    assert format_duration(3725.2) == "1:02:05" and format_duration(None) == "?"


def test_pretrain_in_a_log_prints_progress_lines_and_no_lightning_banners(tiny_dataset, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "selma3d", "pretrain", "--method", "inpainting", "--data", str(tiny_dataset),
         "--out", str(tmp_path / "run"), "--max-steps", "3", "--patch-size", "16", "--batch-size", "2",
         "--model-option", "features=[4,8,16]", "--num-workers", "0", "--health-every", "0"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("[pretrain] step 1/3") and any(line.startswith("[pretrain] step 3/3") for line in lines)
    for chatter in ("GPU available", "TPU available", "Tip", "LeafSpec", "weights_only", "Trainer.fit"):
        assert chatter not in result.stderr + result.stdout, chatter


# --------------------------------------------------------------- the other long commands (utils.progress)
from selma3d.utils.progress import LineProgress, NoProgress, progress_bar  # noqa: E402


def test_line_progress_reports_rate_eta_and_completion():
    clock, out = _Clock(), io.StringIO()
    bar = LineProgress("predict", unit="blocks", stream=out, clock=clock, every=3600)
    with bar:
        task = bar.add_task("mask.zarr: predict", total=10, completed=2)  # resumed: 2 already done
        clock.now = 4.0
        bar.advance(task, 2)
        assert bar.running_lines() == ["[predict] mask.zarr: predict 4/10 (40 %) · 0.50 blocks/s · ETA 0:00:12"]
        assert out.getvalue() == ""  # nothing until a heartbeat or the end of the task
        clock.now = 16.0
        bar.update(task, advance=6)
    assert out.getvalue().splitlines() == ["[predict] mask.zarr: predict 10/10 (100 %) · 0.50 blocks/s · done in 0:00:16"]
    assert bar.running_lines() == []


def test_line_progress_beats_while_a_long_item_runs():
    """A job whose next block takes minutes still prints a line every few seconds."""
    import time

    out = io.StringIO()
    with LineProgress("stats", stream=out, every=0.05) as bar:
        bar.add_task("labels", total=3)
        deadline = time.monotonic() + 5
        while out.getvalue().count("\n") < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2 and all(line.startswith("[stats] labels 0/3 (0 %) · ?/s · ETA ?") for line in lines)


def test_progress_bar_on_a_terminal_lines_in_a_log_nothing_when_quiet():
    from rich.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert isinstance(progress_bar(True, "x", stream=Terminal()), Progress)
    assert isinstance(progress_bar(True, "x", stream=io.StringIO()), LineProgress)
    assert isinstance(progress_bar(False, "x", stream=Terminal()), NoProgress)


def test_synth_convert_and_evaluate_in_a_log_print_progress_lines(tmp_path):
    """stdout to a file (nohup, SLURM): each phase ends with a plain line, not a silent run."""
    synth = subprocess.run([sys.executable, "-m", "selma3d", "synth", str(tmp_path / "d"), "--preset", "tiny"],
                           capture_output=True, text=True, timeout=600)
    assert synth.returncode == 0, synth.stderr
    assert any(line.startswith("[synth] synth tiny ") and "planes/s · done in" in line
               for line in synth.stdout.splitlines()), synth.stdout
    volume = next((tmp_path / "d" / "unannotated").glob("*/*"))
    convert = subprocess.run([sys.executable, "-m", "selma3d", "convert", str(volume), str(tmp_path / "v.zarr")],
                             capture_output=True, text=True, timeout=600)
    assert convert.returncode == 0, convert.stderr
    phases = [line for line in convert.stdout.splitlines() if line.startswith("[convert] v.zarr: ")]
    assert phases and phases[0].startswith("[convert] v.zarr: level 0 ") and all("done in" in p for p in phases)
    import shutil

    gt = tmp_path / "d" / "annotated" / "final_test"
    pred = shutil.copytree(gt, tmp_path / "pred")
    evaluate = subprocess.run([sys.executable, "-m", "selma3d", "evaluate", str(pred), str(gt),
                               "--out", str(tmp_path / "m.json")], capture_output=True, text=True, timeout=600)
    assert evaluate.returncode == 0, evaluate.stderr
    scoring = [line for line in evaluate.stderr.splitlines() if line.startswith("[evaluate] scoring ")]
    cases = len(list(gt.glob("*/*_label.nii.gz")))
    assert len(scoring) >= 1 and scoring[-1].startswith(f"[evaluate] scoring {cases}/{cases} (100 %)")
