"""Pipeline overhead of self-supervised pretraining, per method, as a ratio against the bare step.

Pipeline: ``run_pretraining`` exactly as ``selma3d pretrain`` runs it (the endless
PatchDataset reading TIFF slice folders through its DataLoader workers, the Lightning loop,
the SSL method, logging, the loss history, the progress bar, atomic checkpoints), timed by a
callback from the start of step ``--warmup`` + 1 to the end of the last step.

Bare step: the same method (same backbone, same options, same seed) on one batch the pipeline's
own PatchDataset produced, already in memory: ``training_loss`` (which makes the views), backward,
AdamW step, ``on_after_step`` (EMA) — nothing else.

    .venv/bin/python benchmarks/pretrain_bench.py [--methods byol,simclr,inpainting,dino,multitask]
        [--steps 50] [--warmup 5] [--num-workers N] [--threads N] [--data DIR] [--repeats N] [--interleave]

Overhead = pipeline s/step / bare s/step - 1 (goal: <= 15 %). Both are measured in this process,
bare first, then the pipeline, per method (``--repeats N``: N such pairs, medians reported). The
bare step seeds its generators before each step as the pipeline does (untimed), so both draw the
same augmentations. ``--interleave`` (with ``--num-workers 0``): one run per repeat, a bare step
timed right after each pipeline step, so load changes on a shared machine hit both alike. Wall time is what the user waits for; CPU time (this
process plus its DataLoader workers, read from /proc on Linux) is what competes for the cores,
and it is much less disturbed than wall time when other jobs share the machine. The timed window includes one checkpoint (at step
``--checkpoint-every``, 50 by default: twice as often as the command's default of 100).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch

#: small backbones and heads that run in seconds per step on a CPU
SMALL = {
    "byol": dict(model_options={"features": [8, 16, 32]}),
    "simclr": dict(model_options={"features": [8, 16, 32]}),
    "inpainting": dict(model_options={"features": [8, 16, 32]}),
    "dino": dict(model_options={"patch_size": 8, "hidden_size": 48, "num_layers": 2, "num_heads": 2,
                                "mlp_dim": 96, "decoder_channels": 8},
                 method_options={"out_dim": 1024, "hidden_dim": 256, "bottleneck_dim": 64,
                                 "local_crops": 2}),
    "multitask": dict(model_options={"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1],
                                     "window_size": 4, "norm": "group"},
                      method_options={"contrast_dim": 64}),
}


def _parse():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="dataset folder (default: a fresh `small` synthetic set)")
    parser.add_argument("--methods", default="byol,simclr,inpainting,dino,multitask")
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: the command's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--health-every", type=int, default=None, help="SSL health every N steps (default: the command's)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="bare and pipeline runs per method, alternating; the medians are reported")
    parser.add_argument("--interleave", action="store_true",
                        help="time a bare step after each pipeline step in the same run (needs --num-workers 0)")
    return parser.parse_args()


def cpu_seconds() -> float:
    """CPU time of this process and of its live child processes (the DataLoader workers)."""
    total = time.process_time()
    proc = Path("/proc")
    if not proc.is_dir():
        return total
    me, tick = str(os.getpid()), os.sysconf("SC_CLK_TCK")
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:  # ppid
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def step_timer(warmup: int):
    import pytorch_lightning as pl

    class StepTimer(pl.Callback):
        """Wall and CPU time from the start of step ``warmup`` + 1 to the end of the last step.

        The clocks are read at those two points only: :func:`cpu_seconds` scans /proc (a few
        milliseconds on a busy machine), so reading it after every step would bill the timer's
        own cost to the pipeline (it did until this was fixed: +2–6 ms per step).
        """

        def __init__(self):
            self.start = self.end = None
            self.steps = 0
            self.reads = 0  # clock reads inside the timed window (tests check there are two)

        def _now(self):
            self.reads += 1
            return time.perf_counter(), cpu_seconds()

        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == warmup and self.start is None:
                self.start = self._now()

        def on_train_batch_end(self, trainer, *args):
            if self.start is not None and self.end is None:
                self.steps += 1
                if trainer.global_step >= trainer.max_steps:
                    self.end = self._now()

        @property
        def seconds_per_step(self) -> tuple[float, float]:
            """(wall, CPU) seconds per step."""
            return tuple((e - s) / self.steps for s, e in zip(self.start, self.end))

    return StepTimer()


def config_for(method: str, args, data_dir: Path, out: Path):
    from selma3d.training.pretrain import PretrainConfig

    options = dict(method=method, data=str(data_dir), out=str(out),
                   model_options=SMALL[method]["model_options"],
                   method_options=SMALL[method].get("method_options", {}),
                   max_steps=args.warmup + args.steps, patch_size=(args.patch,) * 3,
                   batch_size=args.batch_size, checkpoint_every=args.checkpoint_every,
                   accelerator="cpu", progress=True)
    if args.num_workers is not None:
        options["num_workers"] = args.num_workers
    if args.health_every is not None:
        options["health_every"] = args.health_every
    known = set(PretrainConfig.__dataclass_fields__)
    return PretrainConfig(**{k: v for k, v in options.items() if k in known})


def run_with(config, callback) -> None:
    """``run_pretraining(config)`` with one extra Lightning callback."""
    from selma3d.training.pretrain import run_pretraining

    import inspect

    if "callbacks" in inspect.signature(run_pretraining).parameters:
        run_pretraining(config, callbacks=[callback])
        return
    # an older selma3d (for "before" numbers): hand the callback to the Trainer directly
    import pytorch_lightning as pl

    original = pl.Trainer.__init__

    def with_callback(self, *args, callbacks=None, **kwargs):
        original(self, *args, callbacks=[*(callbacks or []), callback], **kwargs)

    pl.Trainer.__init__ = with_callback
    try:
        run_pretraining(config)
    finally:
        pl.Trainer.__init__ = original


def pipeline_step(config, warmup: int) -> tuple[float, float]:
    timer = step_timer(warmup)
    run_with(config, timer)
    return timer.seconds_per_step


def one_batch(config) -> dict:
    """A batch of the pipeline's own PatchDataset (read in this process)."""
    from selma3d.data.sampling import PatchDataset, volumes_from_dataset

    try:  # the window the pipeline samples for this method (one slice for a 2D method)
        from selma3d.ssl.registry import sample_size

        window = sample_size(config.method, config.patch_size)
    except ImportError:  # an older selma3d (for "before" numbers) sampled the whole patch
        window = config.patch_size
    dataset = PatchDataset(volumes_from_dataset(config.data, config.structures), window,
                           seed=config.seed, fg_threshold=config.fg_threshold, fg_fraction=config.fg_fraction)
    dataset.prepare()
    stream = iter(dataset)
    items = [next(stream) for _ in range(config.batch_size)]
    return {"image": torch.stack([i["image"] for i in items]),
            "structure": torch.tensor([i["structure"] for i in items])}


