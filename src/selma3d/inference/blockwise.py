"""Out-of-core whole-volume segmentation: blocks with a halo, exact small-component removal, resume.

A light-sheet volume (10⁹–10¹¹ voxels) never fits in memory, so it is cut into a grid of *blocks*.
Each block is predicted from a larger *region* (the block plus a halo, clipped to the volume) so
that the sliding windows at the block border still see context; MONAI's sliding-window inference
with Gaussian blending runs inside the region (:func:`~selma3d.inference.predict.sliding_window_probabilities`)
and only the block itself (the *core*) is written. Blocks are independent, so dask runs them in
parallel (threads on one machine, ``dask.distributed`` across machines).

Passes, each resumable block by block (finished blocks are listed in ``selma3d_prediction.json``
inside the output, written atomically after every block):

1. ``predict``: probabilities > threshold → a uint8 mask (the *raw* mask when a component filter
   follows, else the final one).
2. ``filter``: 26-connected components smaller than ``min_size`` voxels removed, *exactly* as
   :func:`~selma3d.inference.postprocess.remove_small_components` would on the whole mask (see
   :func:`filter_block`).
3. ``export`` (TIFF output only): the mask written as one TIFF per z slice, one z-slab of blocks at
   a time, under hidden names that are made visible only when every slice exists.

The output only looks finished at the very end: a Zarr store gets its OME-NGFF ``multiscales``
metadata (which :func:`~selma3d.io.volume.open_volume` requires) last; a TIFF folder shows its
slices only once all are written, and the progress file says ``"complete": true`` last in both cases.
"""

from __future__ import annotations

import hashlib
import json
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

from ..data.normalize import Normalization, normalize
from ..errors import InputError, Selma3dError
from .postprocess import DEFAULT_MIN_SIZE, remove_small_components

DEFAULT_BLOCK_SIZE = (128, 256, 256)
PROGRESS_FILE = "selma3d_prediction.json"
PROGRESS_FORMAT = "selma3d-prediction/1"
MASK_ARRAY = "0"  # level 0 of the OME-Zarr output
RAW_ARRAY = "selma3d_raw"  # thresholded mask before the component filter (deleted at the end)
WORK_STORE = ".selma3d_work.zarr"  # inside a TIFF output folder: where the blocks are assembled
SLICE_PREFIX = "slice_"
HIDDEN_PREFIX = "." + SLICE_PREFIX  # exported but not yet published TIFF slices
NORMALIZATIONS = ("volume", "block")
SCHEDULERS = ("threads", "synchronous")


# ------------------------------------------------------------------------------- block geometry

@dataclass(frozen=True)
class Block:
    """One cell of the block grid: its flat ``index`` and its core ``[start, stop)`` per axis."""

    index: int
    grid_index: tuple[int, int, int]
    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    @property
    def core(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))


def block_grid(shape: Sequence[int], block_size: Sequence[int]) -> list[Block]:
    """The blocks tiling ``shape`` in C order (z slowest); edge blocks are smaller."""
    counts = [math.ceil(n / b) for n, b in zip(shape, block_size)]
    blocks = []
    for flat, grid_index in enumerate(np.ndindex(*counts)):
        start = tuple(int(i * b) for i, b in zip(grid_index, block_size))
        stop = tuple(min(s + b, n) for s, b, n in zip(start, block_size, shape))
        blocks.append(Block(flat, tuple(int(i) for i in grid_index), start, stop))
    return blocks


def region_bounds(start: int, stop: int, halo: int, min_extent: int, size: int) -> tuple[int, int]:
    """The ``[lo, hi)`` read for a core ``[start, stop)`` along one axis of length ``size``.

    The core grows by ``halo`` on each side, and to at least ``min_extent`` (the window size, so
    MONAI never pads a region that the volume could fill); a region that would leave the volume is
    shifted back inside rather than cut, keeping its size where the volume allows.
    """
    extent = max(stop - start + 2 * halo, min_extent)
    if extent >= size:
        return 0, size
    lo = max(0, start - halo)
    hi = lo + extent
    if hi > size:
        hi, lo = size, size - extent
    return lo, hi


def region_of(block: Block, halo: Sequence[int], min_extent: Sequence[int],
              shape: Sequence[int]) -> tuple[slice, slice, slice]:
    return tuple(slice(*region_bounds(a, b, h, m, n))
                 for a, b, h, m, n in zip(block.start, block.stop, halo, min_extent, shape))


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def _divisor(model) -> tuple[int, int, int]:
    d = getattr(model, "size_divisor", 1)
    return tuple(int(v) for v in d) if isinstance(d, (tuple, list)) else (int(d),) * 3


