"""A reader thread that fetches the next blocks' input while the current blocks compute.

Like a DataLoader with one worker and a bounded queue: ``take(i)`` returns block ``i``'s input
(read ahead in the background if it was foreseen, else read now) and queues the reads of the blocks
the dask scheduler will start next, at most ``depth`` waiting in memory. The guess follows dask's
local scheduler: among the blocks whose producers (the blocks they wait for) have all started, the
ones enabled most recently first (dask keeps runnable tasks on a stack), then by ``dask.order``
priority. Reads of TIFF rows (``os.pread``),
Zarr chunks (blosc) and numpy copies release the GIL, so they overlap the network's compute. A
guess the scheduler does not follow costs a region held a little longer, never a wrong result.
"""

from __future__ import annotations

import heapq
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Mapping, Sequence

import numpy as np

READER_THREAD = "selma3d-reader"


class RegionPrefetcher:
    """Read ``read(index)`` ahead of ``take(index)`` for the blocks of ``producers``
    (``{index: indices it waits for}``; indices outside the mapping count as done)."""

    def __init__(self, read: Callable[[int], np.ndarray], producers: Mapping[int, Sequence[int]], depth: int = 2):
        self._read = read
        self._depth = max(int(depth), 0)
        self._waiting = {i: {p for p in ps if p in producers} for i, ps in producers.items()}
        self._consumers: dict[int, list[int]] = {i: [] for i in producers}
        for i, ps in self._waiting.items():
            for p in ps:
                self._consumers[p].append(i)
        self._priority = _dask_priorities(self._waiting)
        self._enabled = 0  # how many takes so far: later-enabled blocks run first
        self._ready = [(0, self._priority[i], i) for i, ps in self._waiting.items() if not ps]
        heapq.heapify(self._ready)
        self._pending: dict[int, Future] = {}
        self._taken: set[int] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=READER_THREAD) if self._depth else None
        with self._lock:
            self._fill()

    def take(self, index: int) -> np.ndarray:
        with self._lock:
            future = self._pending.pop(index, None)
            self._taken.add(index)
            self._enabled += 1
            for consumer in self._consumers.get(index, ()):
                waiting = self._waiting[consumer]
                waiting.discard(index)
                if not waiting:
                    heapq.heappush(self._ready, (-self._enabled, self._priority[consumer], consumer))
            self._fill()
        return future.result() if future is not None else self._read(index)

    def _fill(self) -> None:
        while self._pool is not None and self._ready and len(self._pending) < self._depth:
            nxt = heapq.heappop(self._ready)[2]
            if nxt not in self._taken and nxt not in self._pending:
                self._pending[nxt] = self._pool.submit(self._read, nxt)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _dask_priorities(waits: Mapping[int, Sequence[int]]) -> dict[int, int]:
    """``dask.order`` priorities of the dependency graph (what dask uses to pick among tasks)."""
    from dask.order import order

    graph = {("block", i): (_noop, [("block", p) for p in ps]) for i, ps in waits.items()}
    return {key[1]: rank for key, rank in order(graph).items()}


def _noop(*args):
    return None