class BareStep:
    """The method on one batch already in memory: ``training_loss`` (which makes the views),
    backward, AdamW step, ``on_after_step`` (EMA) — nothing else. Before each step the global
    generators are seeded as the pipeline seeds that step (``seed_step(seed, step, rank 0)``,
    outside the timed part), so both draw the same views, masks and augmentation choices
    (SimCLR's CLAHE, for one, costs several times a cheap contrast change: unpaired draws made
    the small steps' ratios noisy)."""

    def __init__(self, config, batch: dict, total_steps: int):
        from selma3d.ssl import build_method
        from selma3d.training import determinism

        self.config, self.batch, self.total = config, batch, total_steps
        self.determinism = determinism
        torch.manual_seed(config.seed)
        self.method = build_method(config.method, model=config.model, model_options=config.model_options,
                                   patch_size=config.patch_size, num_structures=4, **config.method_options)
        self.method.train()
        self.optimizer = torch.optim.AdamW([p for p in self.method.parameters() if p.requires_grad],
                                           lr=config.lr, weight_decay=config.weight_decay)

    def seed(self, step: int) -> None:
        """Seed the generators for 1-based ``step`` as the pipeline does (untimed)."""
        self.determinism.seed_step(self.config.seed, step - 1, 0)

    def step(self, step: int) -> None:
        """One bare step (1-based ``step``, for the EMA schedule); call :meth:`seed` first."""
        loss, _ = self.method.training_loss(self.batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.method.on_after_step(step, self.total)


def bare_step(config, batch: dict, warmup: int, steps: int) -> tuple[float, float]:
    """(wall, CPU) seconds per bare step (:class:`BareStep`), after ``warmup`` untimed steps."""
    bare = BareStep(config, batch, warmup + steps)
    wall = cpu = 0.0
    for step in range(1, warmup + steps + 1):
        bare.seed(step)
        start = (time.perf_counter(), time.process_time())
        bare.step(step)
        if step > warmup:
            wall += time.perf_counter() - start[0]
            cpu += time.process_time() - start[1]
    return wall / steps, cpu / steps


def interleaved(config, batch: dict, warmup: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """(pipeline, bare) (wall, CPU) seconds per step, measured in alternation in one run: after
    each timed pipeline step a callback runs the bare step of the same index (seeded alike) and
    the pipeline's clock restarts after it. A shared machine's slow and fast minutes then hit
    both alike, which sequential runs (minutes apart) do not. Loader in the main process only
    (``--num-workers 0``): workers would keep loading while the bare step runs."""
    import pytorch_lightning as pl

    if config.num_workers:
        raise SystemExit("--interleave needs --num-workers 0")
    total = config.max_steps
    bare = BareStep(config, batch, total)

    def clocks():
        return time.perf_counter(), time.process_time()

    class Interleave(pl.Callback):
        def __init__(self):
            self.pipe, self.bare, self.start, self.steps = [0.0, 0.0], [0.0, 0.0], None, 0

        def on_train_start(self, trainer, *args):
            for step in range(1, warmup + 1):  # the bare step's own warm-up
                bare.seed(step)
                bare.step(step)

        def on_train_batch_end(self, trainer, *args):
            # every timed interval runs from one step's end to the next (fetch included)
            if trainer.global_step == warmup:
                self.start = clocks()
                return
            if self.start is None:
                return
            end = clocks()
            self.pipe = [a + e - s for a, s, e in zip(self.pipe, self.start, end)]
            step = trainer.global_step  # 1-based index of the step just done
            bare.seed(step)
            start = clocks()
            bare.step(step)
            end = clocks()
            self.bare = [a + e - s for a, s, e in zip(self.bare, start, end)]
            self.steps += 1
            self.start = clocks()

    callback = Interleave()
    run_with(config, callback)
    return (tuple(v / callback.steps for v in callback.pipe), tuple(v / callback.steps for v in callback.bare))


def _median(values):
    values = sorted(values)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def main():
    args = _parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    from selma3d.data.synthetic import make_dataset

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data or make_dataset(Path(tmp) / "small", preset="small", seed=0)
        for method in methods:
            config = config_for(method, args, data_dir, Path(tmp) / f"run_{method}")
            batch = one_batch(config)
            bares, pipes = [], []
            for repeat in range(args.repeats):  # alternating, so slow phases of a shared machine hit both
                config.out = str(Path(tmp) / f"run_{method}_{repeat}")
                if args.interleave:
                    pipe, bare = interleaved(config, batch, args.warmup)
                    pipes.append(pipe)
                    bares.append(bare)
                    continue
                bares.append(bare_step(config, batch, args.warmup, args.steps))
                pipes.append(pipeline_step(config, args.warmup))
            bare = tuple(_median([b[i] for b in bares]) for i in range(2))
            pipe = tuple(_median([p[i] for p in pipes]) for i in range(2))
            rows.append((method, config, pipe, bare))
            print(f"{method:11s} wall: pipeline {pipe[0]:6.3f} s/step, bare {bare[0]:6.3f} s/step, overhead "
                  f"{pipe[0] / bare[0] - 1:+6.1%}   CPU: pipeline {pipe[1]:6.3f}, bare {bare[1]:6.3f}, "
                  f"overhead {pipe[1] / bare[1] - 1:+6.1%}", flush=True)
    cfg = rows[0][1]
    print(f"\ntorch threads {torch.get_num_threads()}, num_workers {cfg.num_workers}, health_every "
          f"{getattr(cfg, 'health_every', 'n/a')}, patch {args.patch}³, batch {args.batch_size}, "
          f"{args.steps} timed steps after {args.warmup}, checkpoint every {args.checkpoint_every}, "
          f"median of {args.repeats} run(s) each{', interleaved' if args.interleave else ''}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| method | wall s/step pipeline / bare | wall overhead | CPU s/step pipeline / bare | CPU overhead |")
    print("|---|---|---|---|---|")
    for method, _, pipe, bare in rows:
        print(f"| {method} | {pipe[0]:.3f} / {bare[0]:.3f} | {pipe[0] / bare[0] - 1:+.1%} | "
              f"{pipe[1]:.3f} / {bare[1]:.3f} | {pipe[1] / bare[1] - 1:+.1%} |")


if __name__ == "__main__":
    main()
