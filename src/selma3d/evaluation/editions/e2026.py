"""The 2026 edition (repo YingChen7/SELMA3D2026_evaluation, ``evaluate.py``).

Routing by the case name's prefix (``str.startswith``, case-sensitive, as the scorer does):
contiguous structures → Dice and clDice; isolated structures → Dice and panoptic quality.

* Dice: 2|P∩G| / (|P| + |G|); 1 when both are empty, 0 when exactly one is.
* clDice: panoptica's ``_compute_centerline_dice_coefficient(reference=G, prediction=P)``:
  2·tprec·tsens / (tprec + tsens) with no smoothing, so an empty skeleton on either side
  (an empty or disjoint prediction...) gives 0/0 = NaN.
* PQ: panoptica's ``pq_dsc`` (see :mod:`selma3d.evaluation.panoptic`), NaN when neither mask
  has an object.
* Aggregates: ``statistics.mean`` / ``stdev`` per category and metric. ``stdev`` raises on a
  NaN (Python 3.10-3.13), so one NaN clDice or PQ fails the whole official evaluation; here
  the std is None and a note says so.

Both clDice and PQ run on the union's bounding box plus one zero voxel (exact: skeletons
never see beyond a component's 3×3×3 neighbourhood; see metrics and panoptic modules).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from ..metrics import dice
from ..panoptic import instance_scores, panoptica_result, union_crop
from .base import Edition, Pitfall, official_output, why_degenerate

CONTIGUOUS = ("axonalmarker", "blood_vessel", "gutnerve", "lymphatic_vessel", "peripheral_nerve")
ISOLATED = ("AD_plaques", "cell_nuclei", "cfos_neuron", "microglia", "protein")
PQ_MATCHING_THRESHOLD = 0.3

METRICS = {"isolated": ("dice", "panoptic_quality"), "contiguous": ("dice", "cldice")}
HIGHER_IS_BETTER = {"dice": True, "panoptic_quality": True, "cldice": True}


def route_by_prefix(case: str) -> str | None:
    """"contiguous", "isolated" or None, tested in the scorer's order (contiguous first)."""
    if case.startswith(CONTIGUOUS):
        return "contiguous"
    if case.startswith(ISOLATED):
        return "isolated"
    return None


def route(case: str, structure: str | None, structure_type: str | None) -> str | None:
    forced = route_by_prefix(structure) if structure else None
    return forced or route_by_prefix(case)


def require_panoptica() -> None:
    """A one-line error with the fix when panoptica is missing."""
    try:
        import panoptica  # noqa: F401
    except ImportError as exc:
        from ...errors import Selma3dError

        raise Selma3dError(f"the 2026 edition needs panoptica ({exc}): pip install 'panoptica>=2.1.7'") from None


def panoptica_cldice(gt: np.ndarray, pred: np.ndarray) -> float:
    """panoptica's clDice of the two masks (uint8 0/1, as the scorer passes them), on their crop."""
    from panoptica.metrics.cldice import _compute_centerline_dice_coefficient

    gt, pred = union_crop(gt, pred)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")
        return float(_compute_centerline_dice_coefficient(gt.astype(np.uint8), pred.astype(np.uint8)))


def score(category: str, gt: np.ndarray, pred: np.ndarray) -> tuple[dict, list[Pitfall]]:
    values: dict = {"dice": dice(gt, pred)}
    pitfalls = []
    if category == "contiguous":
        values["cldice"] = panoptica_cldice(gt, pred)
        if math.isnan(values["cldice"]):
            why, deserves_zero = why_degenerate(gt, pred)
            pitfalls.append(Pitfall(
                "nan_cldice",
                f"clDice is NaN ({why}): in the 2026 scorer it makes con_cldice_mean NaN and "
                "statistics.stdev fail, so the whole submission gets no score"
                + (" (--strict scores it 0)" if deserves_zero else ""),
                {"cldice": 0.0} if deserves_zero else {}))
        return values, pitfalls
    result = panoptica_result(gt, pred, PQ_MATCHING_THRESHOLD)
    values["panoptic_quality"] = float(result.pq_dsc)
    values["instances"] = instance_scores(result, PQ_MATCHING_THRESHOLD)
    if math.isnan(values["panoptic_quality"]):
        pitfalls.append(Pitfall(
            "nan_panoptic_quality",
            "panoptic quality is NaN (neither mask has an object): in the 2026 scorer it makes "
            "iso_panoptic_quality_mean NaN and statistics.stdev fail, so the whole submission gets no score"))
    return values, pitfalls


def official(cases: list[dict]) -> dict:
    results = [{m: case[m] for m in METRICS[case["type"]]} for case in cases]
    groups = {
        "iso_dice": [c["dice"] for c in cases if c["type"] == "isolated"],
        "iso_panoptic_quality": [c["panoptic_quality"] for c in cases if c["type"] == "isolated"],
        "con_dice": [c["dice"] for c in cases if c["type"] == "contiguous"],
        "con_cldice": [c["cldice"] for c in cases if c["type"] == "contiguous"],
    }
    return official_output(results, groups)


EDITION = Edition(
    name="2026",
    metrics=METRICS,
    higher_is_better=HIGHER_IS_BETTER,
    route=route,
    score=score,
    official=official,
    routing_help="2026 routes by the case name's prefix: " + ", ".join(CONTIGUOUS + ISOLATED),
    check_available=require_panoptica,
)
