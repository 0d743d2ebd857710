"""Blockwise whole-volume prediction versus one-shot in-memory prediction, in one process.

    .venv/bin/python benchmarks/blockwise_bench.py [--shape 64 256 256] [--patch 32 64 64]
        [--blocks 32,128,128 64,256,256] [--features 8 16 32] [--workers 1] [--threads 2]

Baseline: ``predict_probabilities`` (MONAI sliding windows, Gaussian blending, overlap 0.25) on the
whole in-memory volume, then threshold and ``remove_small_components``. Blockwise: the same model
and window settings through ``predict_whole_volume`` (in-memory input → OME-Zarr output, and TIFF
slice folder input → OME-Zarr output), i.e. with halo re-computation, volume percentiles, Zarr
writes, the exact component-filter pass and progress bookkeeping. The ratio blockwise/baseline
time is the price of bounded memory. Each measurement is the best of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def synthetic_volume(shape, seed=0):
    """LSM-like int16 volume: smooth background, noise, bright blobs."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    background = gaussian_filter(rng.normal(300, 60, shape), 8)
    spots = gaussian_filter((rng.random(shape) < 2e-4).astype(np.float32), 1.5) * 2e4
    return np.clip(background + spots + rng.normal(0, 25, shape), -32768, 32767).astype(np.int16)


def best_of(repeats, fn):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    from selma3d.inference.blockwise import predict_whole_volume, region_of, block_grid
    from selma3d.inference.postprocess import remove_small_components
    from selma3d.inference.predict import load_run, predict_probabilities, save_model_file
    from selma3d.io.tiffstack import write_slices
    from selma3d.io.volume import open_volume
    from selma3d.models import build_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 256, 256))
    parser.add_argument("--patch", type=int, nargs=3, default=(32, 64, 64))
    parser.add_argument("--blocks", nargs="+", default=["32,128,128", "64,256,256"])
    parser.add_argument("--features", type=int, nargs="+", default=(8, 16, 32))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (all runs)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape, patch = tuple(args.shape), tuple(args.patch)
    voxels = int(np.prod(shape))

    work = Path(tempfile.mkdtemp(prefix="blockwise_bench_"))
    try:
        torch.manual_seed(0)
        model = build_model("unet3d", features=tuple(args.features)).eval()  # instance norm, like real runs
        save_model_file(model, work / "run" / "model.pt")
        (work / "run" / "run.json").write_text(json.dumps({"patch_size": list(patch), "threshold": 0.5,
                                                           "normalization": {"method": "percentile"}}))
        run = load_run(work / "run", device="cpu")
        volume = synthetic_volume(shape)
        write_slices(work / "slices", volume)
        # a threshold near the median makes the mask (and the component filter) non-trivial
        probs = predict_probabilities(run.model, volume[:, :64, :64], patch, overlap=0.25)
        threshold = float(np.quantile(probs, 0.7))

        def one_shot():
            p = predict_probabilities(run.model, volume, patch, overlap=0.25)
            return remove_small_components(p > threshold, 5)

        base_s, base_mask = best_of(args.repeats, one_shot)
        print(f"volume {shape} ({voxels / 1e6:.1f} Mvox), unet3d features {tuple(args.features)}, patch {patch}, "
              f"torch threads {args.threads}, dask workers {args.workers}")
        print(f"one-shot in memory      : {base_s:7.2f} s  {voxels / base_s / 1e6:6.2f} Mvox/s  (baseline)")
        for spec in args.blocks:
            block = tuple(int(v) for v in spec.split(","))
            grid = block_grid(shape, block)
            halo = tuple(p // 2 for p in patch)
            read = sum(int(np.prod([s.stop - s.start for s in region_of(b, halo, patch, shape)])) for b in grid)
            for label, source in (("array", volume), ("tiff", work / "slices")):
                out = work / f"mask_{label}.zarr"

                def blockwise():
                    shutil.rmtree(out, ignore_errors=True)
                    predict_whole_volume(run, source, out, block_size=block, overlap=0.25, threshold=threshold,
                                         progress=False, workers=args.workers)
                    torch.set_num_threads(args.threads)
                    return open_volume(out)[...]

                seconds, mask = best_of(args.repeats, blockwise)
                agree = float((mask == base_mask).mean())
                print(f"blockwise {label:5s} {spec:>11s}: {seconds:7.2f} s  {voxels / seconds / 1e6:6.2f} Mvox/s  "
                      f"ratio {seconds / base_s:5.2f}x  ({len(grid)} blocks, regions read {read / voxels:4.2f}x "
                      f"the volume, mask agreement with one-shot {agree:.4%})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
