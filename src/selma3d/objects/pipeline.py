"""``selma3d stats``: a whole-volume mask (and its image) to instance labels, tables and maps.

Output folder (``OUT/``)::

    labels.zarr        OME-Zarr, uint64 instance labels (26-connected objects, ids 1..K)
    objects.csv/.parquet   one row per object (selma3d.objects.table)
    density.zarr       OME-Zarr, objects per coarse voxel (selma3d.objects.density)
    skeleton.zarr      tree-like only: the joined skeleton (uint8)
    branches.csv/.parquet  tree-like only: one row per skeleton branch (skan)
    summary.csv        totals for the whole volume and, with --regions, per region
    stats.json         totals and the options of the run
    selma3d_stats.json the progress journal ("complete": true is written last)

Steps, each resumable (finished blocks and steps are recorded in the journal; per-block results
are small ``.npz`` files under ``OUT/.work``): ``scan`` (per block: components, faces, moments,
region sizes), ``resolve`` (join across faces), ``labels`` (per block: write global ids),
``table``, ``density``, then for tree-like structures ``skeleton`` (per block, with a halo) and
``branches``; last the summary, the OME metadata of the stores, and ``complete``.

Memory: one block of each input and its labels (about 20 bytes per block voxel), plus what is
per object (faces of the blocks, one table row each) and, for tree-like structures, the joined
skeleton graph — never the volume.
"""

from __future__ import annotations

import math
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import fastremap
import numpy as np

from ..errors import InputError
from . import density as density_mod
from ..blockgrid import block_grid
from ..utils.atomic import atomic_path, write_json
from ..utils.triples import parse_triple
from .blocks import DEFAULT_BLOCK_SIZE, read
from .journal import JOURNAL_FILE, Journal
from .labels import LABEL_DTYPE, block_faces, block_lut, local_components, relabel_block, resolve
from .omezarr import create_image, finish_image
from .skeleton import DEFAULT_HALO, branch_table, graph_counts, skeleton_block, skeleton_points
from .summary import summary_rows
from .table import block_moments, object_table, write_table

KINDS = ("spot", "tree")
WORK = ".work"
DEFAULT_DENSITY_FACTOR = 8


def _describe(path: Path, volume) -> dict:
    """What identifies an input, cheaply even when it is huge (see the journal's identity check)."""
    from ..io.volume import is_zarr
    from ..io.zarrstore import describe_source, describe_zarr_store

    info = {"shape": [int(s) for s in volume.shape], "dtype": np.dtype(volume.dtype).str}
    if is_zarr(path):
        return info | describe_zarr_store(path)
    return info | describe_source(volume if hasattr(volume, "files") else path)


def _open(path, what: str, shape=None):
    from ..io.volume import open_volume

    volume = open_volume(path)
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise InputError(f"{path}: the {what} must be a non-empty 3D (z, y, x) volume, got shape {tuple(volume.shape)}")
    if shape is not None and tuple(volume.shape) != tuple(shape):
        raise InputError(f"{path}: the {what} has shape {tuple(volume.shape)}, the mask {tuple(shape)}; "
                         "they must be on the same voxel grid")
    return volume


def _check_binary(block: np.ndarray, seen: list, where: str) -> None:
    """A mask holds 0 and one other value (1, 255, True ...); several nonzero values mean a label
    image or probabilities, which ``> 0`` would silently merge."""
    values = block[block != 0]
    if not values.size:
        return
    lo, hi = values.min(), values.max()
    if seen:
        lo, hi = min(lo, seen[0]), max(hi, seen[0])
    if lo != hi:
        raise InputError(f"{where}: the mask is not binary (values {lo} and {hi} besides 0); give a 0/1 mask, "
                         "e.g. threshold a probability map or binarize a label image first")
    if not seen:
        seen.append(lo.item())


def _save_npz(path: Path, **arrays) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)  # faces are mostly zeros


