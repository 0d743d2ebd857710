"""The per-object table of spot-like structures, accumulated block by block from moments.

Each block contributes, for each of its local components, additive *moments*: voxel count, sums
of the z, y and x indices, bounding box, intensity sum and maximum. Joining the blocks' moments
through the label lookup (:func:`selma3d.objects.labels.resolve`) gives, per object, exactly what
:func:`skimage.measure.regionprops_table` computes on the whole volume (centroid = sums / count,
``area`` = count, ``bbox`` with exclusive stops, ``intensity_mean`` / ``intensity_max``) without
ever holding more than one block of the image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import cc3d
import numpy as np

from ..utils.atomic import atomic_path

MOMENTS = ("count", "sum_z", "sum_y", "sum_x", "min_z", "min_y", "min_x", "max_z", "max_y", "max_x")
INTENSITY_MOMENTS = ("intensity_sum", "intensity_max")


def block_moments(labels: np.ndarray, n: int, start: Sequence[int], image: np.ndarray | None = None) -> dict:
    """Moments of components ``1..n`` of one block whose first voxel is ``start`` (global indices).

    ``cc3d.statistics`` gives counts, centroids and bounding boxes in one C++ pass; the index sums
    are centroid × count rounded to the nearest integer, which recovers the exact integer sum as
    long as it stays far below 2⁵² (a 10¹¹-voxel object at index 10⁴ is 10¹⁵)."""
    moments: dict[str, np.ndarray] = {}
    if n == 0:
        for name in MOMENTS + (INTENSITY_MOMENTS if image is not None else ()):
            moments[name] = np.empty(0, np.float64 if name.startswith("intensity") else np.int64)
        return moments
    stats = cc3d.statistics(labels, no_slice_conversion=True)
    count = stats["voxel_counts"][1:n + 1].astype(np.int64)
    centroids = stats["centroids"][1:n + 1]
    boxes = stats["bounding_boxes"][1:n + 1].astype(np.int64)  # zmin, zmax, ymin, ymax, xmin, xmax (inclusive)
    moments["count"] = count
    for axis, name in enumerate("zyx"):
        local_sum = np.rint(centroids[:, axis] * count).astype(np.int64)
        moments[f"sum_{name}"] = local_sum + count * int(start[axis])
        moments[f"min_{name}"] = boxes[:, 2 * axis] + int(start[axis])
        moments[f"max_{name}"] = boxes[:, 2 * axis + 1] + int(start[axis])
    if image is not None:
        flat = labels.reshape(-1)
        where = np.flatnonzero(flat)  # foreground only: usually a small part of the block
        owner = flat[where].astype(np.intp)
        values = image.reshape(-1)[where].astype(np.float64)
        moments["intensity_sum"] = np.bincount(owner, weights=values, minlength=n + 1)[1:]
        maxima = np.full(n + 1, -np.inf)
        np.maximum.at(maxima, owner, values)
        moments["intensity_max"] = maxima[1:]
    return moments


def object_table(moments: Sequence[dict], ids: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)):
    """One row per object (``ids`` 1..K) from the blocks' moments, concatenated in node order
    (block by block, local label order: the order of ``ids``). Returns a pandas DataFrame.

    Columns: ``id``; ``centroid_z/y/x`` (voxel indices) and ``centroid_z/y/x_um``; ``volume_voxels``
    and ``volume_um3``; ``bbox_z0, y0, x0`` (first voxel) and ``bbox_z1, y1, x1`` (one past the
    last, as in regionprops); ``intensity_mean`` and ``intensity_max`` when an image was given."""
    import pandas as pd

    joined = {name: np.concatenate([m[name] for m in moments]) if moments else np.empty(0)
              for name in (moments[0] if moments else MOMENTS)}
    k = int(ids.max()) if len(ids) else 0
    owner = ids.astype(np.intp) - 1

    def total(name):
        return np.bincount(owner, weights=joined[name], minlength=k)

    def extreme(name, ufunc, start):
        out = np.full(k, start, dtype=joined[name].dtype if start not in (np.inf, -np.inf) else np.float64)
        ufunc.at(out, owner, joined[name])
        return out

    count = np.bincount(owner, weights=joined["count"], minlength=k).astype(np.int64)
    spacing = [float(s) for s in spacing]
    table = {"id": np.arange(1, k + 1, dtype=np.int64)}
    for axis, name in enumerate("zyx"):
        table[f"centroid_{name}"] = total(f"sum_{name}") / np.maximum(count, 1)
    for axis, name in enumerate("zyx"):
        table[f"centroid_{name}_um"] = table[f"centroid_{name}"] * spacing[axis]
    table["volume_voxels"] = count
    table["volume_um3"] = count * float(np.prod(spacing))
    big = np.iinfo(np.int64).max
    for name in "zyx":
        table[f"bbox_{name}0"] = extreme(f"min_{name}", np.minimum, big)
    for name in "zyx":
        table[f"bbox_{name}1"] = extreme(f"max_{name}", np.maximum, -1) + 1
    if "intensity_sum" in joined:
        table["intensity_mean"] = total("intensity_sum") / np.maximum(count, 1)
        table["intensity_max"] = extreme("intensity_max", np.maximum, -np.inf)
    return pd.DataFrame(table)


def write_table(frame, folder: str | os.PathLike, stem: str) -> list[Path]:
    """``folder/stem.csv`` and ``folder/stem.parquet``, each written to a temporary name and
    renamed, so a reader never sees half a table."""
    folder = Path(folder)
    written = []
    for suffix, write in ((".csv", lambda f, p: f.to_csv(p, index=False)),
                          (".parquet", lambda f, p: f.to_parquet(p, index=False, engine="pyarrow"))):
        path = folder / f"{stem}{suffix}"
        with atomic_path(path, suffix=suffix) as tmp:
            write(frame, tmp)
        written.append(path)
    return written
