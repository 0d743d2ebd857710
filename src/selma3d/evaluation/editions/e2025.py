"""The 2025 edition (challenge pages; the organizers published no scoring code for it).

From the assessment page: isolated structures → Dice and the Betti matching error in
dimension 0; contiguous structures → Dice, Betti matching error, clDice and HD95. What
selma3d assumes where the page is silent (say so when quoting these numbers):

* routing by the 2026 prefixes (the 2025 structures carry the same names);
* Dice and clDice as in 2024 (the same organizers' code: 1e-6 smoothing, Lee skeletons);
* Betti matching error from Betti-Matching-3D (:mod:`selma3d.evaluation.betti_matching`), in
  dimensions 0 and 1 for contiguous structures (the 2024 page scored both);
* HD95 from MONAI's ``compute_hausdorff_distance(percentile=95)`` in voxel units (inf or NaN
  when a mask is empty, as MONAI gives it);
* aggregates named like 2026's (``iso_dice_mean`` ...), ``statistics.mean`` / ``stdev``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from ..betti_matching import betti_matching_errors, load_betti_matching
from ..metrics import dice, tree_metrics
from ..panoptic import instance_metrics
from . import e2024, e2026
from .base import Edition, Pitfall, official_output

METRICS = {"isolated": ("dice", "betti_matching_error_0"),
           "contiguous": ("dice", "betti_matching_error_0", "betti_matching_error_1", "cldice", "hd95")}
HIGHER_IS_BETTER = {"dice": True, "betti_matching_error_0": False, "betti_matching_error_1": False,
                    "cldice": True, "hd95": False}
INSTANCE_IOU = 0.5


def hd95(gt: np.ndarray, pred: np.ndarray) -> float:
    """MONAI's 95th-percentile Hausdorff distance (Euclidean, voxel units) of two masks."""
    import torch
    from monai.metrics import compute_hausdorff_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns (and returns inf/NaN) for an empty mask
        value = compute_hausdorff_distance(torch.from_numpy(pred[None, None]), torch.from_numpy(gt[None, None]),
                                           include_background=True, percentile=95)
    return float(value.reshape(-1)[0])


def score(category: str, gt: np.ndarray, pred: np.ndarray) -> tuple[dict, list[Pitfall]]:
    errors = betti_matching_errors(gt, pred)
    pitfalls = []
    if not pred.any() and gt.any() and errors[0] == 0:
        pitfalls.append(Pitfall(
            "betti_matching_essential",
            "Betti matching error 0 for an empty prediction: the ground truth has one object, and "
            "the essential interval of each image is never counted"))
    if category == "isolated":
        values = {"dice": dice(gt, pred), "betti_matching_error_0": errors[0],
                  "instances": instance_metrics(gt, pred, INSTANCE_IOU)}
        return values, pitfalls
    tree = tree_metrics(gt, pred, terms=True)
    values = {"dice": tree["dice"], "betti_matching_error_0": errors[0], "betti_matching_error_1": errors[1],
              "cldice": tree["cldice"], "hd95": hd95(gt, pred), "tprec": tree["tprec"], "tsens": tree["tsens"]}
    vacuous = e2024.vacuous_cldice(values, gt, pred)
    if vacuous:
        pitfalls.append(vacuous)
    if not math.isfinite(values["hd95"]):
        pitfalls.append(Pitfall("undefined_hd95",
                                f"HD95 is {values['hd95']} (a mask is empty): any mean over cases with it "
                                "is not finite either"))
    return values, pitfalls


def official(cases: list[dict]) -> dict:
    results = [{m: case[m] for m in METRICS[case["type"]]} for case in cases]
    groups = {}
    for category, prefix in (("isolated", "iso"), ("contiguous", "con")):
        for metric in METRICS[category]:
            groups[f"{prefix}_{metric}"] = [c[metric] for c in cases if c["type"] == category]
    return official_output(results, groups)


EDITION = Edition(
    name="2025",
    metrics=METRICS,
    higher_is_better=HIGHER_IS_BETTER,
    route=e2026.route,
    score=score,
    official=official,
    routing_help="2025 routes by the case name's prefix (as 2026): "
                 + ", ".join(e2026.CONTIGUOUS + e2026.ISOLATED),
    check_available=load_betti_matching,
)
