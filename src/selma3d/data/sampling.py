"""Random 3D patches from huge unannotated volumes, for self-supervised pretraining.

Volumes (TIFF slice folders, Zarr stores, or any array-like with numpy slicing) are opened
lazily and only the window of one patch is ever read, so memory stays bounded whatever the
volume size. Patches pass a foreground filter (raw intensity > ``fg_threshold`` in at least
``fg_fraction`` of the voxels, as the DINOv2 team did), can be downsampled in xy by reading a
``factor``-times larger window and average-pooling it (the teams used 1/3 and 1/4), and are
normalized with percentiles estimated once per volume from a bounded subsample. Structures are
balanced: draw a structure uniformly, then one of its volumes.

:class:`PatchDataset` is an endless ``torch`` IterableDataset: each DataLoader worker opens the
volumes itself; every patch is drawn from a random stream of its own, seeded by (seed, DDP rank,
global sample index), so a training step sees the same patches whatever the number of workers
and wherever a run was killed and resumed.
"""

from __future__ import annotations

import itertools
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InputError
from .normalize import DEFAULT_NORMALIZATION, Normalization, normalize

DEFAULT_FG_THRESHOLD = 500.0
DEFAULT_FG_FRACTION = 0.1
DEFAULT_MAX_TRIES = 20
#: stream tag of the per-sample generators (keeps them apart from other seeded streams)
SAMPLE_STREAM = 0x5A3


def sample_seed(seed: int, rank: int, index: int) -> list[int]:
    """Entropy of global sample ``index`` on DDP rank ``rank``, for ``np.random.default_rng``:
    a sample depends on these alone, never on the worker that drew it or on earlier draws."""
    return [int(seed), SAMPLE_STREAM, int(rank), int(index)]


@dataclass(frozen=True)
class VolumeSource:
    """One unannotated volume: its structure, a name, and where to read it.

    ``array`` (an already opened array-like) wins over ``path``; it is for in-memory data and
    tests. A path is opened with :func:`selma3d.io.volume.open_volume` in each worker.
    """

    structure: str
    name: str
    path: str | None = None
    array: Any = None


def volumes_from_dataset(root: str | os.PathLike,
                         structures: Sequence[str] | None = None) -> list[VolumeSource]:
    """The unannotated volumes of a dataset folder (DESIGN.md layout) as sources."""
    from .layout import load_dataset

    dataset = load_dataset(root)
    sources = [VolumeSource(v.structure, f"{v.structure}/{v.name}", str(v.path))
               for v in dataset.unannotated_volumes(list(structures) if structures else None)]
    if not sources:
        wanted = f" for structures {', '.join(structures)}" if structures else ""
        raise InputError(f"{Path(root) / 'unannotated'}: no unannotated volumes found{wanted}")
    return sources


def _default_opener(path: str):
    from ..io.volume import open_volume

    return open_volume(path)


