"""Out-of-core whole-volume segmentation at the cost of one pass: blocks, an overlap store, resume.

A light-sheet volume (10⁹–10¹¹ voxels) never fits in memory, so it is cut into a grid of *blocks*.
The windows are *not* chosen per block: the volume has one global sliding-window grid — the one
MONAI's ``sliding_window_inference`` uses on the whole volume with the same window, overlap and
Gaussian blending (:class:`~selma3d.inference.windows.WindowGrid`) — and each window is predicted
once, by the block holding its start corner. Its Gaussian-weighted logits and weights that fall
beyond that block (windows spill only forward: to higher z, y, x) are written to a small *overlap
store* (one ``.npy`` piece per producer/consumer pair under ``.selma3d_overlap/``, deleted once the
consumer is recorded done) and added by the receiving block before it blends. Every voxel therefore
gets the sums of the one-pass run — only the order of float additions differs — so probabilities
match MONAI on the whole in-memory volume to float rounding (~1e-7) and masks are identical.

Why this design rather than a halo: a halo (context read around each block) recomputes it for every
block — 2.6–3.3× one pass at usual sizes — and to be exact it must cover the network's receptive
field, which with instance norm (the default) is the whole window, since the window's statistics
normalize every voxel. The overlap store costs no extra network work; what it adds is writing and
reading the spill (two float32 values per spilled voxel) and a dependency of each block on its
up-to-seven lower neighbours, which dask schedules (a wavefront: blocks on one diagonal run in
parallel).

Normalization statistics come once from the whole volume (:meth:`Normalization.statistics`: all
voxels of a small volume, a subsample of whole slices of a large one; the same for a TIFF folder,
a Zarr store, a NIfTI file or an in-memory array, and the same as ``selma3d predict`` on a NIfTI
file), never per block. Blocks whose input (core and windows) holds no tissue — no voxel above
``lo + 5 % (hi - lo)`` of those statistics — are skipped without running the network and written as
0 (``skip_empty=False`` computes them).

Passes, each resumable block by block (finished blocks are listed in ``selma3d_prediction.json``
inside the output, written atomically):

1. ``predict``: probabilities > threshold → a uint8 mask (the *raw* mask when a component filter
   follows, else the final one); optionally the float32 probabilities.
2. ``filter``: 26-connected components smaller than ``min_size`` voxels removed, *exactly* as
   :func:`~selma3d.inference.postprocess.remove_small_components` would on the whole mask (see
   :func:`filter_block`); the ``min_size - 1`` voxel margin comes from the neighbours' rims
   (:class:`RimStore`, written by the predict pass), so each block decompresses only its own chunk.
3. ``export`` (TIFF output only): the mask written as one TIFF per z slice, one z-slab of blocks at
   a time, under hidden names that are made visible only when every slice exists.

The output only looks finished at the very end: a Zarr store gets its OME-NGFF ``multiscales``
metadata (which :func:`~selma3d.io.volume.open_volume` requires) last; a TIFF folder shows its
slices only once all are written, and the progress file says ``"complete": true`` last in both cases.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..blockgrid import Block, block_grid  # the grid is shared with selma3d.objects
from ..data.normalize import normalize
from ..errors import InputError, Selma3dError
from ..utils.atomic import atomic_path
from ..utils.journal import Wording, check_identity, read_journal, save_journal
from ..utils.triples import parse_triple
from .postprocess import DEFAULT_MIN_SIZE, remove_small_components
from .windows import PRECISIONS, WindowGrid, accumulate_windows, blend

DEFAULT_BLOCK_SIZE = (128, 256, 256)
PROGRESS_FILE = "selma3d_prediction.json"
PROGRESS_FORMAT = "selma3d-prediction/2"  # /1 had per-block halos: its partial outputs cannot resume
PROGRESS_WORDING = Wording(noun="progress file", format_noun="progress format", finished="holds a finished prediction",
                           mismatch_fix="use --overwrite to start again")
MASK_ARRAY = "0"  # level 0 of the OME-Zarr output
RAW_ARRAY = "selma3d_raw"  # thresholded mask before the component filter (deleted at the end)
PROBABILITIES_ARRAY = "probabilities"  # optional float32 foreground probabilities (Zarr output)
WORK_STORE = ".selma3d_work.zarr"  # inside a TIFF output folder: where the blocks are assembled
OVERLAP_STORE = ".selma3d_overlap"  # spill pieces between blocks (deleted when the predict pass ends)
RIM_STORE = ".selma3d_rims"  # each block's raw mask near its faces, for its neighbours' component filter
SLICE_PREFIX = "slice_"
HIDDEN_PREFIX = "." + SLICE_PREFIX  # exported but not yet published TIFF slices
SCHEDULERS = ("threads", "synchronous")
#: a block is empty when none of its input exceeds lo + EMPTY_FRACTION * (hi - lo)
EMPTY_FRACTION = 0.05


# ------------------------------------------------------------------------------- block geometry

@dataclass(frozen=True)
class BlockPlan:
    """What one block computes: the box ``[block.start, extent_stop)`` its windows cover, the
    earlier blocks whose windows spill into its core (``producers``) and the later blocks its
    windows spill into (``consumers``)."""

    block: Block
    extent_stop: tuple[int, int, int]
    producers: tuple[int, ...]
    consumers: tuple[Block, ...]

    @property
    def extent(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.block.start, self.extent_stop))


def plan_blocks(grid: WindowGrid) -> list[BlockPlan]:
    """The blocks of ``grid`` with their spill relations (a DAG: producers precede in C order)."""
    blocks = block_grid(grid.shape, grid.block_size)
    by_grid_index = {b.grid_index: b for b in blocks}
    stops = {b.index: grid.extent_stop(b.grid_index) for b in blocks}
    consumers: dict[int, list[Block]] = {b.index: [] for b in blocks}
    producers: dict[int, list[int]] = {b.index: [] for b in blocks}
    for b in blocks:
        reach = [range(i, (stop - 1) // size + 1)
                 for i, stop, size in zip(b.grid_index, stops[b.index], grid.block_size)]
        for target in np.ndindex(*(len(r) for r in reach)):
            other = by_grid_index[tuple(r[t] for r, t in zip(reach, target))]
            if other.index != b.index:
                consumers[b.index].append(other)
                producers[other.index].append(b.index)
    return [BlockPlan(b, stops[b.index], tuple(sorted(producers[b.index])), tuple(consumers[b.index]))
            for b in blocks]


# ---------------------------------------------------------------------------- the overlap store

@dataclass(frozen=True)
class OverlapStore:
    """Spill between blocks: one ``piece_<producer>_<consumer>.npy`` per pair, holding the
    producer's (2, flips, *box) sums and weights over the consumer's core; a producer skipped as
    empty leaves ``skipped_<producer>`` instead. Files on the output's filesystem, so a resumed run
    (or a dask.distributed worker on another machine) finds them; written atomically."""

    folder: str

    def piece(self, producer: int, consumer: int) -> Path:
        return Path(self.folder) / f"piece_{producer}_{consumer}.npy"

    def _skipped(self, producer: int) -> Path:
        return Path(self.folder) / f"skipped_{producer}"

    def put(self, producer: int, consumer: int, sums: np.ndarray, counts: np.ndarray) -> None:
        with atomic_path(self.piece(producer, consumer), suffix=".npy", mkdir=False) as tmp:
            np.save(tmp, np.stack([sums, counts]))

    def mark_skipped(self, producer: int) -> None:
        self._skipped(producer).touch()

    def get(self, producer: int, consumer: int) -> np.ndarray | None:
        """The piece, or ``None`` when the producer was skipped as empty."""
        path = self.piece(producer, consumer)
        if path.is_file():
            return np.load(path)
        if self._skipped(producer).is_file():
            return None
        raise Selma3dError(f"{path}: overlap piece missing (the output was changed while the prediction "
                           "was interrupted?); run again with --overwrite")


@dataclass(frozen=True)
class RimStore:
    """The raw mask of each block within ``margin`` voxels of its six faces, as uncompressed
    ``.npy`` slabs: what the component filter of a neighbouring block reads beyond its own core.

    A filter read through the raw Zarr array would decompress up to 27 whole blocks to get a
    ``min_size - 1`` voxel margin; memory-mapped slabs cost only the margin. Written by hand: Zarr
    reads whole chunks, and sharded small chunks measured slower than this.
    """

    folder: str
    margin: int

    def _slab(self, index: int, axis: int, side: str) -> Path:
        return Path(self.folder) / f"rim_{index}_{axis}{side}.npy"

    def put(self, block: Block, mask: np.ndarray) -> None:
        for axis in range(3):
            n = mask.shape[axis]
            for side, part in (("lo", slice(0, min(self.margin, n))), ("hi", slice(max(n - self.margin, 0), n))):
                with atomic_path(self._slab(block.index, axis, side), suffix=".npy", mkdir=False) as tmp:
                    np.save(tmp, mask[(slice(None),) * axis + (part,)])

    def read(self, neighbour: Block, box: Sequence[slice]) -> np.ndarray | None:
        """``raw[box]`` for a box inside ``neighbour``'s core within ``margin`` of one of its
        faces, or ``None`` when the box reaches deeper (then read the raw array)."""
        for axis, (b, a, z) in enumerate(zip(box, neighbour.start, neighbour.stop)):
            if b.stop - a <= self.margin:
                side, offset = "lo", a
            elif b.start >= z - self.margin:
                side, offset = "hi", max(z - self.margin, a)
            else:
                continue
            slab = np.load(self._slab(neighbour.index, axis, side), mmap_mode="r")
            local = tuple(slice(c.start - s, c.stop - s) for c, s in
                          zip(box, [offset if k == axis else st for k, st in enumerate(neighbour.start)]))
            return np.array(slab[local])
        return None


class _MarginView:
    """``raw[region]`` for :func:`filter_block`: the core from the raw array, the margin from the
    neighbours' rims (the raw array where a rim does not reach)."""

    def __init__(self, raw, rims: RimStore, block_size: Sequence[int]):
        self.raw, self.rims, self.block_size = raw, rims, tuple(block_size)
        self.shape = tuple(raw.shape)

    def __getitem__(self, region: tuple[slice, slice, slice]) -> np.ndarray:
        out = np.empty(tuple(r.stop - r.start for r in region), dtype=np.uint8)
        ranges = [range(r.start // b, (r.stop - 1) // b + 1) for r, b in zip(region, self.block_size)]
        counts = [math.ceil(n / b) for n, b in zip(self.shape, self.block_size)]
        for grid_index in np.ndindex(*(len(r) for r in ranges)):
            g = tuple(r[i] for r, i in zip(ranges, grid_index))
            start = tuple(i * b for i, b in zip(g, self.block_size))
            stop = tuple(min(s + b, n) for s, b, n in zip(start, self.block_size, self.shape))
            neighbour = Block(int(np.ravel_multi_index(g, counts)), g, start, stop)
            box = tuple(slice(max(r.start, a), min(r.stop, z)) for r, a, z in zip(region, start, stop))
            part = self.rims.read(neighbour, box)
            out[tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(box, region))] = \
                np.asarray(self.raw[box]) if part is None else part
        return out


@dataclass(frozen=True)
class _Settings:
    """What every predict task shares (one picklable object for dask.distributed)."""

    grid: WindowGrid
    norm_range: tuple[float, float]
    threshold: float
    empty_below: float | None
    batch_size: int
    precision: str
    store: OverlapStore
    mask_path: str
    probabilities_path: str | None
    rims: RimStore | None = None


# ---------------------------------------------------------------------------- per-block work

def predict_block(model, raw: np.ndarray, plan: BlockPlan, settings: _Settings) -> np.ndarray | None:
    """Float32 probabilities of ``plan.block``'s core, or ``None`` for an empty (skipped) block.

    ``raw``: the input over ``plan.extent``. Runs the block's windows, adds the pieces its
    producers left in the overlap store, blends, and leaves its own spill for its consumers.
    """
    block, store = plan.block, settings.store
    if settings.empty_below is not None and (raw.size == 0 or float(raw.max()) <= settings.empty_below):
        store.mark_skipped(block.index)
        return None
    image = normalize(raw, *settings.norm_range)
    sums, counts = accumulate_windows(model, image, block.start, settings.grid,
                                      settings.grid.block_windows(block.grid_index), plan.extent_stop,
                                      batch_size=settings.batch_size, precision=settings.precision)
    del image
    core = (slice(None),) + tuple(slice(0, b - a) for a, b in zip(block.start, block.stop))
    core_sums, core_counts = sums[core].copy(), counts[core].copy()
    for producer in plan.producers:
        piece = store.get(producer, block.index)
        if piece is not None:  # it covers [block.start, min(block.stop, producer's extent))
            where = (slice(None),) + tuple(slice(0, n) for n in piece.shape[2:])
            core_sums[where] += piece[0]
            core_counts[where] += piece[1]
    for consumer in plan.consumers:
        box = (slice(None),) + tuple(slice(c - a, min(d, e) - a) for a, c, d, e in
                                     zip(block.start, consumer.start, consumer.stop, plan.extent_stop))
        store.put(block.index, consumer.index, sums[box], counts[box])
    return blend(core_sums, core_counts)


def filter_block(raw, block: Block, min_size: int) -> np.ndarray:
    """The final mask of ``block``'s core: 26-connected components < ``min_size`` voxels removed.

    Exact, from a local read: the core is read with a margin ``m = min_size - 1`` and filtered with
    cc3d. A component of the margin-grown region that contains a core voxel either stays away from
    the region's outer layer (then it is a whole component of the volume, with its true size) or
    reaches that layer (then a 26-connected path from the core to it has ≥ m + 1 = min_size voxels,
    so it is kept here and — being part of a component at least as large — in the whole volume too).
    So the core equals ``remove_small_components(whole_mask, min_size)[core]`` with no label merging
    across blocks and memory bounded by one region.
    """
    margin = max(int(min_size) - 1, 0)
    region = tuple(slice(max(0, a - margin), min(n, b + margin))
                   for a, b, n in zip(block.start, block.stop, raw.shape))
    local = remove_small_components(np.asarray(raw[region]), min_size)
    inner = tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(block.core, region))
    return local[inner]


