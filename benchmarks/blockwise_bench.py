"""Blockwise whole-volume prediction versus MONAI's sliding window on the in-memory volume, in one process.

    .venv/bin/python benchmarks/blockwise_bench.py [--shape 160 288 288] [--patch 32 64 64]
        [--overlap 0.25] [--blocks 128,256,256 64,128,128] [--features 2 4] [--threads 1]
        [--rss-shape 32 128 128] [--rss-block 32,64,64] [--repeats 1]

Baseline: MONAI ``sliding_window_inference`` (``predict_probabilities``: Gaussian blending, the same
window and overlap) on the whole in-memory volume normalized by the run's whole-volume statistics,
then threshold and ``remove_small_components(min_size=5)``. Blockwise: ``predict_whole_volume`` with
the same model and windows, from the in-memory array and from a TIFF slice folder, to an OME-Zarr
mask — i.e. with its overlap store, Zarr writes, the exact component-filter pass and progress
bookkeeping (``skip_empty=False``: every block has tissue here anyway, and the comparison is about
the same windows). Reported: time ratio blockwise / baseline, Dice of the masks, and whether the
disagreeing voxels sit at block faces (within 2 voxels of one) more than voxels in general do.

Memory: peak RSS of ``predict_whole_volume`` (TIFF folder in, Zarr out) in a fresh subprocess for a
volume of ``--rss-shape`` and one of 8x its voxels (2x per axis), same blocks and windows.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def synthetic_volume(shape, seed=0):
    """LSM-like int16 volume: smooth tissue background, noise, bright blobs (no empty blocks)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    background = gaussian_filter(rng.normal(300, 60, shape), 8)
    spots = gaussian_filter((rng.random(shape) < 2e-4).astype(np.float32), 1.5) * 2e4
    return np.clip(background + spots + rng.normal(0, 25, shape), -32768, 32767).astype(np.int16)


def make_run(folder: Path, patch, features, volume, overlap) -> float:
    """A random unet3d run (instance norm, as real runs); returns a threshold that puts ~30 % of
    the voxels in the mask, so that masks and the component filter are not trivial."""
    from selma3d.inference.predict import load_run, predict_probabilities, save_model_file
    from selma3d.models import build_model

    torch.manual_seed(0)
    model = build_model("unet3d", features=tuple(features)).eval()
    save_model_file(model, folder / "model.pt")
    (folder / "run.json").write_text(json.dumps({"patch_size": list(patch), "threshold": 0.5,
                                                 "normalization": {"method": "percentile"}}))
    run = load_run(folder, device="cpu")
    corner = volume[: 2 * patch[0], : 2 * patch[1], : 2 * patch[2]]
    probs = predict_probabilities(run.model, corner, patch, overlap=overlap, normalize=run.normalization)
    threshold = float(np.quantile(probs, 0.7))
    info = json.loads((folder / "run.json").read_text()) | {"threshold": threshold}
    (folder / "run.json").write_text(json.dumps(info))
    return threshold


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def near_faces(shape, block, width=2) -> np.ndarray:
    """True within ``width`` voxels of an inner block face."""
    near = np.zeros(shape, bool)
    for axis, (n, b) in enumerate(zip(shape, block)):
        coord = np.arange(n)
        offset = coord % b
        hit = ((offset < width) & (coord >= b)) | ((offset >= b - width) & (coord + width < n))
        index = [None, None, None]
        index[axis] = slice(None)
        near |= hit[tuple(index)]
    return near


