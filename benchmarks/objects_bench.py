"""Objects across blocks: `selma3d stats` (blockwise labels + moments table, from Zarr on disk)
versus the whole-volume reference (whole arrays read into memory, cc3d + regionprops_table), in
one process, on a volume that fits in memory.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/objects_bench.py [--shape 128 256 256] [--block 64 128 128]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/objects_bench.py --tree [--shape 96 192 192] [--block 48 96 96] [--halo 8]

Spots: checks that the two tables are identical (same objects, matched through the label arrays;
exact integers, floats to 1e-9) and that the label volumes are equal up to renumbering; prints both
times and their ratio, and the peak memory of each (tracemalloc, numpy allocations).
``--tree``: a synthetic vessel network (selma3d.data.phantoms.vessel_tree, spacing 2×1×1 µm);
`selma3d stats --type tree` (skeleton per block with a halo, joined skan graph) against
skimage.skeletonize + skan.summarize on the whole volume: skeleton voxels that differ, total
length, number of branches and the time of both (skan's numba functions are compiled first).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import cc3d
import fastremap
import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.measure import regionprops_table

from selma3d.io.volume import open_volume
from selma3d.io.zarr_convert import convert_to_zarr
from selma3d.objects.pipeline import run_stats

PROPERTIES = ("label", "centroid", "area", "bbox", "intensity_mean", "intensity_max")


def phantom(shape, seed=0):
    """c-Fos-like: ~1 blob per 4000 voxels (radius ~2), int16 image with noise and bright blobs."""
    rng = np.random.default_rng(seed)
    seeds = rng.random(shape) < 1 / 4000
    mask = ndimage.binary_dilation(seeds, ndimage.generate_binary_structure(3, 1), iterations=2)
    image = (rng.normal(300, 40, shape) + 1500 * mask).astype(np.int16)
    return mask.astype(np.uint8), image


def reference(mask_path, image_path):
    mask = np.asarray(open_volume(mask_path)[:])
    image = np.asarray(open_volume(image_path)[:])
    labels = cc3d.connected_components(mask, connectivity=26)
    return labels, pd.DataFrame(regionprops_table(labels, image, properties=PROPERTIES))


def timed(fn):
    tracemalloc.start()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak


def compare(out: Path, labels_ref, table_ref) -> float:
    labels = np.asarray(open_volume(out / "labels.zarr")[:])
    same_labels = np.array_equal(fastremap.renumber(labels.astype(np.uint64), in_place=False)[0],
                                 fastremap.renumber(labels_ref.astype(np.uint64), in_place=False)[0])
    assert same_labels, "label volumes differ beyond renumbering"
    table = pd.read_parquet(out / "objects.parquet")
    assert len(table) == len(table_ref), (len(table), len(table_ref))
    flat, flat_ref = labels.ravel(), labels_ref.ravel()
    first = np.unique(flat, return_index=True)[1][1:]
    to_ref = dict(zip(flat[first].astype(int), flat_ref[first].astype(int)))
    ref = table_ref.set_index("label").loc[[to_ref[i] for i in table["id"]]]
    worst = 0.0
    for axis, name in enumerate("zyx"):
        worst = max(worst, float(np.abs(table[f"centroid_{name}"].to_numpy() - ref[f"centroid-{axis}"].to_numpy()).max()))
        assert np.array_equal(table[f"bbox_{name}0"], ref[f"bbox-{axis}"])
        assert np.array_equal(table[f"bbox_{name}1"], ref[f"bbox-{axis + 3}"])
    assert np.array_equal(table["volume_voxels"], ref["area"])
    assert np.array_equal(table["intensity_max"], ref["intensity_max"])
    worst = max(worst, float(np.abs(table["intensity_mean"].to_numpy() - ref["intensity_mean"].to_numpy()).max()))
    assert worst < 1e-9, worst
    return worst


def tree(args) -> None:
    import skan
    import zarr
    from skimage.morphology import skeletonize

    from selma3d.data.phantoms import vessel_tree

    shape, spacing = tuple(args.shape), (2.0, 1.0, 1.0)
    _, mask = vessel_tree(shape, spacing, np.random.default_rng(0)).rasterize(0, shape[0])
    warm = np.zeros((5, 5, 5), bool)
    warm[2, 1:4, 2] = True
    skan.summarize(skan.Skeleton(warm), separator="_")  # compile skan's numba functions outside the timings
    folder = Path(tempfile.mkdtemp(prefix="objects_bench_"))
    try:
        mask_path = convert_to_zarr(mask.astype(np.uint8), folder / "mask.zarr", chunks=64, spacing=spacing,
                                    progress=False)

        def whole():
            binary = np.asarray(open_volume(mask_path)[:]) > 0
            skeleton = skeletonize(binary)
            return skeleton, skan.summarize(skan.Skeleton(skeleton, spacing=spacing), separator="_")

        (skeleton, reference), seconds_ref, peak_ref = timed(whole)
        out = folder / "stats"
        _, seconds, peak = timed(lambda: run_stats(mask_path, out, kind="tree", block_size=args.block,
                                                   halo=args.halo))
        ours = np.asarray(zarr.open_group(str(out / "skeleton.zarr"), mode="r")["0"][:]) > 0
        branches = pd.read_parquet(out / "branches.parquet")
        length, expected = branches["length_um"].sum(), reference["branch_distance"].sum()
        print(f"vessel phantom {shape} at {spacing} um ({mask.mean():.1%} foreground), blocks {tuple(args.block)}, "
              f"halo {args.halo}")
        print(f"skeleton voxels differing from the whole-volume skeleton: {int((ours != skeleton).sum())} of "
              f"{int(skeleton.sum())}; total length {length:.1f} vs {expected:.1f} um "
              f"({length / expected - 1:+.3%}); branches {len(branches)} vs {len(reference)}")
        print(f"whole volume (skeletonize + skan): {seconds_ref:.2f} s, peak {peak_ref / 2**20:.0f} MiB; "
              f"selma3d stats --type tree: {seconds:.2f} s, peak {peak / 2**20:.0f} MiB; "
              f"ratio {seconds / seconds_ref:.2f}x")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=None)
    parser.add_argument("--block", type=int, nargs=3, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tree", action="store_true", help="the tree-like (skeleton) comparison instead")
    parser.add_argument("--halo", type=int, default=8)
    args = parser.parse_args()
    if args.tree:
        args.shape, args.block = args.shape or (96, 192, 192), args.block or (48, 96, 96)
        return tree(args)
    args.shape, args.block = args.shape or (128, 256, 256), args.block or (64, 128, 128)

    folder = Path(tempfile.mkdtemp(prefix="objects_bench_"))
    try:
        mask, image = phantom(tuple(args.shape))
        mask_path = convert_to_zarr(mask, folder / "mask.zarr", chunks=64, progress=False)
        image_path = convert_to_zarr(image, folder / "image.zarr", chunks=64, progress=False)
        del mask, image
        best_ref = best_blockwise = np.inf
        for repeat in range(args.repeats):
            (labels_ref, table_ref), seconds_ref, peak_ref = timed(lambda: reference(mask_path, image_path))
            best_ref = min(best_ref, seconds_ref)
            out = folder / f"stats{repeat}"
            _, seconds, peak = timed(lambda: run_stats(mask_path, out, image=image_path, block_size=args.block))
            best_blockwise = min(best_blockwise, seconds)
            worst = compare(out, labels_ref, table_ref)
        voxels = int(np.prod(args.shape))
        print(f"volume {tuple(args.shape)} ({voxels / 1e6:.1f} M voxels), blocks {tuple(args.block)}, "
              f"{len(table_ref)} objects; tables identical (max float difference {worst:.1e}), "
              "labels equal up to renumbering")
        print(f"whole volume (read + cc3d + regionprops_table): {best_ref:.2f} s, peak {peak_ref / 2**20:.0f} MiB")
        print(f"selma3d stats (blockwise, writes labels.zarr, CSV, Parquet, density): {best_blockwise:.2f} s, "
              f"peak {peak / 2**20:.0f} MiB")
        print(f"ratio blockwise / whole: {best_blockwise / best_ref:.2f}x (best of {args.repeats})")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