@lru_cache(maxsize=8)
def _open_path(path: str):
    """Volumes and arrays opened once per process (a TIFF folder checks every header on open)."""
    from ..io.volume import open_volume

    return open_volume(path)


@lru_cache(maxsize=16)
def _open_array(path: str, mode: str = "r+"):
    import zarr

    return zarr.open_array(path, mode=mode)


def _source(volume):
    return _open_path(volume) if isinstance(volume, str) else volume


_worker_models: dict[int, object] = {}
_worker_lock = threading.Lock()


def _local_model(model, device: str | None):
    """On a dask.distributed worker, move the (CPU-shipped) model to that worker's device once."""
    if device is None:
        return model
    with _worker_lock:
        key = id(model)
        if key not in _worker_models:
            import torch

            target = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
            _worker_models[key] = model.to(target).eval()
        return _worker_models[key]


def _predict_task(model, device, volume, settings: _Settings, plan: BlockPlan, reader=None, after=()) -> int:
    """One block of the predict pass; ``reader`` (local runs) holds its prefetched input, ``after``
    the results of the tasks it waits for (its producers)."""
    model = _local_model(model, device)
    block = plan.block
    raw = reader.take(block.index) if reader is not None else np.asarray(_source(volume)[plan.extent])
    probs = predict_block(model, raw, plan, settings)
    del raw
    shape = tuple(b - a for a, b in zip(block.start, block.stop))
    mask = np.zeros(shape, np.uint8) if probs is None else (probs > settings.threshold).astype(np.uint8)
    if settings.rims is not None:
        settings.rims.put(block, mask)
    _open_array(settings.mask_path)[block.core] = mask
    if settings.probabilities_path is not None:
        _open_array(settings.probabilities_path)[block.core] = np.zeros(shape, np.float32) if probs is None else probs
    return block.index


