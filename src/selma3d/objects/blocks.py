"""The block grid of a whole volume and bounded reads of it.

Kept here rather than imported from :mod:`selma3d.inference.blockwise` so that the object
statistics do not depend on the prediction engine's internals; the geometry is the same (C order,
z slowest, smaller blocks at the far edges).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import InputError

DEFAULT_BLOCK_SIZE = (128, 256, 256)


@dataclass(frozen=True)
class Block:
    """One cell of the grid: flat ``index``, ``grid_index`` and its ``[start, stop)`` per axis."""

    index: int
    grid_index: tuple[int, int, int]
    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    @property
    def core(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop))


def block_grid(shape: Sequence[int], block_size: Sequence[int]) -> list[Block]:
    """The blocks tiling ``shape`` in C order (z slowest); edge blocks are smaller."""
    counts = [math.ceil(n / b) for n, b in zip(shape, block_size)]
    blocks = []
    for flat, grid_index in enumerate(np.ndindex(*counts)):
        start = tuple(int(i * b) for i, b in zip(grid_index, block_size))
        stop = tuple(min(s + b, n) for s, b, n in zip(start, block_size, shape))
        blocks.append(Block(flat, tuple(int(i) for i in grid_index), start, stop))
    return blocks


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
