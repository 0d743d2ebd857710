"""Speed of the 2026 panoptic path: selma3d's ``--edition 2026`` scoring vs panoptica called directly.

    .venv/bin/python benchmarks/editions_bench.py [--size 200] [--cases 8] [--repeats 3]

For each scenario, ``--cases`` pairs of ``--size``³ masks of isolated structures (cubes of
side 4-7, a prediction shifted by one voxel with some objects dropped and specks added):

* baseline: what the 2026 scorer does per case, in this process: its Dice rules, then a new
  ``Panoptica_Evaluator`` (semantic input, connected components, NaiveThresholdMatching(0.3),
  DSC) on the whole uint8 arrays, ``pq_dsc``;
* selma3d: ``get_edition("2026").score("isolated", gt, pred)``: the same Dice and the same
  panoptica evaluator on the union's bounding box (+1 voxel), plus the object-level extras
  read from the same result.

The values must be identical (checked, NaN-aware); the printed ratio is baseline time /
selma3d time, each the sum over cases of the best of ``--repeats`` back-to-back timings. Scenarios: ``dense`` (objects everywhere: the crop
cannot help, the ratio shows the overhead), ``sparse`` (objects in one 64³ corner, as in a
patch with a few cells).
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np


def make_pair(size: int, rng: np.random.Generator, extent: int, n_objects: int) -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros((size,) * 3, bool)
    corners = rng.integers(0, extent - 7, (n_objects, 3))
    sides = rng.integers(4, 8, (n_objects, 3))
    for (z, y, x), (a, b, c) in zip(corners, sides):
        gt[z: z + a, y: y + b, x: x + c] = True
    pred = np.roll(gt, 1, axis=2)
    keep = np.zeros_like(pred)
    keep[:, :, : extent // 2] = True
    pred &= keep | (rng.random(pred.shape) < 0.9)  # a few objects lose voxels
    specks = rng.integers(0, extent, (n_objects // 4, 3))
    pred[tuple(specks.T)] = True
    return gt, pred


def official_case(gt: np.ndarray, pred: np.ndarray) -> dict:
    from panoptica import (ConnectedComponentsInstanceApproximator, InputType, NaiveThresholdMatching,
                           Panoptica_Evaluator)
    from panoptica.metrics import Metric

    p, g = pred.astype(np.uint8), gt.astype(np.uint8)
    ps, gs = int(p.sum()), int(g.sum())
    dice = 1.0 if ps == gs == 0 else 0.0 if ps == 0 or gs == 0 else float(2.0 * int((p & g).sum()) / (ps + gs))
    evaluator = Panoptica_Evaluator(expected_input=InputType.SEMANTIC,
                                    instance_approximator=ConnectedComponentsInstanceApproximator(cca_backend=None),
                                    instance_matcher=NaiveThresholdMatching(matching_threshold=0.3),
                                    instance_metrics=[Metric.DSC])
    return {"dice": dice, "panoptic_quality": evaluator.evaluate(p, g, verbose=False)["ungrouped"].pq_dsc}


def interleaved_best(pairs, baseline, ours, repeats: int):
    """Per case, the best of ``repeats`` times of each side, measured back to back (baseline then
    ours, case by case) so that the load of a shared machine hits both alike; totals over cases."""
    best_base, best_ours = [math.inf] * len(pairs), [math.inf] * len(pairs)
    base_values, our_values = [None] * len(pairs), [None] * len(pairs)
    for _ in range(repeats):
        for i, (g, p) in enumerate(pairs):
            start = time.perf_counter()
            base_values[i] = baseline(g, p)
            middle = time.perf_counter()
            our_values[i] = ours(g, p)
            end = time.perf_counter()
            best_base[i] = min(best_base[i], middle - start)
            best_ours[i] = min(best_ours[i], end - middle)
    return sum(best_base), base_values, sum(best_ours), our_values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import panoptica

    from selma3d.evaluation.editions import get_edition

    panoptica.disable_citation_reminder()
    edition = get_edition("2026")
    rng = np.random.default_rng(0)
    warm = make_pair(32, rng, 32, 4)
    official_case(*warm), edition.score("isolated", *warm)  # imports and first-call costs out of the timing
    for scenario, extent, n_objects in (("dense", args.size, 1500), ("sparse", 64, 60)):
        pairs = [make_pair(args.size, rng, extent, n_objects) for _ in range(args.cases)]
        t_base, base, t_ours, ours = interleaved_best(pairs, official_case,
                                                      lambda g, p: edition.score("isolated", g, p)[0], args.repeats)
        for b, o in zip(base, ours):
            for key, value in b.items():
                assert o[key] == value or (math.isnan(o[key]) and math.isnan(value)), (scenario, key, o[key], value)
        objects = sum(o["instances"]["true_objects"] for o in ours) // len(ours)
        print(f"{scenario:6s} {args.cases} cases of {args.size}^3 (~{objects} objects each): panoptica direct "
              f"{t_base:.2f} s, selma3d 2026 {t_ours:.2f} s, ratio {t_base / t_ours:.2f}x, values identical")


if __name__ == "__main__":
    main()
