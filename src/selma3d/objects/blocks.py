"""The block grid of a whole volume and bounded reads of it.

The grid itself (:class:`~selma3d.blockgrid.Block`, :func:`~selma3d.blockgrid.block_grid`) is the one
blockwise prediction uses.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..blockgrid import Block
from ..errors import InputError

DEFAULT_BLOCK_SIZE = (128, 256, 256)


def parse_triple(text: str | Sequence | int | None, flag: str, kind=int, default=None) -> tuple | None:
    """``"64"`` or ``"32,64,64"`` (or a number / sequence) → a positive (z, y, x) triple."""
    if text is None:
        return default
    if isinstance(text, str):
        try:
            values = [kind(v) for v in text.replace(",", " ").split()]
        except ValueError:
            raise InputError(f"{flag} expects N or Z,Y,X numbers, got {text!r}") from None
    else:
        values = list(text) if isinstance(text, (list, tuple)) else [text]
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"{flag} expects one or three positive numbers (z,y,x), got {text!r}")
    return tuple(kind(v) for v in values)


def grown(block: Block, halo: Sequence[int], shape: Sequence[int]) -> tuple[slice, slice, slice]:
    """``block``'s core grown by ``halo`` voxels per side, clipped to the volume."""
    return tuple(slice(max(0, a - h), min(n, b + h)) for a, b, h, n in zip(block.start, block.stop, halo, shape))


def read(volume, region: tuple[slice, ...]) -> np.ndarray:
    """``volume[region]`` as a numpy array (one bounded read, whatever the array-like)."""
    return np.asarray(volume[region])


def read_binary(volume, region: tuple[slice, ...]) -> np.ndarray:
    """The mask in ``region`` binarized with ``> 0`` (DESIGN.md)."""
    return read(volume, region) > 0
