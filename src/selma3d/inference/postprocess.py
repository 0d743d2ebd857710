"""Post-processing of predicted masks: drop tiny connected components.

The BioAI team removed 26-connected components smaller than 5 voxels from their predictions;
isolated single-voxel false positives cost Dice and, worse, inflate the β0 (component count) error.
"""

from __future__ import annotations

import cc3d
import numpy as np

from ..errors import InputError

DEFAULT_MIN_SIZE = 5


def remove_small_components(mask: np.ndarray, min_size: int = DEFAULT_MIN_SIZE) -> np.ndarray:
    """Binary uint8 copy of ``mask`` (> 0) without 26-connected components of < ``min_size`` voxels.

    ``min_size`` ≤ 1 keeps everything.
    """
    if min_size < 0:
        raise InputError(f"--min-size must be >= 0, got {min_size}")
    binary = np.ascontiguousarray(np.asarray(mask) > 0, dtype=np.uint8)
    if binary.ndim != 3:
        raise InputError(f"expected a 3D mask, got shape {binary.shape}")
    if min_size <= 1 or not binary.any():
        return binary
    return cc3d.dust(binary, threshold=int(min_size), connectivity=26, in_place=True)
