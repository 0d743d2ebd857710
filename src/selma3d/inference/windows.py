"""The sliding-window grid of a whole volume, grouped into blocks: one-pass blockwise prediction.

MONAI's ``sliding_window_inference`` (what :func:`~selma3d.inference.predict.sliding_window_probabilities`
runs on an in-memory volume) predicts every window of one global grid and blends the logits with a
Gaussian importance map: ``output = Σ w·logits / Σ w``. The grid, the map and the zero padding of
axes shorter than a window are taken here from MONAI itself (``dense_patch_slices``,
``_get_scan_interval``, ``compute_importance_map``), so a volume cut into blocks is covered by
exactly the windows, weights and padding of the one-pass run. Each window belongs to the block that
holds its start corner, so a block's windows spill only *forward* (to higher z, y, x) into later
blocks: blocks form a DAG (no cycles), and a block's sums are complete once its own windows and
the spill of its predecessors (its *producers*) are added. The spill travels through a small
overlap store (see :mod:`selma3d.inference.blockwise`).

Flip TTA is reproduced too: MONAI runs the grid on the flipped volume; that grid, mapped back to
the original coordinates, is the mirror image of the plain one, and each flip keeps its own sums
(``sigmoid(Σ w·l / Σ w)`` is averaged over flips, as in the one-pass code).

Written by hand because MONAI has no out-of-core sliding window (its ``buffer_steps`` still holds
the whole output in memory).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np

from ..errors import InputError

#: --precision choices: autocast dtype of the network (the blending stays float32)
PRECISIONS = ("fp32", "bf16", "fp16")
#: MONAI's default ``sigma_scale`` of the Gaussian importance map
SIGMA_SCALE = 0.125


def autocast(device, precision: str):
    """The mixed-precision context for ``precision`` on ``device`` (a no-op for fp32)."""
    import torch

    if precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def axis_starts(size: int, roi: int, overlap: float) -> np.ndarray:
    """Window starts along one axis, in volume coordinates, in MONAI's order.

    Negative (or running past ``size``) only where the axis is shorter than the window: MONAI
    then pads it with zeros, ``(roi - size) // 2`` voxels before and the rest after.
    """
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    padded = max(int(size), int(roi))
    interval = _get_scan_interval((padded,), (int(roi),), 1, (float(overlap),))
    starts = [s[0].start for s in dense_patch_slices((padded,), (int(roi),), interval)]
    return np.asarray(starts, dtype=np.int64) - (padded - int(size)) // 2


@dataclass(frozen=True)
class WindowGrid:
    """Every window of one whole-volume sliding-window pass, per TTA flip, and their blocks.

    ``flips``: the spatial axes (0 = z, 1 = y, 2 = x) mirrored in each TTA pass; ``((),)`` is
    the plain pass. ``block_size``: the output blocks the windows are grouped into.
    """

    shape: tuple[int, int, int]
    roi: tuple[int, int, int]
    overlap: float
    block_size: tuple[int, int, int]
    flips: tuple[tuple[int, ...], ...] = ((),)

    @cached_property
    def n_blocks(self) -> tuple[int, int, int]:
        return tuple(math.ceil(n / b) for n, b in zip(self.shape, self.block_size))

    def starts(self, flip_index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per axis, the window starts of pass ``flip_index`` in original volume coordinates."""
        flip = self.flips[flip_index]
        out = []
        for axis, (n, r) in enumerate(zip(self.shape, self.roi)):
            s = axis_starts(n, r, self.overlap)
            out.append(n - s - r if axis in flip else s)  # a mirrored window, mapped back
        return tuple(out)

    @cached_property
    def _owners(self) -> list[tuple[np.ndarray, ...]]:
        """Per flip and axis, the block index that holds each window start."""
        owners = []
        for f in range(len(self.flips)):
            owners.append(tuple(np.clip(np.floor_divide(s, b), 0, k - 1)
                                for s, b, k in zip(self.starts(f), self.block_size, self.n_blocks)))
        return owners

    def block_windows(self, grid_index: Sequence[int]) -> list[tuple[int, tuple[int, int, int]]]:
        """``(flip_index, start)`` of the windows that block ``grid_index`` predicts, in MONAI's
        order (per flip, z slowest)."""
        windows = []
        for f in range(len(self.flips)):
            per_axis = [s[o == i] for s, o, i in zip(self.starts(f), self._owners[f], grid_index)]
            if self.flips[f]:  # MONAI's order in a flipped pass is its order in flipped coordinates
                per_axis = [a[::-1] if axis in self.flips[f] else a for axis, a in enumerate(per_axis)]
            for start in np.stack(np.meshgrid(*per_axis, indexing="ij"), -1).reshape(-1, 3):
                windows.append((f, tuple(int(v) for v in start)))
        return windows

    def extent_stop(self, grid_index: Sequence[int]) -> tuple[int, int, int]:
        """Upper corner of the box a block accumulates into: its core, grown by its windows'
        forward spill, clipped to the volume (the box always starts at the block's start)."""
        stop = [min((i + 1) * b, n) for i, b, n in zip(grid_index, self.block_size, self.shape)]
        for f in range(len(self.flips)):
            per_axis = [s[o == i] for s, o, i in zip(self.starts(f), self._owners[f], grid_index)]
            if all(a.size for a in per_axis):
                stop = [max(st, min(int(a.max()) + r, n)) for st, a, r, n in zip(stop, per_axis, self.roi, self.shape)]
        return tuple(stop)

    @cached_property
    def importance(self) -> np.ndarray:
        """MONAI's Gaussian importance map of one window (float32, shape ``roi``)."""
        from monai.data.utils import compute_importance_map

        return compute_importance_map(self.roi, mode="gaussian", sigma_scale=SIGMA_SCALE,
                                      device="cpu").numpy().astype(np.float32)


