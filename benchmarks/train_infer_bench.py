"""Pipeline overheads of finetuning and patch prediction, as ratios against bare PyTorch.

Training: steps/s of the full pipeline (FinetuneDataModule: cached normalized patches,
foreground-balanced crops, MONAI augmentations, DataLoader; Lightning Trainer with the
SegmentationModule: loss, AdamW, warmup/cosine schedule, logging) versus a bare loop of
forward + loss + backward + AdamW step on the same model and batches already in memory.

Prediction: voxels/s of ``predict_volume`` (normalization, MONAI sliding windows with Gaussian
blending, sigmoid, threshold) versus the bare forward pass on exactly the windows the sliding
window visits, batched the same way.

    .venv/bin/python benchmarks/train_infer_bench.py [--steps 60] [--threads 1] [--num-workers 0]

Overhead = pipeline time / bare time - 1 (goal: <= 15 % each). Both runs of a pair happen in
this process, alternating, and the median of ``--repeats`` pairs is reported.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def _parse():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="dataset folder (default: a fresh `small` synthetic set)")
    parser.add_argument("--structures", default="cfos")
    parser.add_argument("--features", default="8,16,32", help="unet3d features")
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60, help="timed training steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--volume", type=int, default=96, help="edge of the predicted cube")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--sw-batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return parser.parse_args()


class StepTimer:
    """A Lightning callback recording the wall time of the steps after ``warmup``."""

    def __init__(self, warmup: int):
        import pytorch_lightning as pl

        class _Timer(pl.Callback):
            def __init__(self):
                self.start = self.end = None
                self.steps = 0

            def on_train_batch_start(inner, trainer, *args):
                if trainer.global_step == warmup and inner.start is None:
                    inner.start = time.perf_counter()

            def on_train_batch_end(inner, trainer, *args):
                if inner.start is not None:
                    inner.steps += 1
                    inner.end = time.perf_counter()

        self.callback = _Timer()

    @property
    def seconds_per_step(self) -> float:
        return (self.callback.end - self.callback.start) / self.callback.steps


def pipeline_training(args, data_dir, model_options) -> float:
    import pytorch_lightning as pl

    from selma3d.models import build_model
    from selma3d.training.finetune import SegmentationModule
    from selma3d.training.finetune_data import FinetuneDataModule

    pl.seed_everything(0, verbose=False)
    data = FinetuneDataModule(data_dir, (args.patch,) * 3, structures=args.structures.split(","),
                              batch_size=args.batch_size, val_fraction=0.0, num_workers=args.num_workers)
    total = args.warmup + args.steps
    module = SegmentationModule(build_model("unet3d", **model_options), loss="dicece", max_steps=total,
                                warmup_steps=2, patch_size=(args.patch,) * 3)
    timer = StepTimer(args.warmup)
    trainer = pl.Trainer(max_steps=total, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[timer.callback],
                         limit_val_batches=0, num_sanity_val_steps=0, log_every_n_steps=1)
    trainer.fit(module, datamodule=data)
    return timer.seconds_per_step


def bare_training(args, batches, model_options) -> float:
    from selma3d.models import build_model
    from selma3d.training.losses import build_loss

    torch.manual_seed(0)
    model = build_model("unet3d", **model_options).train()
    loss_fn = build_loss("dicece")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)
    start = None
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            start = time.perf_counter()
        image, label = batches[i % len(batches)]
        loss = loss_fn(model(image), label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / args.steps


def window_batches(shape, patch, overlap, sw_batch_size):
    """The window origins MONAI's sliding_window_inference visits, in its batches."""
    from monai.inferers.utils import _get_scan_interval
    from monai.data.utils import dense_patch_slices

    interval = _get_scan_interval(shape, (patch,) * 3, 3, (overlap,) * 3)
    slices = dense_patch_slices(shape, (patch,) * 3, interval)
    return [slices[i:i + sw_batch_size] for i in range(0, len(slices), sw_batch_size)]


def main():
    args = _parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    from selma3d.data.synthetic import make_dataset
    from selma3d.inference.predict import predict_volume
    from selma3d.models import build_model
    from selma3d.training.finetune_data import FinetuneDataModule

    model_options = {"features": [int(f) for f in args.features.split(",")]}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data or make_dataset(Path(tmp) / "small", preset="small", seed=0)

        # the bare loop trains on batches the pipeline produced, already in memory
        data = FinetuneDataModule(data_dir, (args.patch,) * 3, structures=args.structures.split(","),
                                  batch_size=args.batch_size, val_fraction=0.0)
        data.setup("fit")
        loader = iter(data.train_dataloader())
        batches = [(b["image"], b["label"].float()) for b in (next(loader) for _ in range(8))]

        pipe, bare = [], []
        for _ in range(args.repeats):
            bare.append(bare_training(args, batches, model_options))
            pipe.append(pipeline_training(args, data_dir, model_options))
        t_pipe, t_bare = statistics.median(pipe), statistics.median(bare)
        print(f"torch threads: {torch.get_num_threads()}; unet3d features={model_options['features']}, "
              f"patch {args.patch}³, batch {args.batch_size}, {args.steps} timed steps, median of {args.repeats}")
        print(f"training   pipeline {1 / t_pipe:7.2f} steps/s   bare {1 / t_bare:7.2f} steps/s   "
              f"overhead {t_pipe / t_bare - 1:+.1%}   (num_workers={args.num_workers})")

        torch.manual_seed(0)
        model = build_model("unet3d", **model_options).eval()
        rng = np.random.default_rng(0)
        volume = rng.integers(0, 4000, (args.volume,) * 3).astype(np.int16)
        x = torch.from_numpy(rng.uniform(-1, 1, (1, 1) + (args.volume,) * 3).astype(np.float32))
        groups = window_batches(volume.shape, args.patch, args.overlap, args.sw_batch_size)
        n_windows = sum(len(g) for g in groups)

        def bare_forward():
            with torch.no_grad():
                for group in groups:
                    model(torch.cat([x[(slice(None), slice(None)) + tuple(s)] for s in group]))

        def pipeline_predict():
            predict_volume(model, volume, (args.patch,) * 3, overlap=args.overlap, sw_batch_size=args.sw_batch_size)

        bare_forward(), pipeline_predict()  # warm up
        pred, fwd = [], []
        for _ in range(args.repeats):
            t = time.perf_counter(); bare_forward(); fwd.append(time.perf_counter() - t)
            t = time.perf_counter(); pipeline_predict(); pred.append(time.perf_counter() - t)
        t_pred, t_fwd = statistics.median(pred), statistics.median(fwd)
        voxels = volume.size
        print(f"prediction {args.volume}³ volume, {n_windows} windows of {args.patch}³ (overlap {args.overlap}): "
              f"predict_volume {voxels / t_pred / 1e6:6.2f} Mvox/s   bare forward {voxels / t_fwd / 1e6:6.2f} Mvox/s   "
              f"overhead {t_pred / t_fwd - 1:+.1%}")


if __name__ == "__main__":
    main()
