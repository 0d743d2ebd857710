"""benchmarks/pretrain_bench.py measures what it says: the timer adds nothing per step, and the
bare step draws the same augmentations as the pipeline."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "pretrain_bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("pretrain_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["pretrain_bench"] = module
    spec.loader.exec_module(module)
    return module


def test_step_timer_reads_the_clocks_only_at_both_ends(bench, monkeypatch):
    """cpu_seconds() scans /proc (milliseconds on a busy machine): read after every step it was
    billed to the pipeline."""
    reads = []
    monkeypatch.setattr(bench, "cpu_seconds", lambda: reads.append(1) or float(len(reads)))
    timer = bench.step_timer(warmup=2)
    trainer = SimpleNamespace(global_step=0, max_steps=7)
    for step in range(7):
        trainer.global_step = step
        timer.on_train_batch_start(trainer)
        trainer.global_step = step + 1
        timer.on_train_batch_end(trainer)
    assert len(reads) == 2 and timer.steps == 5
    assert timer.seconds_per_step[1] == pytest.approx(1 / 5)


def test_bare_step_is_seeded_like_the_pipeline(bench, monkeypatch, tiny_dataset, tmp_path):
    from selma3d.training import determinism

    seeded = []
    real = determinism.seed_step
    monkeypatch.setattr(determinism, "seed_step", lambda *args: seeded.append(args) or real(*args))
    args = SimpleNamespace(warmup=1, steps=2, patch=16, batch_size=2, checkpoint_every=100, num_workers=0,
                           health_every=0)
    config = bench.config_for("inpainting", args, Path(tiny_dataset), tmp_path / "run")
    config.model_options = {"features": [4, 8, 16]}
    config.fg_fraction = 0.02
    wall, cpu = bench.bare_step(config, bench.one_batch(config), warmup=1, steps=2)
    assert wall > 0 and cpu > 0
    assert seeded == [(config.seed, 0, 0), (config.seed, 1, 0), (config.seed, 2, 0)]  # pipeline: (seed, step, rank)


def test_interleaved_pairs_each_pipeline_step_with_a_bare_step(bench, monkeypatch, tiny_dataset, tmp_path):
    from selma3d.training import determinism

    seeded = []
    real = determinism.seed_step
    monkeypatch.setattr(determinism, "seed_step", lambda *args: seeded.append(args[1]) or real(*args))
    args = SimpleNamespace(warmup=1, steps=3, patch=16, batch_size=2, checkpoint_every=100, num_workers=0,
                           health_every=0)
    config = bench.config_for("inpainting", args, Path(tiny_dataset), tmp_path / "run")
    config.model_options = {"features": [4, 8, 16]}
    config.fg_fraction = 0.02
    config.progress = False
    pipe, bare = bench.interleaved(config, bench.one_batch(config), warmup=1)
    assert min(pipe) > 0 and min(bare) > 0
    # the bare step's warm-up (step 0), then, after each timed pipeline step s (steps 1..3, 0-based as
    # the pipeline seeds them), the bare step seeded as step s
    assert seeded == [0, 1, 2, 3]