def _prepare_output(out: Path, identity: dict, overwrite: bool) -> bool:
    """Clear or check ``out``; True if this run creates it (so a failure on the inputs removes it)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if not (out.is_dir() and any(out.iterdir())):
        fresh = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        return fresh
    ours = (out / JOURNAL_FILE).is_file()
    if not ours:
        raise InputError(f"{out}: already exists and was not written by `selma3d stats`; choose another "
                         "output folder")
    if overwrite:
        shutil.rmtree(out)
        out.mkdir(parents=True)
    return False


def run_stats(mask, out, *, image=None, kind: str = "spot", block_size: Sequence[int] = DEFAULT_BLOCK_SIZE,
              spacing: Sequence[float] | None = None, density_factor: int = DEFAULT_DENSITY_FACTOR,
              regions=None, halo: int = DEFAULT_HALO, overwrite: bool = False, progress: bool = False) -> Path:
    """Instance labels, object table, density map (and for ``kind="tree"`` skeleton and branch
    table) of the binary ``mask`` (a path :func:`~selma3d.io.volume.open_volume` reads), written
    to the folder ``out``; returns ``out``. See the module docstring for the outputs and steps.

    ``image``: the intensity volume on the same grid (mean/max intensity columns); ``regions``: a
    label volume of regions on the same grid (``summary.csv`` rows per region, ``region`` column
    of the tables); ``spacing`` (z, y, x) in µm, default the mask's own (OME-Zarr, NIfTI) or 1;
    ``halo``: context voxels around each block for the skeleton (tree-like only).
    Resumable: run again with the same arguments after a kill; ``overwrite`` starts again."""
    from ..io.volume import volume_spacing

    if kind not in KINDS:
        raise InputError(f"--type must be one of {', '.join(KINDS)}, got {kind!r}")
    block_size = tuple(int(b) for b in block_size)
    if len(block_size) != 3 or min(block_size) < 1:
        raise InputError(f"--block-size needs three positive integers, got {block_size}")
    if int(density_factor) < 1:
        raise InputError(f"--density-factor must be at least 1, got {density_factor}")
    if int(halo) < 0:
        raise InputError(f"--halo must be >= 0, got {halo}")
    mask_path, out = Path(mask), Path(out)
    mask = _open(mask_path, "mask")
    shape = tuple(int(s) for s in mask.shape)
    if np.dtype(mask.dtype).kind not in "biuf":
        raise InputError(f"{mask_path}: a mask must hold numbers, got dtype {mask.dtype}")
    image_path = Path(image) if image is not None else None
    image = _open(image_path, "image", shape) if image_path is not None else None
    regions_path = Path(regions) if regions is not None else None
    regions = _open(regions_path, "region label volume", shape) if regions_path is not None else None
    if regions is not None and np.dtype(regions.dtype).kind not in "biu":
        raise InputError(f"{regions_path}: region labels must be integers, got dtype {regions.dtype}")
    if spacing is None:
        spacing = volume_spacing(mask_path) or (1.0, 1.0, 1.0)
    spacing = parse_triple(spacing, "--spacing", float, allow_single=False)
    chunks = tuple(min(b, n) for b, n in zip(block_size, shape))

    options = {"kind": kind, "block_size": list(chunks), "spacing": list(spacing),
               "density_factor": int(density_factor), "halo": int(halo)}
    identity = {"mask": _describe(mask_path, mask), "options": options,
                "image": _describe(image_path, image) if image is not None else None,
                "regions": _describe(regions_path, regions) if regions is not None else None}
    fresh = _prepare_output(out, identity, overwrite)
    try:
        journal = Journal.start(out, identity)
        if journal.complete:
            return out
        _run(journal, out, mask, image, regions, kind, chunks, spacing, int(density_factor), int(halo),
             mask_path, progress)
    except InputError:
        if fresh:  # the input was bad after all (not binary): leave nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    return out


class _NoProgress:
    """Stands in for a rich progress bar when it is off (a disabled one still prints a newline)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *args, **kwargs):
        return None

    def advance(self, *args):
        pass


