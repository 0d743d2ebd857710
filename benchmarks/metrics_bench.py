"""Speed of the SELMA3D tree-like metric set: plain scikit-image recipe vs selma3d.

    .venv/bin/python benchmarks/metrics_bench.py [--size 200] [--repeats 5] [--cases 8]

1. A 200³ microglia-like ground truth (a soma plus thin branching processes) and a prediction
   that perturbs it (boundary noise, a broken process, a spurious loop, scattered false
   positives). The full tree-like set (Dice, clDice, β0 and β1 errors) is computed with the
   official recipe (``skimage.measure.label`` / ``euler_number`` / ``skeletonize`` on the whole
   padded arrays) and with ``selma3d.evaluation.metrics.tree_metrics``; the numbers must be
   identical and the ratio of the best-of-N times is printed. Two more pairs show where the
   gain comes from: the same cell without stray specks in the prediction (only cropping
   matters), and dense vessel-like tubes filling the volume (cropping cannot help).
2. A folder of ``--cases`` such pairs (NIfTI) scored by ``selma3d.evaluation.challenge`` with
   jobs=1 and jobs=2.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import euler_number, label
from skimage.morphology import skeletonize


# ----------------------------------------------------------------------------- the baseline
def recipe_betti(mask: np.ndarray) -> tuple[int, int, int]:
    p = np.pad(mask > 0, 1)
    b0 = int(label(p, connectivity=3).max())
    b2 = int(label(~p, connectivity=1).max()) - 1
    chi = int(euler_number(p, connectivity=3))
    return b0, b0 + b2 - chi, b2


def recipe_tree_metrics(gt: np.ndarray, pred: np.ndarray) -> dict:
    """The scikit-image recipe of the official evaluator, on the whole arrays."""
    g, p = gt > 0, pred > 0
    total = int(g.sum()) + int(p.sum())
    dice = 1.0 if total == 0 else 2.0 * int((g & p).sum()) / total
    sg, sp = skeletonize(g), skeletonize(p)
    tprec = int((p & sg).sum()) / int(sg.sum()) if sg.any() else 0.0
    tsens = int((g & sp).sum()) / int(sp.sum()) if sp.any() else 0.0
    cldice = (2.0 * tprec * tsens + 1e-6) / (tprec + tsens + 1e-6)
    if not g.any() and not p.any():
        e0 = e1 = 0
    else:
        bg, bp = recipe_betti(g), recipe_betti(p)
        e0, e1 = abs(bp[0] - bg[0]), abs(bp[1] - bg[1])
    return {"dice": dice, "cldice": cldice, "betti0_error": e0, "betti1_error": e1}


# ----------------------------------------------------------------------------- data
def _draw_polyline(mask: np.ndarray, points: np.ndarray) -> None:
    for a, b in zip(points[:-1], points[1:]):
        n = int(np.abs(b - a).max()) + 1
        line = np.rint(np.linspace(a, b, n + 1)).astype(int)
        line = line[np.all((line >= 0) & (line < mask.shape), axis=1)]
        mask[tuple(line.T)] = True


def microglia_like(size: int = 200, seed: int = 0) -> np.ndarray:
    """A soma (ellipsoid) with ~8 primary processes that branch into thin secondary ones."""
    rng = np.random.default_rng(seed)
    shape = (size,) * 3
    centre = np.array(shape) / 2 + rng.normal(0, size * 0.03, 3)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    radii = size * np.array([0.030, 0.035, 0.035])
    soma = (((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2
            + ((xx - centre[2]) / radii[2]) ** 2) <= 1.0
    thick = np.zeros(shape, bool)
    thin = np.zeros(shape, bool)
    for _ in range(8):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        point = centre.copy()
        path = [point.copy()]
        for _ in range(int(size * 0.06)):
            direction += rng.normal(0, 0.35, 3)
            direction /= np.linalg.norm(direction)
            point = point + direction * 4.0
            path.append(point.copy())
            if rng.random() < 0.3:  # a thin side branch
                bdir = direction + rng.normal(0, 1.0, 3)
                bdir /= np.linalg.norm(bdir)
                bpoint, branch = point.copy(), [point.copy()]
                for _ in range(int(rng.integers(2, 6))):
                    bdir += rng.normal(0, 0.4, 3)
                    bdir /= np.linalg.norm(bdir)
                    bpoint = bpoint + bdir * 4.0
                    branch.append(bpoint.copy())
                _draw_polyline(thin, np.array(branch))
        _draw_polyline(thick, np.array(path))
    thick = ndi.binary_dilation(thick, ndi.generate_binary_structure(3, 1))
    return soma | thick | thin


def vessel_like(size: int = 200, seed: int = 0) -> np.ndarray:
    """Dense tubes (radius 2) crossing the whole volume: cropping cannot help here."""
    rng = np.random.default_rng(seed)
    lines = np.zeros((size,) * 3, bool)
    for _ in range(30):
        points = [rng.uniform(0, size, 3)]
        for _ in range(8):
            points.append(np.clip(points[-1] + rng.normal(0, size * 0.12, 3), 0, size - 1))
        _draw_polyline(lines, np.array(points))
    return ndi.binary_dilation(lines, ndi.generate_binary_structure(3, 1), iterations=2)


def perturb(gt: np.ndarray, seed: int = 1, specks: int = 12) -> np.ndarray:
    """A plausible prediction: noisy boundary, a broken process, a spurious bridge, false positives."""
    rng = np.random.default_rng(seed)
    pred = gt.copy()
    shell = ndi.binary_dilation(gt) & ~gt
    border = gt & ~ndi.binary_erosion(gt)
    pred[border & (rng.random(gt.shape) < 0.08)] = False
    pred[shell & (rng.random(gt.shape) < 0.05)] = True
    fg = np.argwhere(gt)
    for _ in range(2):  # break a process
        z, y, x = fg[rng.integers(len(fg))]
        pred[max(z - 2, 0): z + 3, max(y - 2, 0): y + 3, max(x - 2, 0): x + 3] = False
    a, b = fg[rng.integers(len(fg))], fg[rng.integers(len(fg))]  # a bridge that may close a loop
    _draw_polyline(pred, np.array([a, b], float))
    for _ in range(specks):  # scattered false-positive specks
        z, y, x = rng.integers(2, np.array(gt.shape) - 3)
        pred[z - 1: z + 2, y - 1: y + 2, x: x + 2] = True
    return pred


# ----------------------------------------------------------------------------- timing
def best_time(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", type=int, default=8)
    args = parser.parse_args()

    from selma3d.evaluation.metrics import tree_metrics

    scenarios = [
        ("microglia-like, prediction with scattered false positives (the goal)",
         microglia_like(args.size, seed=0), lambda g: perturb(g, seed=1), args.repeats),
        ("microglia-like, prediction without stray specks", microglia_like(args.size, seed=0),
         lambda g: perturb(g, seed=1, specks=0), args.repeats),
        ("vessel-like, dense tubes filling the volume", vessel_like(args.size, seed=0),
         lambda g: perturb(g, seed=1), 2),
    ]
    for title, gt, make_pred, repeats in scenarios:
        pred = make_pred(gt)
        print(f"\n{title}: {gt.shape}, gt {int(gt.sum())} voxels, pred {int(pred.sum())} voxels")
        t_recipe, ref = best_time(lambda: recipe_tree_metrics(gt, pred), repeats)
        t_fast, ours = best_time(lambda: tree_metrics(gt, pred), repeats)
        exact = ref == ours
        print(f"  recipe   {t_recipe * 1e3:8.1f} ms  {ref}")
        print(f"  selma3d  {t_fast * 1e3:8.1f} ms  {ours}")
        print(f"  bit-exact: {exact}   speed-up: {t_recipe / t_fast:.1f}x (best of {repeats})")
        if not exact:
            raise SystemExit("results differ from the scikit-image recipe")

    if args.cases:
        from selma3d.evaluation.challenge import evaluate
        from selma3d.io.nifti import write_nifti

        with tempfile.TemporaryDirectory() as tmp:
            gt_dir, pred_dir = Path(tmp, "gt"), Path(tmp, "pred")
            for i in range(args.cases):
                g = microglia_like(args.size, seed=10 + i)
                write_nifti(gt_dir / f"microglia_{i:03d}_label.nii.gz", g.astype(np.uint8))
                write_nifti(pred_dir / f"microglia_{i:03d}.nii.gz", perturb(g, seed=100 + i).astype(np.uint8))
            times = {}
            for jobs in (1, 2):
                times[jobs], result = best_time(lambda: evaluate(pred_dir, gt_dir, jobs=jobs, progress=False), 2)
                assert not result["failures"], result["failures"]
            print(f"folder of {args.cases} cases ({os.cpu_count()} CPUs): jobs=1 {times[1]:.2f} s, "
                  f"jobs=2 {times[2]:.2f} s, ratio {times[1] / times[2]:.2f}x (best of 2)")


if __name__ == "__main__":
    main()
