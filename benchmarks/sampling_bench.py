"""Does the patch loader keep up with the SSL training step it feeds?

Writes one synthetic vessel volume as a TIFF slice folder and as OME-Zarr, then measures
(1) patches/s of the sampler in one process (TIFF, Zarr, with and without 3x xy downsampling),
(2) patches/s through a DataLoader with ``--workers`` workers, and
(3) patches/s consumed by BYOL training steps on the same patch size (fixed batch, so only
    the step is timed), and prints loader/training ratios (> 1: the loader keeps up).

    .venv/bin/python benchmarks/sampling_bench.py [--shape 96 256 256] [--patch 64] [--steps 6]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def patches_per_second(sampler, seconds: float, seed: int = 0) -> tuple[float, dict]:
    rng = np.random.default_rng(seed)
    sampler.sample(rng)  # open the volume, warm caches
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        sampler.sample(rng)
        n += 1
    return n / (time.perf_counter() - start), dict(sampler.stats)


def loader_patches_per_second(dataset, batch_size: int, workers: int, batches: int) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    it = iter(loader)
    next(it)  # worker start-up is not steady state
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - start)


def training_patches_per_second(patch: int, batch_size: int, steps: int, features) -> float:
    from selma3d.ssl import build_method

    torch.manual_seed(0)
    method = build_method("byol", patch_size=(patch,) * 3, model_options={"features": list(features)},
                          hidden_dim=256, projection_dim=128)
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-4)
    batch = {"image": torch.randn(batch_size, 1, patch, patch, patch)}

    def step(i):
        loss, _ = method.training_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.on_after_step(i, steps)

    step(0)
    start = time.perf_counter()
    for i in range(steps):
        step(i + 1)
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 256, 256))
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--features", type=int, nargs="+", default=(16, 32, 64, 128))
    parser.add_argument("--fg-fraction", type=float, default=0.05)
    args = parser.parse_args()

    from selma3d.data.sampling import PatchDataset, PatchSampler, VolumeSource
    from selma3d.data.synthetic import volume_imager, write_volume
    from selma3d.io.volume import open_volume
    from selma3d.io.zarr_convert import convert_to_zarr

    warnings.simplefilter("ignore", RuntimeWarning)
    with tempfile.TemporaryDirectory() as tmp:
        tiff = write_volume(Path(tmp) / "vessel_000", volume_imager("vessel", tuple(args.shape)))
        zarr_path = convert_to_zarr(tiff, Path(tmp) / "vessel_000.zarr", progress=False)
        volume = open_volume(tiff)
        print(f"volume {tuple(volume.shape)} {volume.dtype}; patch {args.patch}^3, batch {args.batch_size}, "
              f"foreground > 500 in >= {args.fg_fraction:.0%}")
        percentiles = {"v": PatchSampler([VolumeSource("vessel", "v", str(tiff))], 8).volume_percentiles(0)}
        options = dict(fg_threshold=500, fg_fraction=args.fg_fraction, percentiles=percentiles)

        rates = {}
        for label, path, factor in [("tiff", tiff, 1), ("zarr", zarr_path, 1), ("tiff, xy/3", tiff, 3),
                                    ("zarr, xy/3", zarr_path, 3)]:
            depth = args.patch
            size = (depth, args.patch, args.patch)
            shape = volume.shape
            if size[1] * factor > shape[1] or size[2] * factor > shape[2]:
                size = (depth, shape[1] // factor, shape[2] // factor)
            sampler = PatchSampler([VolumeSource("vessel", "v", str(path))], size, downsample_xy=factor, **options)
            rate, stats = patches_per_second(sampler, args.seconds)
            rates[label] = rate
            print(f"sampler {label:11s} patch {size}: {rate:7.1f} patches/s "
                  f"(rejected {stats['rejected']}, fallbacks {stats['fallbacks']} of {stats['patches']})")

        dataset = PatchDataset([VolumeSource("vessel", "v", str(tiff))], args.patch, seed=0, **options)
        loader_rate = loader_patches_per_second(dataset, args.batch_size, args.workers, batches=20)
        print(f"DataLoader tiff, {args.workers} workers: {loader_rate:7.1f} patches/s")

        train_rate = training_patches_per_second(args.patch, args.batch_size, args.steps, args.features)
        print(f"BYOL training (unet3d features {list(args.features)}, {torch.get_num_threads()} threads): "
              f"{train_rate:7.2f} patches/s = {train_rate / args.batch_size:.2f} steps/s")
        print(f"ratio loader/training (DataLoader, {args.workers} workers): {loader_rate / train_rate:7.1f}x")
        for label, rate in rates.items():
            print(f"ratio sampler {label}/training (one process): {rate / train_rate:7.1f}x")


if __name__ == "__main__":
    main()
