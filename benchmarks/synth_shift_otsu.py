"""How hard each split of a synthetic dataset is for a plain threshold, and what it looks like.

For every split and structure: the Dice of a per-case Otsu threshold (``image > t``, mean and
range over cases) and the measured statistics the shift is defined by — mean object volume
(voxels per 26-connected component), foreground fraction, foreground/background ratio above the
camera offset, background (median), noise (robust std of neighbour differences in the
background) and SNR. A shifted split must stay solvable by a threshold (c-Fos Otsu Dice
~0.6–0.85) while differing from train in the documented direction (``selma3d.data.domain``).
Run:

    selma3d synth /tmp/small --preset small --shift --quiet
    .venv/bin/python benchmarks/synth_shift_otsu.py /tmp/small
"""

from __future__ import annotations

import argparse
import math

import cc3d
import numpy as np
from skimage.filters import threshold_otsu

CAMERA_OFFSET = 100.0


def measure(image: np.ndarray, label: np.ndarray) -> dict[str, float]:
    img, lab = image.astype(np.float64), label > 0
    n = int(cc3d.connected_components(lab, connectivity=26).max())
    bg, fg = float(np.median(img[~lab])), float(img[lab].mean())
    diff = np.diff(img, axis=2)[~lab[:, :, 1:] & ~lab[:, :, :-1]]
    noise = 1.4826 * float(np.median(np.abs(diff - np.median(diff)))) / math.sqrt(2)
    otsu = img > threshold_otsu(img)
    return {"otsu_dice": 2 * (otsu & lab).sum() / (otsu.sum() + lab.sum()),
            "object_volume": lab.sum() / max(n, 1), "fraction": lab.mean(),
            "fg_bg": (fg - CAMERA_OFFSET) / (bg - CAMERA_OFFSET), "background": bg, "noise": noise,
            "snr": (fg - bg) / noise}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data", help="a dataset folder written by `selma3d synth`")
    args = parser.parse_args()

    from selma3d.data.layout import load_dataset
    from selma3d.io.nifti import read_nifti

    dataset = load_dataset(args.data)
    groups: dict[tuple[str, str], list[dict]] = {}
    for case in dataset.annotated_cases():
        stats = measure(read_nifti(case.image).array, read_nifti(case.label).array)
        groups.setdefault((case.structure, case.split), []).append(stats)
    print("| structure | split | n | Otsu Dice mean [min, max] | object vol | fg fraction | fg/bg "
          "| background | noise | SNR |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (structure, split), rows in sorted(groups.items()):
        d = np.array([r["otsu_dice"] for r in rows])

        def mean(key):
            return float(np.mean([r[key] for r in rows]))

        print(f"| {structure} | {split} | {len(rows)} | {d.mean():.3f} [{d.min():.3f}, {d.max():.3f}] | "
              f"{mean('object_volume'):.0f} | {mean('fraction'):.4f} | {mean('fg_bg'):.2f} | "
              f"{mean('background'):.0f} | {mean('noise'):.1f} | {mean('snr'):.1f} |")
    shifted = dataset.shifted_splits
    for split, info in shifted.items():
        print(f"\n{split} (relative to {info.get('relative_to')}): {info.get('description')}")


if __name__ == "__main__":
    main()
