"""The block grid of a whole volume, shared by blockwise prediction and the object statistics:
C order (z slowest), ``[start, stop)`` per axis, smaller blocks at the far edges."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


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
