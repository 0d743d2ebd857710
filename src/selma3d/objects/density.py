"""Object density map: how many object centroids fall in each coarse voxel.

A coarse voxel is ``factor``³ voxels of the mask; the map is written as a one-level OME-Zarr
image whose scale is ``factor`` × the voxel spacing and whose translation puts each coarse voxel's
centre at the centre of the fine voxels it covers. It is filled one slab of coarse z planes at a
time, from the object table (one row per object), never from the volume.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .omezarr import create_image, finish_image

DENSITY_DTYPE = np.uint32


def density_shape(shape: Sequence[int], factor: int) -> tuple[int, int, int]:
    return tuple(math.ceil(int(n) / factor) for n in shape)


def density_counts(centroids: np.ndarray, coarse_shape: Sequence[int], factor: int,
                   z_range: tuple[int, int] | None = None) -> np.ndarray:
    """Counts per coarse voxel of the (k, 3) voxel-index ``centroids`` (binned by ``floor(c /
    factor)``), for coarse z planes ``z_range`` (default all)."""
    z0, z1 = z_range or (0, coarse_shape[0])
    cells = np.floor(np.asarray(centroids, np.float64).reshape(-1, 3) / factor).astype(np.int64)
    cells = np.minimum(cells, np.asarray(coarse_shape) - 1)  # a centroid is inside the volume
    keep = (cells[:, 0] >= z0) & (cells[:, 0] < z1)
    cells = cells[keep]
    cells[:, 0] -= z0
    slab = (z1 - z0, int(coarse_shape[1]), int(coarse_shape[2]))
    flat = np.ravel_multi_index(cells.T, slab) if len(cells) else np.empty(0, np.int64)
    return np.bincount(flat, minlength=int(np.prod(slab))).reshape(slab).astype(DENSITY_DTYPE)


def write_density(centroids: np.ndarray, shape: Sequence[int], factor: int, store: str | os.PathLike,
                  spacing: Sequence[float], slab: int = 64) -> Path:
    """Write the density map of ``centroids`` in a volume of ``shape`` to ``store`` (OME-Zarr)."""
    coarse = density_shape(shape, factor)
    array = create_image(store, coarse, DENSITY_DTYPE, (slab, coarse[1], coarse[2]))
    for z0 in range(0, coarse[0], slab):
        z1 = min(z0 + slab, coarse[0])
        array[z0:z1] = density_counts(centroids, coarse, factor, (z0, z1))
    coarse_spacing = [float(s) * factor for s in spacing]
    shift = [float(s) * (factor - 1) / 2 for s in spacing]
    cell_mm3 = float(np.prod(coarse_spacing)) * 1e-9
    return finish_image(store, coarse_spacing, {"kind": "density", "factor": int(factor),
                                                "unit": "objects per coarse voxel",
                                                "coarse_voxel_mm3": cell_mm3}, translation=shift)