def _triple(name: str, value, allow_zero: bool = False) -> tuple[int, int, int]:
    values = (value,) * 3 if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != 3 or not all(isinstance(v, (int, np.integer)) for v in values) \
            or any(v < (0 if allow_zero else 1) for v in values):
        bound = "non-negative" if allow_zero else "positive"
        raise InputError(f"{name} needs one or three {bound} integers (z y x), got {value!r}")
    return tuple(int(v) for v in values)


# ---------------------------------------------------------------------------- per-block work

def predict_block_probabilities(model, volume, block: Block, halo: Sequence[int], patch_size: Sequence[int],
                                norm_range: tuple[float, float] | None, overlap: float = 0.25,
                                tta_flips=False, sw_batch_size: int = 2,
                                normalization: Normalization | None = None) -> np.ndarray:
    """Float32 foreground probabilities of ``block``'s core, predicted from core + halo.

    ``norm_range`` = (lo, hi) of the whole volume; ``None`` normalizes the region by its own
    statistics under ``normalization`` (the run's). Sliding windows of ``patch_size`` with Gaussian blending cover the region.
    """
    import torch

    from .predict import _model_device, sliding_window_probabilities

    region = region_of(block, halo, patch_size, volume.shape)
    raw = np.asarray(volume[region])
    image = normalize(raw, *norm_range) if norm_range is not None else (normalization or Normalization())(raw)
    del raw
    x = torch.from_numpy(np.ascontiguousarray(image))[None, None].to(_model_device(model))
    del image
    probs = sliding_window_probabilities(model, x, patch_size, overlap=overlap, tta_flips=tta_flips,
                                         sw_batch_size=sw_batch_size)
    inner = tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(block.core, region))
    return probs[0, 0][inner].cpu().numpy()


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


def _predict_task(model, device, volume, target: str, block: Block, halo, patch_size, norm_range, overlap,
                  tta_flips, threshold: float, sw_batch_size: int, normalization: Normalization | None = None) -> int:
    model = _local_model(model, device)
    probs = predict_block_probabilities(model, _source(volume), block, halo, patch_size, norm_range,
                                        overlap=overlap, tta_flips=tta_flips, sw_batch_size=sw_batch_size,
                                        normalization=normalization)
    _open_array(target)[block.core] = (probs > threshold).astype(np.uint8)
    return block.index


def _filter_task(raw_path: str, target: str, block: Block, min_size: int) -> int:
    _open_array(target)[block.core] = filter_block(_open_array(raw_path, "r"), block, min_size)
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
    """The progress file: which blocks of which pass are done. Saved atomically (tmp + rename)."""

    def __init__(self, path: Path, state: dict):
        self.path, self.state = path, state
        self._last_save = 0.0

    def done(self, phase: str) -> set[int]:
        return set(self.state["done"].setdefault(phase, []))

    def mark(self, phase: str, index: int) -> None:
        done = self.state["done"].setdefault(phase, [])
        done.append(int(index))
        if time.monotonic() - self._last_save > 0.5:  # bounded cost for 10⁴ blocks; a kill loses < 0.5 s
            self.save()

    def save(self) -> None:
        for phase, indices in self.state["done"].items():
            self.state["done"][phase] = sorted(set(indices))
        tmp = self.path.with_name(f".{self.path.name}.partial")
        tmp.write_text(json.dumps(self.state, indent=1))
        os.replace(tmp, self.path)
        self._last_save = time.monotonic()