def _progress(enabled: bool):
    if not enabled:
        return _NoProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    disable=not enabled, transient=True)


def _run(journal: Journal, out: Path, mask, image, regions, kind, chunks, spacing, factor, halo, mask_path,
         progress) -> None:
    shape = tuple(int(s) for s in mask.shape)
    blocks = block_grid(shape, chunks)
    work = out / WORK
    (work / "scan").mkdir(parents=True, exist_ok=True)
    scan_file = lambda i: work / "scan" / f"{i}.npz"  # noqa: E731

    with _progress(progress) as bar:
        def blockwise(step, fn):
            done = journal.done(step)
            task = bar.add_task(f"{out.name}: {step}", total=len(blocks), completed=len(done))
            for block in blocks:
                if block.index not in done:
                    fn(block)
                    journal.mark(step, block.index)
                    bar.advance(task)

        # -- scan: components, faces, moments and region sizes of each block
        seen_value: list = list(journal.state.get("mask_value", []))

        def scan(block):
            raw = read(mask, block.core)
            _check_binary(raw, seen_value, f"{mask_path} (block at z,y,x {block.start})")
            journal.state["mask_value"] = seen_value
            labels, n = local_components(raw > 0)
            del raw
            moments = block_moments(labels, n, block.start, read(image, block.core) if image is not None else None)
            arrays = {"n": np.int64(n), **block_faces(labels), **{f"m_{k}": v for k, v in moments.items()}}
            if regions is not None:
                # fastremap.unique counts labels without sorting the block (np.unique sorts it)
                keys, sizes = fastremap.unique(read(regions, block.core), return_counts=True)
                arrays.update(region_keys=keys.astype(np.int64), region_sizes=sizes.astype(np.int64))
            _save_npz(scan_file(block.index), **arrays)

        blockwise("scan", scan)

        @lru_cache(maxsize=64)
        def faces_of(index):
            with np.load(scan_file(index)) as data:
                return {k: data[k] for k in data.files if k[:2] in ("lo", "hi")}

        counts = []
        for block in blocks:
            with np.load(scan_file(block.index)) as data:
                counts.append(int(data["n"]))

        # -- resolve: join the blocks' components across faces
        resolved = work / "resolve.npz"
        if not journal.finished("resolve"):
            first_node, ids = resolve(blocks, counts, faces_of)
            _save_npz(resolved, first_node=first_node, ids=ids)
            journal.finish("resolve")
        faces_of.cache_clear()
        with np.load(resolved) as data:
            first_node, ids = data["first_node"], data["ids"]

        # -- labels: global ids, block by block
        labels_array = create_image(out / "labels.zarr", shape, LABEL_DTYPE, chunks)

        def write_labels(block):
            labels_array[block.core] = relabel_block(mask, block, block_lut(first_node, ids, block.index))

        blockwise("labels", write_labels)

        # -- table (+ region of each object) and density map
        moments = []
        for block in blocks:
            with np.load(scan_file(block.index)) as data:
                moments.append({k[2:]: data[k] for k in data.files if k.startswith("m_")})
        table = object_table(moments, ids, spacing)
        del moments
        centroids = table[["centroid_z", "centroid_y", "centroid_x"]].to_numpy()
        if regions is not None:
            table["region"] = _labels_at(regions, np.rint(centroids).astype(np.int64), blocks, chunks)
        if not journal.finished("table"):
            write_table(table, out, "objects")
            journal.finish("table")
        if not journal.finished("density"):
            shutil.rmtree(out / "density.zarr", ignore_errors=True)
            density_mod.write_density(centroids, shape, factor, out / "density.zarr", spacing)
            journal.finish("density")

        # -- tree-like: skeleton per block with a halo, joined branch table
        tree_counts = None
        if kind == "tree":
            (work / "skeleton").mkdir(exist_ok=True)
            skeleton_array = create_image(out / "skeleton.zarr", shape, np.uint8, chunks)

            def skeletonize(block):
                skeleton, radius = skeleton_block(mask, block, halo, spacing)
                skeleton_array[block.core] = skeleton.astype(np.uint8)
                points = skeleton_points(skeleton, radius, block.start)
                if regions is not None:
                    points["region"] = read(regions, block.core)[skeleton].astype(np.int64)
                _save_npz(work / "skeleton" / f"{block.index}.npz", **points)

            blockwise("skeleton", skeletonize)
            parts = {"coords": [], "radius": [], "region": []}
            for block in blocks:
                with np.load(work / "skeleton" / f"{block.index}.npz") as data:
                    for key in data.files:
                        parts[key].append(data[key])
            coords = np.concatenate(parts["coords"]) if parts["coords"] else np.empty((0, 3), np.int64)
            radius = np.concatenate(parts["radius"]) if parts["radius"] else np.empty(0)
            branches, graph, order = branch_table(coords, radius, shape, spacing)
            node_regions = np.concatenate(parts["region"])[order] if parts["region"] else None
            if regions is not None and len(branches):
                # the region of a branch: where its first voxel (src) lies
                src = branches[["src_z", "src_y", "src_x"]].to_numpy()
                branches["region"] = _labels_at(regions, src, blocks, chunks)
            tree_counts = graph_counts(graph, node_regions)
            if not journal.finished("branches"):
                write_table(branches, out, "branches")
                journal.finish("branches")

    # -- summary, totals, then the metadata that marks the stores finished, then `complete`
    voxel_um3 = float(np.prod(spacing))
    region_voxels = {-1: int(np.prod(shape))}
    objects = {-1: len(table)}
    if regions is not None:
        for block in blocks:
            with np.load(scan_file(block.index)) as data:
                for key, size in zip(data["region_keys"], data["region_sizes"]):
                    region_voxels[int(key)] = region_voxels.get(int(key), 0) + int(size)
        objects.update({int(k): int(v) for k, v in table["region"].value_counts().items()})
    rows = summary_rows(region_voxels, voxel_um3, objects, tree_counts)
    import pandas as pd

    frame = pd.DataFrame(rows)
    with atomic_path(out / "summary.csv") as tmp:
        frame.to_csv(tmp, index=False)
    totals = {"objects": len(table), "shape": list(shape), "spacing_um": list(spacing), "kind": kind,
              "volume_mm3": rows[0]["volume_mm3"], "objects_per_mm3": rows[0]["objects_per_mm3"]}
    if tree_counts is not None:
        totals.update({k: rows[0][k] for k in ("length_um", "length_mm_per_mm3", "branch_points",
                                               "branch_points_per_mm3", "endpoints")})
        totals["branches"] = int(len(branches))
    totals["identity"] = journal.state["identity"]
    write_json(out / "stats.json", totals, indent=1, default=None, newline=False)

    info = {"mask": str(mask_path), "kind": kind}
    finish_image(out / "labels.zarr", spacing, info | {"content": "instance labels (26-connected)",
                                                       "objects": len(table)})
    if kind == "tree":
        finish_image(out / "skeleton.zarr", spacing, info | {"content": "skeleton (Lee), per block with halo",
                                                             "halo": halo})
    shutil.rmtree(work, ignore_errors=True)
    journal.set_complete()


def _labels_at(volume, points: np.ndarray, blocks, chunks) -> np.ndarray:
    """``volume`` at integer voxel ``points`` (k, 3), read one block at a time (only the blocks
    that hold a point)."""
    points = np.asarray(points, np.int64).reshape(-1, 3)
    values = np.zeros(len(points), np.int64)
    if not len(points):
        return values
    cell = points // np.asarray(chunks)
    counts = [math.ceil(n / c) for n, c in zip(volume.shape, chunks)]
    owner = np.ravel_multi_index(cell.T, counts)
    for index in np.unique(owner):
        block = blocks[int(index)]
        members = np.flatnonzero(owner == index)
        local = points[members] - np.asarray(block.start)
        values[members] = read(volume, block.core)[tuple(local.T)]
    return values