def accumulate_windows(model, region: np.ndarray, region_start: Sequence[int], grid: WindowGrid,
                       windows: list[tuple[int, tuple[int, int, int]]], box_stop: Sequence[int],
                       batch_size: int = 4, precision: str = "fp32"):
    """Gaussian-weighted logit sums and weight sums of ``windows`` over the box
    ``[region_start, box_stop)``; returns two float32 arrays of shape (flips, *box).

    ``region``: the normalized input over the same box; window parts outside the volume read
    zeros (MONAI's padding). Windows run through ``model`` ``batch_size`` at a time under
    ``precision``; channel 0 of the output is the foreground logit.
    """
    import torch

    from ..utils.devices import model_device

    device = model_device(model)
    start = np.asarray(region_start, dtype=np.int64)
    box = tuple(int(b - s) for b, s in zip(box_stop, start))
    n_flips = len(grid.flips)
    sums = torch.zeros((n_flips, *box), dtype=torch.float32, device=device)
    counts = torch.zeros((n_flips, *box), dtype=torch.float32, device=device)
    if not windows:
        return sums.cpu().numpy(), counts.cpu().numpy()
    roi = np.asarray(grid.roi)
    lows = np.min([w for _, w in windows], axis=0) - start
    highs = np.max([w for _, w in windows], axis=0) + roi - start
    pad_lo = np.maximum(-lows, 0)
    pad_hi = np.maximum(highs - np.asarray(region.shape), 0)
    x = torch.from_numpy(np.ascontiguousarray(region, dtype=np.float32)).to(device)
    if pad_lo.any() or pad_hi.any():  # only on axes shorter than a window
        pads = [int(v) for axis in (2, 1, 0) for v in (pad_lo[axis], pad_hi[axis])]
        x = torch.nn.functional.pad(x, pads, mode="constant", value=0.0)
    origin = start - pad_lo  # volume coordinate of x[0, 0, 0]
    weights = torch.from_numpy(grid.importance).to(device)
    flipped_weights = [torch.flip(weights, flip) if flip else weights for flip in grid.flips]

    with torch.no_grad(), autocast(device, precision):  # no_grad is per thread: dask threads need their own
        for first in range(0, len(windows), batch_size):
            batch = windows[first:first + batch_size]
            inputs = []
            for f, w in batch:
                lo = np.asarray(w) - origin
                patch = x[lo[0]:lo[0] + roi[0], lo[1]:lo[1] + roi[1], lo[2]:lo[2] + roi[2]]
                flip = grid.flips[f]
                inputs.append((torch.flip(patch, flip) if flip else patch)[None, None])
            logits = model(torch.cat(inputs) if len(inputs) > 1 else inputs[0])
            for (f, w), out in zip(batch, logits[:, 0].float()):
                flip = grid.flips[f]
                out = torch.flip(out, flip) if flip else out
                weight = flipped_weights[f]
                contribution = out * weight
                lo = np.asarray(w) - start
                hi = lo + roi
                dst = tuple(slice(max(a, 0), min(b, n)) for a, b, n in zip(lo, hi, box))
                src = tuple(slice(d.start - a, d.stop - a) for d, a in zip(dst, lo))
                sums[(f, *dst)] += contribution[src]
                counts[(f, *dst)] += weight[src]
    return sums.cpu().numpy(), counts.cpu().numpy()


def blend(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Foreground probabilities from per-flip sums: ``mean_f sigmoid(sums_f / counts_f)``, as the
    one-pass code computes them; voxels no computed window covers (only next to skipped empty
    blocks) get 0."""
    import torch

    total = None
    for s, c in zip(torch.from_numpy(sums), torch.from_numpy(counts)):
        if bool((c > 0).all()):  # the usual case: one division, as MONAI's ``output /= count``
            p = torch.sigmoid(s / c)
        else:
            covered = c > 0
            p = torch.sigmoid(s / torch.where(covered, c, torch.ones_like(c)))
            p = torch.where(covered, p, torch.zeros_like(p))
        total = p if total is None else total.add_(p)
    return (total / len(sums)).numpy()