def rss_child(args) -> None:
    """Runs in a subprocess: one blockwise prediction from disk; prints its peak RSS in MB."""
    from selma3d.inference.blockwise import predict_whole_volume

    torch.set_num_threads(args.threads)
    block = tuple(int(v) for v in args.rss_block.split(","))
    t0 = time.perf_counter()
    predict_whole_volume(args.rss_child[0], args.rss_child[1], args.rss_child[2], block_size=block,
                         overlap=args.overlap, progress=False, workers=1)
    seconds = time.perf_counter() - t0
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(160, 288, 288))
    parser.add_argument("--patch", type=int, nargs=3, default=(32, 64, 64))
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--blocks", nargs="+", default=["128,256,256", "64,128,128"])
    parser.add_argument("--features", type=int, nargs="+", default=(2, 4))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (all runs)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--rss-shape", type=int, nargs=3, default=(32, 128, 128))
    parser.add_argument("--rss-block", default="32,64,64")
    parser.add_argument("--skip-time", action="store_true")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)  # RUN INPUT OUTPUT
    args = parser.parse_args()
    if args.rss_child:
        return rss_child(args)

    from selma3d.data.normalize import normalize
    from selma3d.inference.blockwise import predict_whole_volume
    from selma3d.inference.postprocess import remove_small_components
    from selma3d.inference.predict import load_run, predict_probabilities
    from selma3d.io.tiffstack import write_slices
    from selma3d.io.volume import open_volume

    torch.set_num_threads(args.threads)
    shape, patch = tuple(args.shape), tuple(args.patch)
    voxels = int(np.prod(shape))
    work = Path(tempfile.mkdtemp(prefix="blockwise_bench_"))
    try:
        volume = synthetic_volume(shape)
        threshold = make_run(work / "run", patch, args.features, volume, args.overlap)
        run = load_run(work / "run", device="cpu")
        print(f"volume {shape} ({voxels / 1e6:.1f} Mvox), unet3d features {tuple(args.features)}, patch {patch}, "
              f"overlap {args.overlap}, torch threads {args.threads}, 1 dask worker")
        if not args.skip_time:
            write_slices(work / "slices", volume)

            def best_of(fn):
                """Best wall time and best process CPU time (all threads) of ``--repeats`` runs: on
                a shared machine wall time carries other jobs' load, CPU time does not."""
                times, cpus, result = [], [], None
                for _ in range(args.repeats):
                    t0, c0 = time.perf_counter(), time.process_time()
                    result = fn()
                    times.append(time.perf_counter() - t0)
                    cpus.append(time.process_time() - c0)
                return min(times), min(cpus), result

            def one_pass():
                image = normalize(volume, *run.normalization.statistics(volume))
                probs = predict_probabilities(run.model, image, patch, overlap=args.overlap, normalize=False)
                return remove_small_components(probs > threshold, 5)

            base_s, base_cpu, base_mask = best_of(one_pass)
            print(f"MONAI one pass in memory : {base_s:7.2f} s  {voxels / base_s / 1e6:6.3f} Mvox/s  "
                  f"CPU {base_cpu:7.2f} s  (baseline)")
            for spec in args.blocks:
                block = tuple(int(v) for v in spec.split(","))
                for label, source in (("array", volume), ("tiff", work / "slices")):
                    out = work / f"mask_{label}.zarr"

                    def blockwise():
                        shutil.rmtree(out, ignore_errors=True)
                        predict_whole_volume(run, source, out, block_size=block, overlap=args.overlap,
                                             threshold=threshold, skip_empty=False, progress=False, workers=1)
                        return open_volume(out)[...]

                    seconds, cpu, mask = best_of(blockwise)
                    wrong = mask != base_mask
                    faces = near_faces(shape, block)
                    at_faces = float(wrong[faces].sum() / max(wrong.sum(), 1))
                    n_blocks = int(np.prod([-(-n // b) for n, b in zip(shape, block)]))
                    print(f"blockwise {label:5s} {spec:>11s}: {seconds:7.2f} s  {voxels / seconds / 1e6:6.3f} Mvox/s  "
                          f"ratio {seconds / base_s:5.3f}x  CPU {cpu:7.2f} s ratio {cpu / base_cpu:5.3f}x  "
                          f"({n_blocks} blocks)  Dice {dice(mask, base_mask):.6f}  "
                          f"{int(wrong.sum())} voxels differ, {at_faces:.0%} of them within 2 voxels of a block face "
                          f"(faces hold {faces.mean():.0%} of the volume)")
        if not args.skip_rss:
            block = args.rss_block
            small = tuple(args.rss_shape)
            for factor in (1, 2):
                size = tuple(n * factor for n in small)
                folder = work / f"rss_{factor}"
                write_slices(folder, synthetic_volume(size, seed=factor))
                out = work / f"rss_{factor}.zarr"
                child = subprocess.run([sys.executable, __file__, "--rss-child", str(work / "run"), str(folder), str(out),
                                        "--rss-block", block, "--overlap", str(args.overlap),
                                        "--threads", str(args.threads)],
                                       capture_output=True, text=True, check=True)
                result = json.loads(child.stdout.strip().splitlines()[-1])
                print(f"peak RSS, TIFF folder {size} ({factor ** 3}x, {np.prod(size) / 1e6:.1f} Mvox), blocks {block}: "
                      f"{result['peak_rss_mb']:.0f} MB  ({result['seconds']:.1f} s)")
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
