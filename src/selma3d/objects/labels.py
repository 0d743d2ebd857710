"""Instance labels of a whole-volume binary mask, block by block, equal to cc3d on the whole mask.

Three steps, each touching one block (or one block's faces) at a time:

1. **scan**: 26-connected components of each block alone (``cc3d``, the β0 convention of
   DESIGN.md); a block's components are numbered ``1..n`` locally. Only ``n`` and the block's six
   boundary planes of local labels (:func:`block_faces`) are kept.
2. **resolve**: every component gets a *node* number (blocks in grid order, then local number).
   Two nodes are the same object when a voxel of one is 26-adjacent to a voxel of the other across
   a block boundary: for each block and each axis, its first plane is compared with the last plane
   of the blocks before it along that axis — the face neighbour and, one voxel beyond its sides,
   the edge and corner neighbours (a diagonal through a corner is 26-connected). The equivalences
   are merged by :func:`scipy.sparse.csgraph.connected_components` (no hand-written union-find);
   objects are numbered ``1..K`` in order of their first node, so ids are consecutive.
3. **write**: each block's local components are recomputed (cc3d is deterministic, cheaper than
   storing them) and mapped through its lookup table to 64-bit global ids.

Memory: one block of the mask and its labels, plus the faces and one id per component of the
whole volume (the object table needs those anyway).
"""

from __future__ import annotations

from typing import Callable, Sequence

import cc3d
import numpy as np

from ..blockgrid import Block, block_grid
from .blocks import read_binary

LABEL_DTYPE = np.uint64


def local_components(binary: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of one block: labels ``1..n`` (0 = background) and ``n``."""
    labels, n = cc3d.connected_components(np.ascontiguousarray(binary, dtype=np.uint8), connectivity=26,
                                          return_N=True)
    return labels, int(n)


def block_faces(labels: np.ndarray) -> dict[str, np.ndarray]:
    """The first and last plane along each axis (``lo0``, ``hi0``, ``lo1`` ...), copied."""
    faces = {}
    for axis in range(3):
        faces[f"lo{axis}"] = np.ascontiguousarray(np.take(labels, 0, axis=axis))
        faces[f"hi{axis}"] = np.ascontiguousarray(np.take(labels, labels.shape[axis] - 1, axis=axis))
    return faces


def _others(axis: int) -> tuple[int, int]:
    return tuple(a for a in range(3) if a != axis)


def face_pairs(block: Block, axis: int, grid: dict[tuple, Block], faces_of: Callable[[int], dict],
               first_node: np.ndarray) -> np.ndarray:
    """Node pairs ``(k, 2)`` joined across ``block``'s lower boundary along ``axis``.

    The block's first plane ``U`` (its own nodes) is compared with the plane just before it, read
    from the last planes of the up to nine blocks before it along ``axis`` (offsets −1, 0, +1 on
    the other two axes) over ``block``'s extent grown by one voxel on those axes: a voxel of ``U``
    and any of its nine neighbours in that plane are 26-adjacent."""
    b, c = _others(axis)
    gi = block.grid_index
    if gi[axis] == 0:
        return np.empty((0, 2), np.int64)
    upper = faces_of(block.index)[f"lo{axis}"]
    upper = np.where(upper > 0, upper.astype(np.int64) + first_node[block.index], 0)
    h, w = upper.shape
    # the plane before, over [start_b - 1, stop_b + 1) x [start_c - 1, stop_c + 1); 0 outside the volume
    lower = np.zeros((h + 2, w + 2), np.int64)
    for db in (-1, 0, 1):
        for dc in (-1, 0, 1):
            key = list(gi)
            key[axis] -= 1
            key[b] += db
            key[c] += dc
            other = grid.get(tuple(key))
            if other is None:
                continue
            plane = faces_of(other.index)[f"hi{axis}"]
            nodes = np.where(plane > 0, plane.astype(np.int64) + first_node[other.index], 0)
            # overlap of the other block's extent with the grown window, in window coordinates
            lo_b, hi_b = max(other.start[b], block.start[b] - 1), min(other.stop[b], block.stop[b] + 1)
            lo_c, hi_c = max(other.start[c], block.start[c] - 1), min(other.stop[c], block.stop[c] + 1)
            if lo_b >= hi_b or lo_c >= hi_c:
                continue
            lower[lo_b - block.start[b] + 1:hi_b - block.start[b] + 1,
                  lo_c - block.start[c] + 1:hi_c - block.start[c] + 1] = \
                nodes[lo_b - other.start[b]:hi_b - other.start[b], lo_c - other.start[c]:hi_c - other.start[c]]
    pairs = []
    for db in range(3):
        for dc in range(3):
            shifted = lower[db:db + h, dc:dc + w]
            touching = (upper > 0) & (shifted > 0)
            if touching.any():
                pairs.append(np.stack([upper[touching], shifted[touching]], axis=1))
    if not pairs:
        return np.empty((0, 2), np.int64)
    return np.unique(np.concatenate(pairs), axis=0) - 1  # node numbers start at 0


def resolve(blocks: Sequence[Block], counts: Sequence[int],
            faces_of: Callable[[int], dict]) -> tuple[np.ndarray, np.ndarray]:
    """``(first_node, ids)``: node ``first_node[i] + j - 1`` is component ``j`` of block ``i``
    (``counts[i]`` components, faces from ``faces_of(i)``) and ``ids[node]`` its global id,
    consecutive from 1. See :func:`block_lut`."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    first_node = np.concatenate([[0], np.cumsum(np.asarray(counts, np.int64))])
    total = int(first_node[-1])
    grid = {b.grid_index: b for b in blocks}
    pairs = [face_pairs(block, axis, grid, faces_of, first_node) for block in blocks for axis in range(3)]
    pairs = np.concatenate(pairs) if pairs else np.empty((0, 2), np.int64)
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(total, total))
    # components are numbered in order of their smallest node: consecutive ids in block order
    _, component = connected_components(graph, directed=False)
    return first_node, component.astype(np.int64) + 1


def block_lut(first_node: np.ndarray, ids: np.ndarray, index: int) -> np.ndarray:
    """Lookup table local label → global id of block ``index`` (entry 0 = background)."""
    return np.concatenate([[0], ids[first_node[index]:first_node[index + 1]]]).astype(LABEL_DTYPE)


def relabel_block(mask, block: Block, lut: np.ndarray) -> np.ndarray:
    """The global labels of ``block``: its local components recomputed and mapped through ``lut``."""
    labels, n = local_components(read_binary(mask, block.core))
    if n + 1 != len(lut):
        raise RuntimeError(f"block {block.index}: {n} components now, {len(lut) - 1} when scanned "
                           "(the mask changed during the run?)")
    return lut[labels]


def label_blockwise(mask, block_size: Sequence[int], out) -> int:
    """Label ``mask`` block by block into the writable array-like ``out`` (same shape, 64-bit ids);
    returns the number of objects. The in-memory form of the three steps (faces kept in a dict);
    :func:`selma3d.objects.pipeline.run_stats` runs the same steps resumably from disk."""
    blocks = block_grid(mask.shape, block_size)
    faces, counts = {}, []
    for block in blocks:
        labels, n = local_components(read_binary(mask, block.core))
        faces[block.index] = block_faces(labels)
        counts.append(n)
    first_node, ids = resolve(blocks, counts, faces.__getitem__)
    for block in blocks:
        out[block.core] = relabel_block(mask, block, block_lut(first_node, ids, block.index))
    return int(ids.max()) if len(ids) else 0
