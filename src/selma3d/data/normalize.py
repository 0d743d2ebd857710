"""Percentile normalization for networks: 0.05th and 99.95th percentiles → [-1, 1], clipped.

The percentiles of a whole LSM volume are estimated from a bounded random subsample of its
slices, so the cost does not grow with the volume (DESIGN.md, Conventions).
"""

from __future__ import annotations

import numpy as np

LOW_PERCENTILE = 0.05
HIGH_PERCENTILE = 99.95


def percentiles(values: np.ndarray, low: float = LOW_PERCENTILE,
                high: float = HIGH_PERCENTILE) -> tuple[float, float]:
    lo, hi = np.percentile(np.asarray(values, dtype=np.float64).ravel(), [low, high])
    return float(lo), float(hi)


def normalize(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] linearly to [-1, 1] and clip; float32 out."""
    array = np.asarray(array, dtype=np.float32)
    scale = max(float(hi) - float(lo), 1e-6)
    out = (array - np.float32(lo)) * np.float32(2.0 / scale) - np.float32(1.0)
    return np.clip(out, -1.0, 1.0, out=out)


def normalize_percentile(array: np.ndarray, low: float = LOW_PERCENTILE,
                         high: float = HIGH_PERCENTILE) -> np.ndarray:
    """Normalize a patch by its own percentiles."""
    lo, hi = percentiles(array, low, high)
    return normalize(array, lo, hi)


def estimate_volume_percentiles(volume, max_slices: int = 16, max_voxels: int = 2_000_000,
                                low: float = LOW_PERCENTILE, high: float = HIGH_PERCENTILE,
                                seed: int = 0) -> tuple[float, float]:
    """Percentiles of a lazily read (z, y, x) volume from a random subsample of slices.

    Reads at most ``max_slices`` z-slices and keeps at most ``max_voxels`` voxels of them, so
    memory stays bounded whatever the volume size.
    """
    rng = np.random.default_rng(seed)
    nz = int(volume.shape[0])
    zs = np.sort(rng.choice(nz, size=min(nz, max_slices), replace=False))
    per_slice = max(1, max_voxels // len(zs))
    samples = []
    for z in zs:
        plane = np.asarray(volume[int(z)]).ravel()
        if plane.size > per_slice:
            plane = plane[rng.choice(plane.size, size=per_slice, replace=False)]
        samples.append(plane.astype(np.float32))
    return percentiles(np.concatenate(samples), low, high)