def _run_tasks(tasks: dict[int, tuple], on_done: Callable[[int], None], scheduler: str, workers: int,
               client) -> None:
    """Run ``{index: (function, *args)}`` with dask; ``on_done(index)`` after each one finishes
    (in the calling thread, so the progress file has a single writer)."""
    if not tasks:
        return
    if client is not None:
        from distributed import as_completed

        futures = [client.submit(fn, *args, key=f"selma3d-{fn.__name__}-{index}-{os.getpid()}", pure=False)
                   for index, (fn, *args) in tasks.items()]
        try:
            for future in as_completed(futures):
                on_done(future.result())
        finally:
            client.cancel(futures)
        return

    import dask
    from dask.callbacks import Callback

    # Plain task tuples (function, *args) keyed ("selma3d-block", i): no argument tokenizing, and
    # the dask scheduler calls the hook below in this thread as each task finishes.
    graph = {("selma3d-block", index): task for index, task in tasks.items()}

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
    from ..io.zarrstore import describe_source

    info = {"shape": [int(s) for s in volume.shape], "dtype": np.dtype(volume.dtype).str}
    if isinstance(source, str):
        path = Path(source)
        if path.is_dir() and (path / "zarr.json").is_file():
            digest = hashlib.sha1()
            for meta in sorted(path.rglob("zarr.json")):
                if len(meta.relative_to(path).parts) <= 2:
                    digest.update(meta.read_bytes())
            return info | {"path": str(path.resolve()), "fingerprint": digest.hexdigest()}
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
    try:
        state = json.loads(progress_path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{progress_path}: unreadable progress file ({exc}); use --overwrite") from None
    if state.get("format") != PROGRESS_FORMAT:
        raise InputError(f"{progress_path}: unknown progress format {state.get('format')!r}; use --overwrite")
    for key, value in identity.items():
        if state.get("identity", {}).get(key) != value:
            what = "holds a finished prediction" if state.get("complete") else "was started"
            raise InputError(f"{output}: {what} with another {key} ({state.get('identity', {}).get(key)!r}, "
                             f"now {value!r}); use --overwrite to start again")
    if not resume and not state.get("complete"):
        raise InputError(f"{output}: holds an interrupted prediction; resume it or use --overwrite")
    return state


def _create_arrays(store: Path, shape, chunks, names: Sequence[str]) -> None:
    import zarr
    from zarr.codecs import BloscCodec

    group = zarr.open_group(str(store), mode="a", zarr_format=3)
    for name in names:
        if name not in group:
            group.create_array(name, shape=shape, dtype=np.uint8, chunks=chunks, fill_value=0,
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
                         halo: int | Sequence[int] | None = None, overlap: float = 0.25, tta_flips=False,
                         threshold: float | None = None, min_size: int = DEFAULT_MIN_SIZE,
                         normalization: str = "volume", progress: bool = True, resume: bool = True,
                         overwrite: bool = False, workers: int | None = None, scheduler: str = "threads",
                         scheduler_address: str | None = None, sw_batch_size: int = 2,
                         device=None) -> Path:
    """Segment a whole volume block by block; returns the output path.

    ``run``: a finetuned ``RUN/`` folder or a :class:`~selma3d.inference.predict.LoadedRun`.
    ``input``: a TIFF slice folder, a ``.zarr`` store, a NIfTI file, or a (z, y, x) array-like.
    ``output``: ``*.zarr`` → OME-Zarr (zarr v3) uint8 mask chunked exactly like the block grid (each
    block writes whole chunks of its own, so parallel writers never share a chunk); a folder name →
    one uint8 TIFF per z slice (``slice_00000.tif`` ...).

    ``block_size`` (z, y, x) is rounded up to the model's size divisor; ``halo`` (default: half
    the model's patch size per axis, also rounded up) is the context read around each block, so
    the windows at a block's border see beyond it. ``min_size``: 26-connected components smaller
    than this are removed, exactly as on the whole mask (≤ 1 keeps everything).

    ``normalization="volume"`` (default) maps the volume's own 0.05/99.95 percentiles, estimated
    once from a bounded subsample of slices, to [-1, 1] for every block. ``"block"`` uses each
    region's percentiles instead: that is what patch prediction does, but neighbouring blocks then
    see the same voxel intensity mapped differently (a bright vessel in one block lowers its
    scale), so predictions jump at block faces — visible seams — and a block of pure background
    gets its noise stretched to the full range, producing false positives.

    Memory per worker is bounded by one region (block + 2·halo, at least one window): its raw
    voxels, two float32 copies (normalized input, probabilities) and MONAI's two float32 blending
    buffers, about 18 bytes per region voxel (~0.5 GB for 128×256×256 blocks with a 48 halo),
    plus the network's activations for ``sw_batch_size`` windows. The filter pass reads a block
    plus ``min_size - 1`` voxels per side; the TIFF export holds one slice.

    Resumable: each finished block is recorded in ``OUTPUT/selma3d_prediction.json``; running again
    with the same run, input and options does only what is missing. An output from another input,
    model or options is refused unless ``overwrite``.

    Parallelism: ``scheduler="threads"`` (default; ``workers`` threads, torch intra-op threads
    split between them) or ``"synchronous"``; ``scheduler_address="tcp://host:8786"`` sends the
    blocks to a running ``dask.distributed`` scheduler (``pip install distributed``; start it with
    ``dask scheduler`` and ``dask worker tcp://host:8786 --nthreads 1`` on each machine). Workers
    then read the input by path and write the output by path, so both must be on a filesystem all
    machines share, and each worker moves the model to its own GPU if it has one.
    """
    import torch

    from ..io.volume import open_volume, volume_spacing
    from .predict import LoadedRun, load_run

    if normalization not in NORMALIZATIONS:
        raise InputError(f"--normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
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
    output = Path(output)
    kind = output_kind(output)
    if isinstance(input, (str, os.PathLike)):
        from ..paths import check_output

        check_output(output, "dir", inputs=[input])  # never write into, onto or around the input

    if not isinstance(run, LoadedRun):
        run = load_run(run, device=device)
    spec = run.normalization
    model = run.model.eval()
    divisor = _divisor(model)
    patch_size = tuple(int(p) for p in run.patch_size)
    block_size = tuple(_round_up(b, d) for b, d in zip(_triple("--block-size", block_size), divisor))
    halo = tuple(p // 2 for p in patch_size) if halo is None else _triple("--halo", halo, allow_zero=True)
    halo = tuple(_round_up(h, d) for h, d in zip(halo, divisor))
    threshold = run.threshold if threshold is None else float(threshold)

    source = str(Path(input)) if isinstance(input, (str, os.PathLike)) else None
    volume = open_volume(source) if source is not None else input
    shape = tuple(int(s) for s in volume.shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"{source or 'input'}: expected a non-empty 3D (z, y, x) volume, got shape {shape}")
    chunks = tuple(min(b, n) for b, n in zip(block_size, shape))
    blocks = block_grid(shape, chunks)
    spacing = (volume_spacing(source) if source is not None else None) or (1.0, 1.0, 1.0)  # checked up front

    options = {"block_size": list(chunks), "halo": list(halo), "patch_size": list(patch_size),
               "overlap": float(overlap), "tta_flips": tta_flips if isinstance(tta_flips, bool) else
               [list(a) for a in tta_flips], "threshold": threshold, "min_size": int(min_size),
               "normalization": normalization}
    identity = {"input": _describe_input(source, volume), "model": _model_fingerprint(run),
                "options": options, "output_kind": kind}
    state = _prepare_output(output, kind, identity, overwrite, resume)
    if state is not None and state.get("complete"):
        return output

    if state is None:
        output.mkdir(parents=True, exist_ok=True)
        norm_range = (list(spec.volume_statistics(volume)) if normalization == "volume" else None)
        state = {"format": PROGRESS_FORMAT, "identity": identity, "norm_range": norm_range,
                 "run": str(run.path), "done": {}, "complete": False}
    tracker = _Progress(output / PROGRESS_FILE, state)
    tracker.save()  # before any data, so a kill leaves a resumable output
    norm_range = tuple(state["norm_range"]) if state["norm_range"] is not None else None

    store = output if kind == "zarr" else output / WORK_STORE
    filtering = min_size > 1
    _create_arrays(store, shape, chunks, [MASK_ARRAY] + ([RAW_ARRAY] if filtering else []))
    mask_path, raw_path = str(store / MASK_ARRAY), str(store / RAW_ARRAY)

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
    # dask threads share one torch intra-op pool; split the cores instead of oversubscribing them.
    torch_threads = torch.get_num_threads()
    if client is None:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))

    if client is not None:
        ship_model, ship_device = client.scatter(run.model.cpu(), broadcast=True), "auto"
        volume_arg = source
    else:
        ship_model, ship_device = model, None
        volume_arg = volume
    digits = max(5, len(str(shape[0] - 1)))
    slabs = sorted({b.start[0]: b.stop[0] for b in blocks}.items())
    phases = [("predict", {b.index: (_predict_task, ship_model, ship_device, volume_arg,
                                     raw_path if filtering else mask_path, b, halo, patch_size, norm_range,
                                     overlap, tta_flips, threshold, sw_batch_size, spec) for b in blocks})]
    if filtering:
        phases.append(("filter", {b.index: (_filter_task, raw_path, mask_path, b, int(min_size)) for b in blocks}))
    if kind == "tiff":
        phases.append(("export", {z0: (_export_task, mask_path, str(output), z0, z1, digits) for z0, z1 in slabs}))

    try:
        with torch.no_grad(), _progress_bar(progress) as bar:
            for phase, tasks in phases:
                finished = tracker.done(phase)
                todo = {i: t for i, t in tasks.items() if i not in finished}
                task = bar.add_task(f"{output.name}: {phase}", total=len(tasks), completed=len(tasks) - len(todo))

                def on_done(index, phase=phase, task=task):
                    tracker.mark(phase, index)
                    bar.advance(task)

                try:
                    _run_tasks(todo, on_done, scheduler, workers, client)
                finally:
                    tracker.save()
    finally:
        torch.set_num_threads(torch_threads)
        if client is not None:
            client.close()
        _open_array.cache_clear()

    if kind == "zarr":
        _finish_zarr(output, shape, spacing, {"run": str(run.path), "source": identity["input"]["path"],
                                              "threshold": threshold, "min_size": int(min_size)})
        if filtering:
            shutil.rmtree(store / RAW_ARRAY, ignore_errors=True)
    else:
        _publish_slices(output, shape[0], digits)
    state["complete"] = True
    tracker.save()
    if kind == "tiff":
        shutil.rmtree(store, ignore_errors=True)
    return output
