"""The block grid of a whole volume and bounded reads of it.

The grid itself (:class:`~selma3d.blockgrid.Block`, :func:`~selma3d.blockgrid.block_grid`) is the one
blockwise prediction uses.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..blockgrid import Block

DEFAULT_BLOCK_SIZE = (128, 256, 256)


def grown(block: Block, halo: Sequence[int], shape: Sequence[int]) -> tuple[slice, slice, slice]:
    """``block``'s core grown by ``halo`` voxels per side, clipped to the volume."""
    return tuple(slice(max(0, a - h), min(n, b + h)) for a, b, h, n in zip(block.start, block.stop, halo, shape))


def read(volume, region: tuple[slice, ...]) -> np.ndarray:
    """``volume[region]`` as a numpy array (one bounded read, whatever the array-like)."""
    return np.asarray(volume[region])


def read_binary(volume, region: tuple[slice, ...]) -> np.ndarray:
    """The mask in ``region`` binarized with ``> 0`` (DESIGN.md)."""
    return read(volume, region) > 0
