"""``convert_to_zarr``: any volume into a resumable, verified OME-Zarr pyramid (:mod:`.zarrstore`).

Streams the input one slab (one chunk depth of z slices) at a time; finished slabs are recorded
in the store's progress file, so a killed conversion resumes; the OME metadata goes in last.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from ..errors import InputError, Selma3dError
from ..utils.journal import check_identity, save_journal
from ..utils.progress import progress_bar
from ..utils.triples import parse_triple
from .volume import open_volume
from .zarrstore import (PROGRESS_FILE, PROGRESS_FORMAT, PROGRESS_WORDING, describe_source, downsample_mean,
                        ome_metadata, pyramid_shapes, read_progress)


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
        save_journal(out / PROGRESS_FILE, state)

    def slabs(n):
        return [(i, i * chunks, min((i + 1) * chunks, n)) for i in range(-(-n // chunks))]

    phases = [("level 0", slabs(shape[0]))]
    phases += [(f"level {lv}", slabs(s[0])) for lv, s in enumerate(level_shapes) if lv]
    if verify:
        phases.append(("verify", slabs(shape[0])))
    done = state.setdefault("done", {})

    with progress_bar(progress, "convert", unit="slabs", transient=False) as bar:
        for phase, phase_slabs in phases:
            finished = set(done.setdefault(phase, []))
            task = bar.add_task(f"{out.name}: {phase}", total=len(phase_slabs), completed=len(finished))
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
            state = read_progress(out)
            if state is None:
                raise InputError(f"{out}: already exists and was not written by 'selma3d convert'; "
                                 "use --overwrite to replace it")
            if state.get("source", {}).get("path") != source_info["path"]:
                raise InputError(f"{out}: was converted from {state.get('source', {}).get('path')}, "
                                 f"not {source_info['path']}; use --overwrite to replace it")
            if state.get("source") != source_info:
                raise InputError(f"{out}: the input {source_info['path']} changed since this store was "
                                 "started (files, sizes or times differ); use --overwrite to start again")
            check_identity(state, params, out, PROGRESS_WORDING, section="params")
            return state
    out.mkdir(parents=True, exist_ok=True)
    state = {"format": PROGRESS_FORMAT, "source": source_info, "params": params, "done": {}, "complete": False}
    save_journal(out / PROGRESS_FILE, state)  # before any data, so a kill leaves a resumable store
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