def _filter_task(raw_path: str, target: str, block: Block, min_size: int, rims: RimStore | None = None,
                 block_size: Sequence[int] | None = None) -> int:
    raw = _open_array(raw_path, "r")
    view = raw if rims is None else _MarginView(raw, rims, block_size)
    _open_array(target)[block.core] = filter_block(view, block, min_size)
    return block.index


def _export_task(mask_path: str, folder: str, z0: int, z1: int, digits: int) -> int:
    """Write slices z0..z1 of the mask as hidden TIFF files, one slice in memory at a time (they
    are renamed to their visible names only once every slice exists: see :func:`_publish_slices`)."""
    from ..io.tiffstack import write_slices

    mask = _open_array(mask_path, "r")
    for z in range(z0, z1):
        write_slices(folder, [mask[z]], prefix=HIDDEN_PREFIX, start=z, digits=digits)
    return z0


def _publish_slices(folder: Path, count: int, digits: int) -> None:
    """Rename ``.slice_*.tif`` to ``slice_*.tif``: a TIFF folder shows slices only when it is whole
    (a reader ignores hidden files). Idempotent, so a kill half-way is finished by the next run."""
    for z in range(count):
        hidden = folder / f"{HIDDEN_PREFIX}{z:0{digits}d}.tif"
        if hidden.exists():
            os.replace(hidden, folder / f"{SLICE_PREFIX}{z:0{digits}d}.tif")


