"""Volume totals and the per-region summary (``summary.csv``).

One row for the whole volume (``region`` = ``all``) and, given a label volume of brain regions on
the mask's grid (any atlas the user registered), one row per region label, with the columns a
cell-counting tool such as brainmapper reports (counts, region volume, density) and, for tree-like
structures, skeleton length, length density and branch-point density.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

UM3_PER_MM3 = 1e9


def summary_rows(region_voxels: Mapping[int, int], voxel_um3: float, objects: Mapping[int, int],
                 tree: Mapping[str, Mapping[int, float]] | None = None) -> list[dict]:
    """Rows of ``summary.csv``: ``region_voxels`` (label → voxel count; key ``-1`` = whole volume),
    ``objects`` (label → object count, objects assigned by the region at their centroid), ``tree``
    (``length_um``, ``branch_points``, ``endpoints`` → label → value) for tree-like structures."""
    rows = []
    for label in sorted(region_voxels, key=lambda k: (k != -1, k)):
        voxels = int(region_voxels[label])
        volume_mm3 = voxels * voxel_um3 / UM3_PER_MM3
        count = int(objects.get(label, 0))
        row = {"region": "all" if label == -1 else int(label), "voxels": voxels, "volume_mm3": volume_mm3,
               "objects": count, "objects_per_mm3": count / volume_mm3 if volume_mm3 else np.nan}
        if tree is not None:
            length = float(tree["length_um"].get(label, 0.0))
            points = int(tree["branch_points"].get(label, 0))
            row.update({"length_um": length, "length_mm_per_mm3": length / 1000 / volume_mm3 if volume_mm3 else np.nan,
                        "branch_points": points,
                        "branch_points_per_mm3": points / volume_mm3 if volume_mm3 else np.nan,
                        "endpoints": int(tree["endpoints"].get(label, 0))})
        rows.append(row)
    return rows
