"""Synthetic dataset generation: preset wall times, and memory of a full-preset volume.

The full preset's unannotated volumes (1024³ voxels and more) are imaged slab by slab. This
script builds the phantom of one such volume (all primitives of the whole 1024³ world), then
images its first ``--planes`` planes, twice as many, and reports wall time per plane and the
peak resident memory after each, so that the growth of memory with the number of planes
(should be none) is visible. Run:

    .venv/bin/python benchmarks/bench_synthetic.py [--structure vessel] [--planes 32] [--presets]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--structure", default="vessel")
    parser.add_argument("--planes", type=int, default=32)
    parser.add_argument("--presets", action="store_true", help="also time the tiny and small presets")
    args = parser.parse_args()

    from selma3d.data.synthetic import PRESETS, make_dataset, volume_imager

    if args.presets:
        for preset in ("tiny", "small"):
            out = Path(tempfile.mkdtemp()) / preset
            t = time.perf_counter()
            make_dataset(out, preset=preset, seed=0)
            print(f"preset {preset}: {time.perf_counter() - t:.1f} s, "
                  f"{sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 1e6:.1f} MB")
            shutil.rmtree(out.parent)

    shape = PRESETS["full"].unannotated[args.structure][0]
    base = peak_rss_mb()
    t = time.perf_counter()
    imager = volume_imager(args.structure, shape, seed=0)
    t_scene = time.perf_counter() - t
    print(f"{args.structure} {shape}: {imager.scene.n_primitives} primitives in {t_scene:.1f} s; "
          f"peak RSS {peak_rss_mb():.0f} MB (before: {base:.0f} MB)")
    depth = PRESETS["full"].slab_depth
    done, results, t0 = 0, [], time.perf_counter()
    for target in (args.planes, 2 * args.planes, 3 * args.planes):
        while done < target:
            image, _label = imager.render(done, min(done + depth, target))
            done += image.shape[0]
        results.append((target, time.perf_counter() - t0, peak_rss_mb()))
        print(f"  planes 0..{target}: {results[-1][1] / target:.2f} s/plane, peak RSS {results[-1][2]:.0f} MB")
    full_volume_mb = shape[0] * shape[1] * shape[2] * 2 / 1e6
    print(f"peak RSS ratio ({3 * args.planes} planes / {args.planes} planes): "
          f"{results[2][2] / results[0][2]:.2f}; the int16 volume alone would be {full_volume_mb:.0f} MB; "
          f"estimated time for the whole volume: {results[2][1] / done * shape[0] / 60:.1f} min")

if __name__ == "__main__":
    main()