# ------------------------------------------------------------------------------ running tasks

class _Progress:
    """The progress file: which blocks of which pass are done. Saved atomically (tmp + rename).

    Files queued with ``discard_after_save`` (consumed overlap pieces) are deleted only after a
    save that records their consumer done, so a kill never loses a piece a resumed run needs.
    """

    def __init__(self, path: Path, state: dict):
        self.path, self.state = path, state
        self._last_save = 0.0
        self._discard: list[Path] = []

    def done(self, phase: str) -> set[int]:
        return set(self.state["done"].setdefault(phase, []))

    def mark(self, phase: str, index: int, discard_after_save: Sequence[Path] = ()) -> None:
        done = self.state["done"].setdefault(phase, [])
        done.append(int(index))
        self._discard.extend(discard_after_save)
        if time.monotonic() - self._last_save > 0.5:  # bounded cost for 10⁴ blocks; a kill loses < 0.5 s
            self.save()

    def save(self) -> None:
        for phase, indices in self.state["done"].items():
            self.state["done"][phase] = sorted(set(indices))
        save_journal(self.path, self.state, mkdir=False)
        self._last_save = time.monotonic()
        for path in self._discard:
            path.unlink(missing_ok=True)
        self._discard.clear()


def _run_tasks(tasks: dict[int, tuple], on_done: Callable[[int], None], scheduler: str, workers: int,
               client, after: dict[int, Sequence[int]] | None = None) -> None:
    """Run ``{index: (function, *args)}`` with dask; ``on_done(index)`` after each one finishes
    (in the calling thread, so the progress file has a single writer).

    ``after``: ``{index: indices it must wait for}`` (those not in ``tasks`` are done already);
    their results are passed as the task's last argument. ``tasks`` must list every index after
    the ones it waits for (C order of the block grid does).
    """
    if not tasks:
        return
    waits = {index: [p for p in (after or {}).get(index, ()) if p in tasks] for index in tasks} if after is not None \
        else None
    if client is not None:
        from distributed import as_completed

        futures = {}
        for index, (fn, *args) in tasks.items():
            extra = [[futures[p] for p in waits[index]]] if waits is not None else []
            futures[index] = client.submit(fn, *args, *extra, key=f"selma3d-{fn.__name__}-{index}-{os.getpid()}",
                                           pure=False)
        try:
            for future in as_completed(list(futures.values())):
                on_done(future.result())
        finally:
            client.cancel(list(futures.values()))
        return

    import dask
    from dask.callbacks import Callback

    # Plain task tuples (function, *args) keyed ("selma3d-block", i): no argument tokenizing, and
    # the dask scheduler calls the hook below in this thread as each task finishes.
    graph = {("selma3d-block", index): task + (([("selma3d-block", p) for p in waits[index]],)
                                               if waits is not None else ())
             for index, task in tasks.items()}

    def posttask(key, result, dsk, state, worker_id):
        if isinstance(key, tuple) and key and key[0] == "selma3d-block":
            on_done(int(key[1]))

    with Callback(posttask=posttask):
        if scheduler == "synchronous":
            dask.get(graph, list(graph))
        else:
            import dask.threaded

            dask.threaded.get(graph, list(graph), num_workers=workers)


