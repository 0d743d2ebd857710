"""Volume I/O benchmark: TIFF slice folder → OME-Zarr conversion speed, and random 64³ patch reads
from the TIFF folder (baseline) versus the Zarr store, in one process.

    .venv/bin/python benchmarks/io_bench.py [--shape 256 512 512] [--patches 50] [--patch 64]

Both readers read the same random patches and the results are compared for equality. The files
are freshly written, so both are likely in the OS page cache: the numbers measure decoding and
per-file overhead, not disk speed (cold-cache reads favour Zarr even more).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from selma3d.io.tiffstack import TiffStack, write_slices
from selma3d.io.zarr_convert import convert_to_zarr
from selma3d.io.zarrstore import open_zarr_volume


def synthetic_slices(shape, seed):
    """LSM-like int16 slices: smooth background, noise and bright blobs (compresses like real data)."""
    rng = np.random.default_rng(seed)
    z, y, x = shape
    coarse = rng.normal(300, 60, (z // 16 + 2, y // 32 + 2, x // 32 + 2))
    blobs = [(rng.integers(0, z), rng.integers(0, y), rng.integers(0, x)) for _ in range(z * y * x // 200_000 + 1)]
    yy, xx = np.mgrid[0:y, 0:x]
    for k in range(z):
        plane = np.kron(coarse[k // 16], np.ones((32, 32)))[:y, :x]
        for bz, by, bx in blobs:
            if abs(bz - k) < 4:
                plane += 2000 * np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / 18.0 - (bz - k) ** 2 / 4.0)
        plane += rng.normal(0, 25, (y, x))
        yield np.clip(plane, -32768, 32767).astype(np.int16)


def time_patches(volume, corners, size):
    start = time.perf_counter()
    patches = [np.asarray(volume[z:z + size, y:y + size, x:x + size]) for z, y, x in corners]
    return len(corners) / (time.perf_counter() - start), patches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 512, 512), metavar=("Z", "Y", "X"))
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--patches", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temp dir, removed)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="io_bench_", dir=args.workdir))
    try:
        shape = tuple(args.shape)
        nbytes = int(np.prod(shape)) * 2
        t0 = time.perf_counter()
        write_slices(work / "slices", synthetic_slices(shape, args.seed))
        t_write = time.perf_counter() - t0
        tiff_bytes = sum(p.stat().st_size for p in (work / "slices").iterdir())
        print(f"volume {shape} int16, {nbytes / 1e6:.0f} MB; wrote TIFF slices in {t_write:.1f} s")

        stack = TiffStack(work / "slices")
        t0 = time.perf_counter()
        convert_to_zarr(stack, work / "volume.zarr", chunks=args.chunks, verify=False, progress=False)
        t_convert = time.perf_counter() - t0
        t0 = time.perf_counter()
        shutil.rmtree(work / "volume.zarr")
        convert_to_zarr(stack, work / "volume.zarr", chunks=args.chunks, verify=True, progress=False)
        t_convert_verify = time.perf_counter() - t0
        zarr_bytes = sum(p.stat().st_size for p in (work / "volume.zarr").rglob("*") if p.is_file())
        print(f"convert (level 0 + pyramid): {t_convert:.2f} s = {nbytes / 1e6 / t_convert:.1f} MB/s; "
              f"with verification: {t_convert_verify:.2f} s = {nbytes / 1e6 / t_convert_verify:.1f} MB/s")
        print(f"size on disk: TIFF {tiff_bytes / 1e6:.0f} MB, Zarr (all levels) {zarr_bytes / 1e6:.0f} MB "
              f"(compression {tiff_bytes / zarr_bytes:.2f}x)")

        rng = np.random.default_rng(args.seed + 1)
        p = args.patch
        corners = [tuple(int(rng.integers(0, s - p + 1)) for s in shape) for _ in range(args.patches)]
        zarr_volume = open_zarr_volume(work / "volume.zarr")
        time_patches(stack, corners[:2], p)  # warm-up (imports, page cache of headers)
        time_patches(zarr_volume, corners[:2], p)
        tiff_rate, tiff_patches = time_patches(stack, corners, p)
        zarr_rate, zarr_patches = time_patches(zarr_volume, corners, p)
        assert all(np.array_equal(a, b) for a, b in zip(tiff_patches, zarr_patches)), "readers disagree"
        print(f"random {p}^3 patches: TIFF folder {tiff_rate:.1f}/s, Zarr {zarr_rate:.1f}/s, "
              f"ratio Zarr/TIFF = {zarr_rate / tiff_rate:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
