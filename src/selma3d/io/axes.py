"""A (z, y, x) view of an n-D array whose other axes (time, channel, ...) are fixed at one index.

Files from other tools are often 4D/5D (t, c, z, y, x) with a single channel and time point.
:class:`ZYXView` presents them with the protocol the sampling and inference code relies on
(``shape``, ``dtype``, ``ndim``, numpy basic slicing returning ``np.ndarray``) and translates each
index, so a region read still touches only the chunks or pages it covers.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def expand_key(key, ndim: int = 3) -> tuple:
    """A basic numpy index as exactly ``ndim`` entries (``...`` and missing axes become ``:``)."""
    if not isinstance(key, tuple):
        key = (key,)
    if sum(k is Ellipsis for k in key) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if Ellipsis in key:
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1:]
    if len(key) > ndim:
        raise IndexError(f"too many indices: array is {ndim}-dimensional, {len(key)} were indexed")
    return key + (slice(None),) * (ndim - len(key))


class ZYXView:
    """``base`` (any array-like with basic slicing) seen as (z, y, x).

    ``fixed`` has one entry per axis of ``base``: ``None`` for the z, y and x axes (in that
    order), an ``int`` for an axis held at that index. ``path`` names the file for messages and
    for the fingerprints that resumable conversions and predictions keep.
    """

    ndim = 3

    def __init__(self, base: Any, fixed: Sequence[int | None], path=None, keep: Any = None):
        fixed = tuple(fixed)
        if sum(f is None for f in fixed) != 3 or len(fixed) != len(base.shape):
            raise ValueError(f"fixed={fixed} must leave exactly 3 of the {len(base.shape)} axes free")
        self.base, self.fixed, self.path = base, fixed, path
        self._keep = keep  # an object the base needs alive (an open TiffFile)
        self.shape = tuple(int(n) for n, f in zip(base.shape, fixed) if f is None)
        self.dtype = np.dtype(base.dtype)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __repr__(self) -> str:
        return f"ZYXView({self.path or type(self.base).__name__}, shape={self.shape}, dtype={self.dtype})"

    def __array__(self, dtype=None, copy=None):
        data = self[...]
        return data if dtype is None else data.astype(dtype, copy=False)

    def __getitem__(self, key) -> np.ndarray:
        free = iter(expand_key(key, 3))
        full = tuple(next(free) if f is None else f for f in self.fixed)
        return np.asarray(self.base[full])