# --------------------------------------------------------------------------- output handling

def output_kind(output: Path) -> str:
    """``zarr`` for ``*.zarr``; ``tiff`` for a folder (an existing one, or a name without suffix)."""
    if output.suffix == ".zarr":
        return "zarr"
    if output.is_dir() or not output.suffix:
        return "tiff"
    raise InputError(f"{output}: unknown output kind {output.suffix!r} for a whole volume; give a .zarr "
                     "path (OME-Zarr mask) or a folder name without suffix (one TIFF per z slice)")


def _describe_input(source, volume) -> dict:
    """What identifies the input, so a resumed run refuses another one (cheap for huge inputs:
    a TIFF folder's file names/sizes/times, a Zarr store's metadata files, an array's content)."""
    from ..io.zarrstore import describe_source, describe_zarr_store

    info = {"shape": [int(s) for s in volume.shape], "dtype": np.dtype(volume.dtype).str}
    if isinstance(source, str):
        path = Path(source)
        if path.is_dir() and (path / "zarr.json").is_file():
            return info | describe_zarr_store(path)
        return info | describe_source(volume if hasattr(volume, "files") else path)
    if isinstance(volume, np.ndarray):
        from dask.base import tokenize

        return info | {"path": None, "fingerprint": tokenize(volume)}
    # another lazy array-like: never read it whole just to identify it
    where = getattr(volume, "path", None) or getattr(volume, "store_path", None)
    return info | {"path": None if where is None else str(where), "fingerprint": type(volume).__name__}


