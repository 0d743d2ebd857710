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

import numpy as np


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data", help="a dataset folder written by `selma3d synth`")
    args = parser.parse_args()

    from selma3d.data.domain import case_statistics
    from selma3d.data.layout import load_dataset
    from selma3d.io.nifti import read_nifti

    dataset = load_dataset(args.data)
    groups: dict[tuple[str, str], list[dict]] = {}
    for case in dataset.annotated_cases():
        stats = case_statistics(read_nifti(case.image).array, read_nifti(case.label).array)
        groups.setdefault((case.structure, case.split), []).append(stats)
    print("| structure | split | n | Otsu Dice mean [min, max] | object vol | fg fraction | fg/bg "
          "| background | noise | SNR |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (structure, split), rows in sorted(groups.items()):
        d = np.array([r["otsu_dice"] for r in rows])

        def mean(key):
            return float(np.mean([r[key] for r in rows]))

        print(f"| {structure} | {split} | {len(rows)} | {d.mean():.3f} [{d.min():.3f}, {d.max():.3f}] | "
              f"{mean('object_volume'):.0f} | {mean('fraction'):.4f} | {mean('contrast'):.2f} | "
              f"{mean('background'):.0f} | {mean('noise'):.1f} | {mean('snr'):.1f} |")
    shifted = dataset.shifted_splits
    for split, info in shifted.items():
        print(f"\n{split} (relative to {info.get('relative_to')}): {info.get('description')}")


if __name__ == "__main__":
    main()