def _as_triple(size: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(size, (int, np.integer)):
        size = (int(size),) * 3
    size = tuple(int(s) for s in size)
    if len(size) != 3 or min(size) < 1:
        raise InputError(f"patch size must be one or three positive integers, got {size}")
    return size


def read_window(volume, start: Sequence[int], window: Sequence[int]) -> np.ndarray:
    """Read ``volume[start : start + window]``, padding by edge replication where the window
    sticks out of a volume smaller than it (only the overlapping part is read)."""
    shape = tuple(int(s) for s in volume.shape[-3:])
    lo = [max(0, int(s)) for s in start]
    hi = [min(n, int(s) + int(w)) for s, w, n in zip(start, window, shape)]
    block = np.asarray(volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
    pads = [(l - int(s), int(s) + int(w) - h) for s, w, l, h in zip(start, window, lo, hi)]
    if any(a or b for a, b in pads):
        block = np.pad(block, pads, mode="edge")
    return block


def downsample_xy(block: np.ndarray, factor: int) -> np.ndarray:
    """Average-pool a (z, y, x) block by ``factor`` in y and x (z is kept)."""
    if factor == 1:
        return block
    from skimage.measure import block_reduce

    return block_reduce(block.astype(np.float32, copy=False), (1, factor, factor), np.mean)


class PatchSampler:
    """Draws normalized foreground patches from a set of lazily opened volumes.

    One sampler lives in each process or DataLoader worker; it opens each volume on first use
    and keeps the handle (array-likes read lazily, so a handle costs no voxel memory).
    """

    def __init__(self, sources: Sequence[VolumeSource], patch_size: int | Sequence[int] = 32, *,
                 downsample_xy: int = 1, fg_threshold: float | None = DEFAULT_FG_THRESHOLD,
                 fg_fraction: float = DEFAULT_FG_FRACTION, max_tries: int = DEFAULT_MAX_TRIES,
                 normalize: bool = True, structures: Sequence[str] | None = None,
                 percentiles: dict[str, tuple[float, float]] | None = None,
                 opener: Callable[[str], Any] | None = None,
                 normalization: Normalization = DEFAULT_NORMALIZATION):
        if not sources:
            raise InputError("no volumes to sample patches from")
        if int(downsample_xy) < 1:
            raise InputError(f"downsample_xy must be >= 1, got {downsample_xy}")
        if not 0.0 <= float(fg_fraction) <= 1.0:
            raise InputError(f"fg_fraction must lie in [0, 1], got {fg_fraction}")
        self.sources = list(sources)
        self.patch_size = _as_triple(patch_size)
        self.factor = int(downsample_xy)
        self.fg_threshold = fg_threshold
        self.fg_fraction = float(fg_fraction)
        self.max_tries = max(1, int(max_tries))
        self.normalize = normalize
        self.normalization = normalization
        self.structures = list(structures) if structures else sorted({s.structure for s in sources})
        missing = {s.structure for s in self.sources} - set(self.structures)
        if missing:
            raise InputError(f"volumes of structures {sorted(missing)} not in {self.structures}")
        self._by_structure = {name: [i for i, s in enumerate(self.sources) if s.structure == name]
                              for name in self.structures}
        self._by_structure = {k: v for k, v in self._by_structure.items() if v}
        self._opener = opener or _default_opener
        self._open: dict[int, Any] = {}
        self.percentiles: dict[str, tuple[float, float]] = dict(percentiles or {})
        self._warned: set[str] = set()
        self.stats = {"patches": 0, "rejected": 0, "fallbacks": 0}

    # ------------------------------------------------------------------ volumes
    def volume(self, index: int):
        """The opened array-like of source ``index`` (opened once, then cached)."""
        if index not in self._open:
            source = self.sources[index]
            if source.array is not None:
                vol = source.array
            else:
                try:
                    vol = self._opener(source.path)
                except InputError:
                    raise
                except Exception as exc:  # unreadable volume: name it
                    raise InputError(f"{source.path}: cannot open volume ({exc})") from exc
            if len(vol.shape) != 3:
                raise InputError(f"{source.name}: expected a 3D (z, y, x) volume, got shape {tuple(vol.shape)}")
            self._open[index] = vol
        return self._open[index]

    def volume_percentiles(self, index: int) -> tuple[float, float]:
        """Normalization statistics (lo, hi) of a volume, estimated once from a bounded subsample."""
        name = self.sources[index].name
        if name not in self.percentiles:
            self.percentiles[name] = self.normalization.volume_statistics(self.volume(index))
        return self.percentiles[name]

    # ------------------------------------------------------------------ sampling
    def window_shape(self) -> tuple[int, int, int]:
        d, h, w = self.patch_size
        return d, h * self.factor, w * self.factor

    def _foreground_fraction(self, raw: np.ndarray) -> float:
        if self.fg_threshold is None or self.fg_fraction <= 0.0:
            return 1.0
        return float(np.count_nonzero(raw > self.fg_threshold)) / raw.size

    def choose_volume(self, rng: np.random.Generator) -> int:
        """A structure uniformly at random, then one of its volumes uniformly."""
        names = list(self._by_structure)
        members = self._by_structure[names[int(rng.integers(len(names)))]]
        return members[int(rng.integers(len(members)))]

    def sample_from(self, index: int, rng: np.random.Generator) -> dict:
        """One patch of volume ``index``: up to ``max_tries`` random windows until one passes
        the foreground filter; otherwise the most foreground-rich window and a warning."""
        vol = self.volume(index)
        window = self.window_shape()
        shape = tuple(int(s) for s in vol.shape)
        best, best_fraction, best_start = None, -1.0, None
        for _ in range(self.max_tries):
            start = [int(rng.integers(0, max(n - w, 0) + 1)) for n, w in zip(shape, window)]
            raw = downsample_xy(read_window(vol, start, window), self.factor)
            fraction = self._foreground_fraction(raw)
            if fraction > best_fraction:
                best, best_fraction, best_start = raw, fraction, start
            if fraction >= self.fg_fraction:
                break
            self.stats["rejected"] += 1
        else:
            self.stats["fallbacks"] += 1
            name = self.sources[index].name
            if name not in self._warned:
                self._warned.add(name)
                warnings.warn(
                    f"{name}: no patch with >= {self.fg_fraction:.0%} of voxels above "
                    f"{self.fg_threshold} in {self.max_tries} tries; using the most foreground-rich "
                    f"one ({best_fraction:.1%}). Lower --fg-threshold/--fg-fraction if this "
                    "volume is dim.", RuntimeWarning, stacklevel=2)
        image = best.astype(np.float32, copy=False)
        if self.normalize:
            image = normalize(image, *self.volume_percentiles(index))
        self.stats["patches"] += 1
        source = self.sources[index]
        return {"image": np.ascontiguousarray(image[None]),
                "structure": self.structures.index(source.structure),
                "volume": source.name, "start": tuple(best_start),
                "foreground": best_fraction}

    def sample(self, rng: np.random.Generator) -> dict:
        return self.sample_from(self.choose_volume(rng), rng)


def _distributed_rank() -> tuple[int, int]:
    """(rank, world size) of this process in a DDP job (1 process → (0, 1))."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except Exception:  # pragma: no cover - torch without distributed support
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


try:
    from torch.utils.data import IterableDataset as _IterableDataset
except ImportError:  # pragma: no cover - torch is a dependency
    _IterableDataset = object


class PatchDataset(_IterableDataset):
    """Endless stream of patch dicts ``{"image": float32 tensor (1, D, H, W), "structure": int,
    "volume": str}`` for a torch DataLoader with any number of workers.

    Each worker builds its own :class:`PatchSampler` (and so opens the volumes itself). Patch
    ``position`` of training step ``step`` (global index ``step * batch_size + position``) is
    drawn from a generator seeded by (seed, rank, index) alone: a DataLoader with ``batch_size``
    and ``W`` workers takes batch ``k`` from worker ``k mod W`` (its in-order round robin), so
    worker ``w`` makes the batches of steps ``start_step + w``, ``start_step + w + W``, ...
    Workers and DDP ranks draw different patches, and a run resumed at ``start_step`` sees
    exactly the patches the uninterrupted run saw. ``batch_size`` must be the DataLoader's.
    """

    def __init__(self, sources: Sequence[VolumeSource], patch_size: int | Sequence[int] = 32, *,
                 seed: int = 0, start_step: int = 0, rank: int | None = None, batch_size: int = 1,
                 opener: Callable[[str], Any] | None = None, **sampler_options):
        self.sources = list(sources)
        self.patch_size = _as_triple(patch_size)
        self.seed = int(seed)
        self.start_step = int(start_step)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {batch_size}")
        self.rank = rank
        self.opener = opener
        self.sampler_options = sampler_options
        self.structures = list(sampler_options.pop("structures", None)
                               or sorted({s.structure for s in self.sources}))
        self.percentiles: dict[str, tuple[float, float]] = dict(sampler_options.pop("percentiles", None) or {})
        # Validate the options now (in the main process) rather than inside a worker.
        PatchSampler(self.sources, self.patch_size, structures=self.structures, opener=opener,
                     **self.sampler_options)

    def make_sampler(self) -> PatchSampler:
        return PatchSampler(self.sources, self.patch_size, structures=self.structures,
                            percentiles=self.percentiles, opener=self.opener, **self.sampler_options)

    def prepare(self) -> dict[str, tuple[float, float]]:
        """Estimate every volume's percentiles here, once, so workers inherit them instead of
        each worker re-reading the subsample."""
        if self.sampler_options.get("normalize", True):
            sampler = self.make_sampler()
            for i in range(len(self.sources)):
                sampler.volume_percentiles(i)
            self.percentiles.update(sampler.percentiles)
        return dict(self.percentiles)

    def sample_indices(self, worker: int = 0, workers: int = 1):
        """The global sample indices this worker draws, in order (endless)."""
        for local_batch in itertools.count():
            step = self.start_step + worker + local_batch * workers
            yield from range(step * self.batch_size, (step + 1) * self.batch_size)

    def __iter__(self):
        import torch
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank = int(self.rank if self.rank is not None else _distributed_rank()[0])
        sampler = self.make_sampler()
        for index in self.sample_indices(worker, workers):
            item = sampler.sample(np.random.default_rng(sample_seed(self.seed, rank, index)))
            yield {"image": torch.from_numpy(item["image"]), "structure": item["structure"],
                   "volume": item["volume"]}