def _model_fingerprint(run) -> str:
    digest = hashlib.sha1()
    for name, tensor in sorted(run.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _prepare_output(output: Path, kind: str, identity: dict, overwrite: bool, resume: bool) -> dict | None:
    """Check or clear ``output``; returns the saved progress state to resume, else ``None``."""
    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: exists and is not a folder")
    if not (output.is_dir() and any(output.iterdir())):
        return None
    progress_path = output / PROGRESS_FILE
    ours = progress_path.is_file()
    if overwrite:
        if not ours and not (output / "zarr.json").is_file():
            raise InputError(f"{output}: refusing to overwrite a non-empty folder that `selma3d predict` "
                             "did not write")
        shutil.rmtree(output)
        return None
    if not ours:
        raise InputError(f"{output}: already exists and was not written by `selma3d predict`; "
                         "choose another output or use --overwrite")
    state = read_journal(progress_path, PROGRESS_FORMAT, PROGRESS_WORDING)
    check_identity(state, identity, output, PROGRESS_WORDING)
    if not resume and not state.get("complete"):
        raise InputError(f"{output}: holds an interrupted prediction; resume it or use --overwrite")
    return state


def _create_arrays(store: Path, shape, chunks, names: Sequence[str], dtype=np.uint8) -> None:
    import zarr
    from zarr.codecs import BloscCodec

    group = zarr.open_group(str(store), mode="a", zarr_format=3)
    for name in names:
        if name not in group:
            group.create_array(name, shape=shape, dtype=dtype, chunks=chunks, fill_value=0,
                               compressors=BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),
                               dimension_names=("z", "y", "x"))


def _finish_zarr(store: Path, shape, spacing, info: dict) -> None:
    """OME-NGFF metadata last: from now on the store opens as an image."""
    import zarr

    from ..io.zarrstore import ome_metadata

    ome = ome_metadata([shape], spacing, name=store.stem)
    ome["multiscales"][0].pop("type", None)  # one level: no downsampling to describe
    ome["multiscales"][0].pop("metadata", None)
    zarr.open_group(str(store), mode="a", zarr_format=3).attrs.update({"ome": ome, "selma3d": info})


def _progress_bar(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    disable=not enabled, transient=True)


# ----------------------------------------------------------------------------------- the API

