"""Chunked, compressed OME-Zarr (zarr v3, OME-NGFF 0.5) volumes with a mean-downsampled pyramid:
the pyramid geometry and metadata, and reading (conversion is :mod:`selma3d.io.zarr_convert`).

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
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import zarr

from ..errors import InputError
from ..utils.journal import Wording, read_journal

PROGRESS_FILE = "selma3d_conversion.json"
PROGRESS_FORMAT = "selma3d-conversion/1"
PROGRESS_WORDING = Wording(noun="conversion progress file", format_noun="progress file format",
                           finished="holds a finished conversion",
                           mismatch="{place}: {what} with {key}={saved}, now {key}={value}; {fix}",
                           mismatch_fix="re-run with the same options or use --overwrite")
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

def read_progress(store: Path) -> dict | None:
    """The conversion progress file of ``store`` (None if it has none); a damaged one is an error."""
    return read_journal(store / PROGRESS_FILE, PROGRESS_FORMAT, PROGRESS_WORDING)


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


# ---------------------------------------------------------------------------------- reading

def _node_type(path: Path) -> str | None:
    from .ngff import node_type

    return node_type(path)


def _check_complete(store: Path) -> None:
    state = read_progress(store)
    if state is not None and not state.get("complete"):
        raise InputError(f"{store}: conversion is incomplete (interrupted?); re-run 'selma3d convert' "
                         "with the same arguments to finish it")


def read_ome(group_path: Path):
    """The validated OME-NGFF multiscale of an image group (:func:`selma3d.io.ngff.read_multiscale`);
    a store :mod:`.zarr_convert` is still converting is refused first."""
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
