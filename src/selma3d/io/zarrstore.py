"""Chunked, compressed OME-Zarr (zarr v3, OME-NGFF 0.5) volumes with a mean-downsampled pyramid.

Conversion streams the input one *slab* (one chunk depth of z slices) at a time, so memory stays
bounded whatever the volume size, records finished slabs in a small JSON file inside the store
(written atomically) so a killed conversion resumes where it stopped, checks at the end that
level 0 equals the input, and writes the OME ``multiscales`` metadata *last*: until then the
store does not look like a finished image and :func:`open_zarr_volume` refuses it.

zarr-python writes the arrays; the OME-NGFF metadata is plain JSON in the group attributes and is
written by hand here (the OME-Zarr libraries add heavy dependencies and lag behind zarr v3).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from ..errors import InputError, Selma3dError
from ..utils.atomic import write_json
from ..utils.triples import parse_triple

PROGRESS_FILE = "selma3d_conversion.json"
PROGRESS_FORMAT = "selma3d-conversion/1"
OME_VERSION = "0.5"
MIN_LEVEL_SIZE = 32
DEFAULT_MAX_LEVELS = 8


# ----------------------------------------------------------------------------------- pyramid

def pyramid_shapes(shape: Sequence[int], max_levels: int | None = None,
                   min_size: int | None = None) -> list[tuple[int, ...]]:
    """Level shapes, each half (rounded up) of the previous one. A level is added only while its
    smallest axis stays >= ``min_size``; there are at most ``max_levels`` levels (level 0 included)."""
    max_levels = DEFAULT_MAX_LEVELS if max_levels is None else max_levels
    min_size = MIN_LEVEL_SIZE if min_size is None else min_size
    if max_levels < 1:
        raise InputError(f"--levels must be at least 1, got {max_levels}")
    shapes = [tuple(int(s) for s in shape)]
    while len(shapes) < max_levels:
        nxt = tuple(-(-s // 2) for s in shapes[-1])
        if min(nxt) < min_size:
            break
        shapes.append(nxt)
    return shapes


def _block_sums(block: np.ndarray) -> np.ndarray:
    """Sums of 2×2×2 blocks as float32; a missing partner at an odd trailing edge is the edge
    voxel itself (edge replication). General but slow (fancy indexing): used for thin edges."""
    out_shape = tuple(-(-n // 2) for n in block.shape)
    acc = np.zeros(out_shape, np.float32)
    for offsets in np.ndindex(2, 2, 2):
        index = [np.minimum(np.arange(m) * 2 + d, n - 1) for m, n, d in zip(out_shape, block.shape, offsets)]
        acc += block[np.ix_(*index)]
    return acc


def downsample_mean(block: np.ndarray) -> np.ndarray:
    """2× mean downsampling in z, y and x; an odd trailing edge is averaged with itself (edge
    replication, so borders are not darkened as zero padding would). Integer inputs are rounded.

    The even-sized core is summed from eight strided views (no copies of the input); memory is
    one float32 array of the *output* size (1/8 of the input voxels)."""
    block = np.asarray(block)
    nz, ny, nx = block.shape
    ez, ey, ex = nz - nz % 2, ny - ny % 2, nx - nx % 2
    acc = np.zeros(tuple(-(-n // 2) for n in block.shape), np.float32)
    core = acc[:ez // 2, :ey // 2, :ex // 2]
    for dz, dy, dx in np.ndindex(2, 2, 2):
        core += block[dz:ez:2, dy:ey:2, dx:ex:2]
    if nz % 2:
        acc[-1] = _block_sums(block[-1:])[0]
    if ny % 2:
        acc[:ez // 2, -1] = _block_sums(block[:ez, -1:])[:, 0]
    if nx % 2:
        acc[:ez // 2, :ey // 2, -1] = _block_sums(block[:ez, :ey, -1:])[:, :, 0]
    acc /= 8
    if np.issubdtype(block.dtype, np.integer):
        info = np.iinfo(block.dtype)
        return np.clip(np.rint(acc), info.min, info.max).astype(block.dtype)
    return acc.astype(block.dtype)


# --------------------------------------------------------------------------------- metadata

def ome_metadata(level_shapes: Sequence[Sequence[int]], spacing: Sequence[float], name: str) -> dict:
    """OME-NGFF 0.5 ``ome`` attribute: axes z/y/x in micrometers, scale (and the half-voxel
    translation that mean downsampling implies) per level."""
    datasets = []
    for level, shape in enumerate(level_shapes):
        factor = [2.0 ** level] * 3  # every level halves every axis (rounding sizes up)
        scale = [float(s * f) for s, f in zip(spacing, factor)]
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
        if level:
            transforms.append({"type": "translation",
                               "translation": [float(s * (f - 1) / 2) for s, f in zip(spacing, factor)]})
        datasets.append({"path": str(level), "coordinateTransformations": transforms})
    return {
        "version": OME_VERSION,
        "multiscales": [{
            "name": name,
            "axes": [{"name": ax, "type": "space", "unit": "micrometer"} for ax in ("z", "y", "x")],
            "datasets": datasets,
            "type": "mean",
            "metadata": {"description": "2x mean downsampling in z, y, x (selma3d.io.zarrstore.downsample_mean)"},
        }],
    }


# ---------------------------------------------------------------------------------- progress

def _read_progress(store: Path) -> dict | None:
    path = store / PROGRESS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable conversion progress file ({exc}); use --overwrite") from None
    if data.get("format") != PROGRESS_FORMAT:
        raise InputError(f"{path}: unknown progress file format {data.get('format')!r}; use --overwrite")
    return data


def describe_source(source) -> dict:
    """What identifies the input, so a resumed conversion can refuse a different one: its path and
    a fingerprint of file names, sizes and modification times (for a TIFF folder, of every slice)."""
    path = getattr(source, "path", None) if not isinstance(source, (str, os.PathLike)) else Path(source)
    if path is None:
        return {"path": None}
    path = Path(path).resolve()
    digest = hashlib.sha1()
    files = getattr(source, "files", None)
    if files is None:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        st = Path(f).stat()
        digest.update(f"{Path(f).name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"path": str(path), "fingerprint": digest.hexdigest()}


def describe_zarr_store(path: str | os.PathLike) -> dict:
    """What identifies a Zarr store without reading its chunks: its path and a fingerprint of the
    metadata files of the group and its arrays (shape, chunks, codecs, attributes)."""
    path = Path(path)
    digest = hashlib.sha1()
    for meta in sorted(path.rglob("zarr.json")):
        if len(meta.relative_to(path).parts) <= 2:
            digest.update(meta.read_bytes())
    return {"path": str(path.resolve()), "fingerprint": digest.hexdigest()}


# -------------------------------------------------------------------------------- conversion

def convert_to_zarr(source, out: str | os.PathLike, *, chunks: int = 64,
                    spacing: Sequence[float] = (1.0, 1.0, 1.0), levels: int | None = None,
                    overwrite: bool = False, verify: bool = True, progress: bool = True) -> Path:
    """Convert ``source`` (a TIFF slice folder, any path :func:`~selma3d.io.volume.open_volume`
    reads, or a (z, y, x) array-like) into an OME-Zarr store at ``out``.

    Chunks are ``chunks``³ voxels (capped by the level's shape), Blosc-zstd compressed. Levels
    1.. are 2× mean-downsampled until the smallest axis would drop below 32 or ``levels`` levels
    exist.

    Memory bound: about two slabs of ``chunks`` full-size slices of the input
    (``2 · chunks · Y · X · itemsize``: one slab of input plus zarr's encode buffers, or input and
    stored slab during verification), never the whole volume. Use smaller ``chunks`` to lower it.

    Resumable: finished slabs are recorded in ``out/selma3d_conversion.json``; running again with
    the same input and options finishes only what is missing. A store started from another input
    or with other options is refused unless ``overwrite``.
    """
    from .volume import open_volume

    out = Path(out)
    volume = open_volume(source) if isinstance(source, (str, os.PathLike)) else source
    shape = tuple(int(s) for s in volume.shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"{source if isinstance(source, (str, os.PathLike)) else 'input'}: "
                         f"expected a non-empty 3D (z, y, x) volume, got shape {shape}")
    if chunks < 1:
        raise InputError(f"--chunks must be a positive number of voxels, got {chunks}")
    spacing = list(parse_triple(spacing, "--spacing", float, allow_single=False))
    dtype = np.dtype(volume.dtype)
    if dtype == bool:
        raise InputError("boolean volumes cannot be converted; cast to uint8 first")
    level_shapes = pyramid_shapes(shape, levels)
    params = {"shape": list(shape), "dtype": dtype.str, "chunks": chunks, "spacing": spacing,
              "level_shapes": [list(s) for s in level_shapes]}
    source_info = describe_source(source)

    state = _prepare_store(out, params, source_info, overwrite)
    if state.get("complete"):
        return out

    group = zarr.open_group(str(out), mode="a", zarr_format=3)
    arrays = []
    for level, level_shape in enumerate(level_shapes):
        name = str(level)
        if name in group:
            arrays.append(group[name])
            continue
        arrays.append(group.create_array(
            name, shape=level_shape, dtype=dtype, chunks=tuple(min(chunks, s) for s in level_shape),
            compressors=BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),
            fill_value=0, dimension_names=("z", "y", "x")))

    def save():
        write_json(out / PROGRESS_FILE, state, indent=1, default=None, newline=False)

    def slabs(n):
        return [(i, i * chunks, min((i + 1) * chunks, n)) for i in range(-(-n // chunks))]

    phases = [("level 0", slabs(shape[0]))]
    phases += [(f"level {lv}", slabs(s[0])) for lv, s in enumerate(level_shapes) if lv]
    if verify:
        phases.append(("verify", slabs(shape[0])))
    done = state.setdefault("done", {})

    with _progress_bar(progress) as bar:
        for phase, phase_slabs in phases:
            finished = set(done.setdefault(phase, []))
            task = bar.add_task(f"{out.name}: {phase}", total=len(phase_slabs), completed=len(finished)) if bar else None
            for index, z0, z1 in phase_slabs:
                if index in finished:
                    continue
                if phase == "level 0":
                    arrays[0][z0:z1] = np.asarray(volume[z0:z1], dtype=dtype)
                elif phase == "verify":
                    _verify_slab(volume, arrays[0], z0, z1, out)
                else:
                    level = int(phase.split()[1])
                    _downsample_slab(arrays[level - 1], arrays[level], z0, z1, chunks)
                finished.add(index)
                done[phase] = sorted(finished)
                save()
                if bar:
                    bar.advance(task)

    # Completion: the OME metadata is the marker that the image is whole, so it goes in last.
    group.attrs.update({"ome": ome_metadata(level_shapes, spacing, name=out.stem),
                        "selma3d": {"source": source_info["path"], "verified": bool(verify)}})
    state["complete"] = True
    save()
    return out


def _prepare_store(out: Path, params: dict, source_info: dict, overwrite: bool) -> dict:
    """Create, resume or (with ``overwrite``) replace the store; return the progress state."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        looks_like_zarr = (out / "zarr.json").is_file() or (out / PROGRESS_FILE).is_file()
        if overwrite:
            if not looks_like_zarr:
                raise InputError(f"{out}: refusing to overwrite a non-empty folder that is not a Zarr store")
            shutil.rmtree(out)
        else:
            state = _read_progress(out)
            if state is None:
                raise InputError(f"{out}: already exists and was not written by 'selma3d convert'; "
                                 "use --overwrite to replace it")
            if state.get("source", {}).get("path") != source_info["path"]:
                raise InputError(f"{out}: was converted from {state.get('source', {}).get('path')}, "
                                 f"not {source_info['path']}; use --overwrite to replace it")
            if state.get("source") != source_info:
                raise InputError(f"{out}: the input {source_info['path']} changed since this store was "
                                 "started (files, sizes or times differ); use --overwrite to start again")
            for key, value in params.items():
                if state.get("params", {}).get(key) != value:
                    what = "holds a finished conversion" if state.get("complete") else "was started"
                    raise InputError(f"{out}: {what} with {key}={state.get('params', {}).get(key)}, "
                                     f"now {key}={value}; re-run with the same options or use --overwrite")
            return state
    out.mkdir(parents=True, exist_ok=True)
    state = {"format": PROGRESS_FORMAT, "source": source_info, "params": params, "done": {}, "complete": False}
    write_json(out / PROGRESS_FILE, state, indent=1, default=None, newline=False)  # before any data, so a kill leaves a resumable store
    zarr.open_group(str(out), mode="a", zarr_format=3, attributes={"selma3d": {"conversion": "incomplete"}})
    return state


def _downsample_slab(src, dst, z0: int, z1: int, chunks: int) -> None:
    """Fill ``dst[z0:z1]`` from ``src[2*z0:2*z1]``, reading at most ``chunks`` source slices at a time."""
    step = max(1, chunks // 2)
    for o0 in range(z0, z1, step):
        o1 = min(o0 + step, z1)
        block = src[2 * o0:min(2 * o1, src.shape[0])]
        dst[o0:o1] = downsample_mean(block)


def _verify_slab(volume, stored, z0: int, z1: int, out: Path) -> None:
    expected = np.asarray(volume[z0:z1])
    actual = stored[z0:z1]
    if not np.array_equal(expected, actual):
        bad = int(np.nonzero((expected != actual).reshape(z1 - z0, -1).any(axis=1))[0][0]) + z0
        raise Selma3dError(f"{out}: verification failed: level 0 slice {bad} differs from the input; "
                           "re-run with --overwrite")


class _NoBar:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _progress_bar(enabled: bool):
    if not enabled:
        return _NoBar()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("slabs"),
                    TimeRemainingColumn())


# ---------------------------------------------------------------------------------- reading

def _node_type(path: Path) -> str | None:
    from .ngff import node_type

    return node_type(path)


def _check_complete(store: Path) -> None:
    state = _read_progress(store)
    if state is not None and not state.get("complete"):
        raise InputError(f"{store}: conversion is incomplete (interrupted?); re-run 'selma3d convert' "
                         "with the same arguments to finish it")


def read_ome(group_path: Path):
    """The validated OME-NGFF multiscale of an image group (:func:`selma3d.io.ngff.read_multiscale`);
    a store this module is still converting is refused first."""
    from .ngff import read_multiscale

    _check_complete(group_path)
    return read_multiscale(group_path)


def _open_array(path: Path):
    try:
        return zarr.open_array(str(path), mode="r")
    except Exception as exc:
        raise InputError(f"{path}: cannot open Zarr array ({type(exc).__name__}: {exc})") from None


def open_zarr_volume(path: str | os.PathLike, level: int = 0):
    """Level ``level`` of an OME-Zarr image (zarr v3 / NGFF 0.5 or zarr v2 / NGFF 0.4, any writer),
    or the array at ``path`` if it is one level (or any plain zarr array), as (z, y, x).

    Lazy: slicing reads only the chunks it touches. Singleton non-space axes (one channel, one
    time point) are dropped through :class:`~selma3d.io.axes.ZYXView`.
    """
    from .axes import ZYXView

    path = Path(path)
    kind = _node_type(path)
    if kind is None:
        raise InputError(f"{path}: not a Zarr store (no zarr.json, .zarray or .zgroup)")
    fixed = None
    if kind == "array":
        if level:
            raise InputError(f"{path}: is a single Zarr array (one level); --level {level} needs the OME-Zarr "
                             "group above it")
        parent = path.resolve().parent
        if _node_type(parent) == "group":
            _check_complete(parent)
            try:
                ms = read_ome(parent)
            except InputError:
                ms = None  # a plain array inside some group: no OME axes to apply
            if ms is not None and path.resolve().name in [lv.path for lv in ms.levels]:
                array = _open_array(path)
                fixed = ms.fixed_index(array.shape)
        array = _open_array(path) if fixed is None else array
    else:
        ms = read_ome(path)
        array = _open_array(ms.level_path(level))
        fixed = ms.fixed_index(array.shape)
    if fixed is not None and any(f is not None for f in fixed):
        return ZYXView(array, fixed, path=path)
    if array.ndim != 3:
        raise InputError(f"{path}: expected a 3D (z, y, x) array, got shape {array.shape}")
    return array


def zarr_level_path(path: str | os.PathLike, level: int) -> Path:
    """The array folder of level ``level`` of the OME-Zarr image at ``path``."""
    return read_ome(Path(path)).level_path(level)


def zarr_spacing(path: str | os.PathLike, level: int | None = None) -> tuple[float, float, float] | None:
    """Voxel spacing (z, y, x) in micrometers from the OME scale of a store (level 0 by default) or
    of the level ``path`` points at; ``None`` without OME metadata."""
    path = Path(path)
    if _node_type(path) == "array":
        group, name = path.resolve().parent, path.resolve().name
        if _node_type(group) != "group":
            return None  # a plain Zarr array: no OME metadata anywhere
    else:
        group, name = path, None
    try:
        ms = read_ome(group)
    except InputError:
        return None  # no (valid) OME metadata: opening the volume says what is wrong
    if name is not None:
        for i, lv in enumerate(ms.levels):
            if lv.path == name:
                return ms.spacing(i)
        return None
    return ms.spacing(level or 0)