def predict_whole_volume(run, input, output, *, block_size: int | Sequence[int] = DEFAULT_BLOCK_SIZE,
                         overlap: float = 0.25, tta_flips=False, threshold: float | None = None,
                         min_size: int = DEFAULT_MIN_SIZE, skip_empty: bool = True, probabilities: bool = False,
                         batch_size: int = 4, precision: str = "fp32", prefetch: int = 2, progress: bool = True,
                         resume: bool = True, overwrite: bool = False, workers: int | None = None,
                         scheduler: str = "threads", scheduler_address: str | None = None, device=None) -> Path:
    """Segment a whole volume block by block at the cost of one pass; returns the output path.

    ``run``: a finetuned ``RUN/`` folder or a :class:`~selma3d.inference.predict.LoadedRun`.
    ``input``: a TIFF slice folder, a ``.zarr`` store, a NIfTI file, or a (z, y, x) array-like.
    ``output``: ``*.zarr`` → OME-Zarr (zarr v3) uint8 mask chunked exactly like the block grid (each
    block writes whole chunks of its own, so parallel writers never share a chunk); a folder name →
    one uint8 TIFF per z slice (``slice_00000.tif`` ...).

    The result is MONAI's ``sliding_window_inference`` on the whole volume (the run's patch size,
    ``overlap``, Gaussian blending, optional flip TTA) thresholded at ``threshold`` (default: the
    run's), to float rounding — see the module docstring. ``block_size`` (z, y, x) sets memory and
    parallelism only. ``min_size``: 26-connected components smaller than this are removed, exactly
    as on the whole mask (≤ 1 keeps everything). ``skip_empty``: blocks without tissue are written
    as 0 without running the network. ``probabilities``: also write the float32 probabilities as
    the ``probabilities`` array of a Zarr output.

    GPU options: ``batch_size`` windows per forward pass; ``precision`` ``"fp32"`` (default,
    identical to one pass), ``"bf16"`` or ``"fp16"`` (autocast; blending stays float32);
    ``prefetch``: blocks whose input a reader thread reads ahead (0: read in the compute thread).

    Memory per worker: one block's box (core + forward spill, up to one window per axis): its raw
    voxels, the normalized input and two float32 sums per TTA flip — about 14 bytes per box voxel
    (~0.23 GB for 128×256×256 blocks and 96³ windows at overlap 0.5) — plus the network's
    activations for ``batch_size`` windows and ``prefetch`` raw boxes. The overlap store on disk
    holds 8 bytes per spilled voxel of the blocks waiting for their consumers.

    Resumable: each finished block is recorded in ``OUTPUT/selma3d_prediction.json``; running again
    with the same run, input and options does only what is missing, bit for bit as an
    uninterrupted run. An output from another input, model or options is refused unless ``overwrite``.

    Parallelism: ``scheduler="threads"`` (default; ``workers`` threads, torch intra-op threads
    split between them) or ``"synchronous"``; ``scheduler_address="tcp://host:8786"`` sends the
    blocks to a running ``dask.distributed`` scheduler (``pip install distributed``; start it with
    ``dask scheduler`` and ``dask worker tcp://host:8786 --nthreads 1`` on each machine). Workers
    then read the input, the overlap store and the output by path, so all must be on a filesystem
    all machines share, and each worker moves the model to its own GPU if it has one.
    """
    import torch

    from ..io.volume import open_volume, volume_spacing
    from .predict import LoadedRun, flip_combinations, load_run

    if scheduler not in SCHEDULERS:
        raise InputError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
    if not 0 <= overlap < 1:
        raise InputError(f"--overlap must be in [0, 1), got {overlap}")
    if threshold is not None and not 0 < threshold < 1:
        raise InputError(f"--threshold must be in (0, 1), got {threshold}")
    if min_size < 0:
        raise InputError(f"--min-size must be >= 0, got {min_size}")
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if prefetch < 0:
        raise InputError(f"--prefetch must be >= 0, got {prefetch}")
    output = Path(output)
    kind = output_kind(output)
    if probabilities and kind != "zarr":
        raise InputError(f"{output}: probabilities are written as an array of a .zarr output; "
                         "give a .zarr output or leave out --probabilities")
    if isinstance(input, (str, os.PathLike)):
        from ..paths import check_output

        check_output(output, "dir", inputs=[input])  # never write into, onto or around the input

    if not isinstance(run, LoadedRun):
        run = load_run(run, device=device)
    if run.downsample_xy != 1:
        raise InputError(f"{run.path}: trained at --downsample-xy {run.downsample_xy}; whole-volume prediction "
                         "runs at full resolution only for now (predict NIfTI patches, which apply the "
                         "downsampling, or finetune with --downsample-xy 1)")
    spec = run.normalization
    model = run.model.eval()
    patch_size = tuple(int(p) for p in run.patch_size)
    block_size = parse_triple(block_size, "--block-size")
    threshold = run.threshold if threshold is None else float(threshold)

    source = str(Path(input)) if isinstance(input, (str, os.PathLike)) else None
    volume = open_volume(source) if source is not None else input
    shape = tuple(int(s) for s in volume.shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"{source or 'input'}: expected a non-empty 3D (z, y, x) volume, got shape {shape}")
    chunks = tuple(min(b, n) for b, n in zip(block_size, shape))
    flips = tuple(tuple(a - 2 for a in axes) for axes in flip_combinations(tta_flips))
    grid = WindowGrid(shape, patch_size, float(overlap), chunks, flips)
    plans = plan_blocks(grid)
    spacing = (volume_spacing(source) if source is not None else None) or (1.0, 1.0, 1.0)  # checked up front

    options = {"block_size": list(chunks), "patch_size": list(patch_size), "overlap": float(overlap),
               "tta_flips": [list(f) for f in flips], "threshold": threshold, "min_size": int(min_size),
               "skip_empty": bool(skip_empty), "precision": precision, "probabilities": bool(probabilities)}
    identity = {"input": _describe_input(source, volume), "model": _model_fingerprint(run),
                "options": options, "output_kind": kind}
    state = _prepare_output(output, kind, identity, overwrite, resume)
    if state is not None and state.get("complete"):
        return output

    if state is None:
        output.mkdir(parents=True, exist_ok=True)
        lo, hi = spec.statistics(volume)  # the whole volume's, once (a subsample of slices when large)
        state = {"format": PROGRESS_FORMAT, "identity": identity, "norm_range": [lo, hi],
                 "empty_below": lo + EMPTY_FRACTION * (hi - lo), "run": str(run.path), "done": {},
                 "complete": False}
    tracker = _Progress(output / PROGRESS_FILE, state)
    tracker.save()  # before any data, so a kill leaves a resumable output

    store = output if kind == "zarr" else output / WORK_STORE
    filtering = min_size > 1
    _create_arrays(store, shape, chunks, [MASK_ARRAY] + ([RAW_ARRAY] if filtering else []))
    if probabilities:
        _create_arrays(store, shape, chunks, [PROBABILITIES_ARRAY], dtype=np.float32)
    mask_path, raw_path = str(store / MASK_ARRAY), str(store / RAW_ARRAY)
    overlap_store = OverlapStore(str(output / OVERLAP_STORE))
    Path(overlap_store.folder).mkdir(exist_ok=True)
    rims = RimStore(str(output / RIM_STORE), int(min_size) - 1) if filtering else None
    if rims is not None:
        Path(rims.folder).mkdir(exist_ok=True)
    settings = _Settings(grid=grid, norm_range=tuple(state["norm_range"]), threshold=threshold,
                         empty_below=state["empty_below"] if skip_empty else None, batch_size=int(batch_size),
                         precision=precision, store=overlap_store, mask_path=raw_path if filtering else mask_path,
                         probabilities_path=str(store / PROBABILITIES_ARRAY) if probabilities else None,
                         rims=rims)

    client = None
    if scheduler_address is not None:
        try:
            from distributed import Client
        except ImportError:
            raise Selma3dError("--scheduler-address needs dask.distributed: pip install distributed") from None
        client = Client(scheduler_address)
        if source is None:
            raise InputError("--scheduler-address needs the input as a path (workers read it themselves)")
    workers = workers or (1 if scheduler == "synchronous" else 2)
    # dask threads share one torch intra-op pool; split its threads (the cores, unless the caller
    # chose fewer) instead of oversubscribing them.
    torch_threads = torch.get_num_threads()
    if client is None:
        torch.set_num_threads(max(1, torch_threads // workers))

    reader = None
    if client is not None:
        ship_model, ship_device = client.scatter(run.model.cpu(), broadcast=True), "auto"
        volume_arg = source
    else:
        ship_model, ship_device = model, None
        volume_arg = volume
        todo = set(range(len(plans))) - tracker.done("predict")
        if prefetch and todo:
            from .prefetch import RegionPrefetcher

            reader = RegionPrefetcher(lambda i: np.asarray(volume[plans[i].extent]),
                                      {i: plans[i].producers for i in sorted(todo)}, depth=prefetch)
    digits = max(5, len(str(shape[0] - 1)))
    slabs = sorted({p.block.start[0]: p.block.stop[0] for p in plans}.items())
    phases = [("predict", {p.block.index: (_predict_task, ship_model, ship_device, volume_arg, settings, p, reader)
                           for p in plans}, {p.block.index: p.producers for p in plans})]
    if filtering:
        phases.append(("filter", {p.block.index: (_filter_task, raw_path, mask_path, p.block, int(min_size), rims,
                                                  chunks) for p in plans}, None))
    if kind == "tiff":
        phases.append(("export", {z0: (_export_task, mask_path, str(output), z0, z1, digits) for z0, z1 in slabs},
                       None))

    try:
        with torch.no_grad(), _progress_bar(progress) as bar:
            for phase, tasks, after in phases:
                finished = tracker.done(phase)
                todo = {i: t for i, t in tasks.items() if i not in finished}
                task = bar.add_task(f"{output.name}: {phase}", total=len(tasks), completed=len(tasks) - len(todo))

                def on_done(index, phase=phase, task=task):
                    consumed = ([overlap_store.piece(p, index) for p in plans[index].producers]
                                if phase == "predict" else ())
                    tracker.mark(phase, index, discard_after_save=consumed)
                    bar.advance(task)

                try:
                    _run_tasks(todo, on_done, scheduler, workers, client, after=after)
                finally:
                    tracker.save()
                if phase == "predict":
                    shutil.rmtree(overlap_store.folder, ignore_errors=True)
                if phase == "filter":
                    shutil.rmtree(rims.folder, ignore_errors=True)
    finally:
        if reader is not None:
            reader.close()
        torch.set_num_threads(torch_threads)
        if client is not None:
            client.close()
        _open_array.cache_clear()

    if kind == "zarr":
        _finish_zarr(output, shape, spacing, {"run": str(run.path), "source": identity["input"]["path"],
                                              "threshold": threshold, "min_size": int(min_size),
                                              "normalization_range": list(settings.norm_range)})
        if filtering:
            shutil.rmtree(store / RAW_ARRAY, ignore_errors=True)
    else:
        _publish_slices(output, shape[0], digits)
    state["complete"] = True
    tracker.save()
    if kind == "tiff":
        shutil.rmtree(store, ignore_errors=True)
    return output
