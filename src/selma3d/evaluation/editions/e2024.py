"""The 2024 edition (repo YingChen7/SELMA3D_challenge-evaluation), selma3d's default.

Routing: the structure's type from dataset.json (or the SELMA3D table): spot-like → Dice and
β0 error; tree-like → Dice, clDice, β0 and β1 errors (DESIGN.md, Conventions). The official
script routes by substring instead (``'cfos' in name`` → spot, ``'microglia' in name`` → tree)
and has no branch for anything else; selma3d's routing covers every structure a lab names.

Official output: per case ``dice``, ``betti_matching_error_0`` (+ ``betti_matching_error_1``,
``centerline_dice`` for tree-like; despite the name these are Betti *number* errors), and
the aggregates ``cfos_*`` (spot-like) and ``micro_*`` (tree-like), plain ``statistics.mean``.
"""

from __future__ import annotations

import numpy as np

from ..metrics import HIGHER_IS_BETTER, METRICS_BY_TYPE, spot_metrics, tree_metrics
from ..panoptic import instance_metrics
from .base import Edition, Pitfall, aggregation_pitfalls, mean_std, why_degenerate

#: Object matching for the instance-level extras: IoU > 0.5, the classic panoptic-quality rule.
INSTANCE_IOU = 0.5


def route(case: str, structure: str | None, structure_type: str | None) -> str | None:
    return structure_type if structure_type in METRICS_BY_TYPE else None


def vacuous_cldice(values: dict, gt: np.ndarray, pred: np.ndarray) -> Pitfall | None:
    """The 2024 clDice pitfall: tprec = tsens = 0 gives 1e-6/1e-6 = 1.0.

    Not reported when both masks are empty (then 1.0 is right: nothing to find, nothing
    found). ``--strict`` scores it 0 only when the prediction deserves it (see
    :func:`.base.why_degenerate`).
    """
    if values["tprec"] or values["tsens"]:
        return None
    why, deserves_zero = why_degenerate(gt, pred)
    if not (gt.any() or pred.any()):
        return None
    return Pitfall("vacuous_cldice",
                   f"clDice {values['cldice']:.6g} is vacuous: tprec = tsens = 0 because {why}; "
                   "the 2024 scorer counts it as perfect"
                   + (" (--strict scores it 0)" if deserves_zero else ""),
                   {"cldice": 0.0} if deserves_zero else {})


def score(category: str, gt: np.ndarray, pred: np.ndarray) -> tuple[dict, list[Pitfall]]:
    if category == "spot":
        values = spot_metrics(gt, pred)
        values["instances"] = instance_metrics(gt, pred, INSTANCE_IOU)
        return values, []
    values = tree_metrics(gt, pred, terms=True)
    pitfall = vacuous_cldice(values, gt, pred)
    return values, [pitfall] if pitfall else []


_OFFICIAL_KEYS = {"dice": "dice", "betti0_error": "betti_matching_error_0",
                  "betti1_error": "betti_matching_error_1", "cldice": "centerline_dice"}
_PREFIX = {"spot": "cfos", "tree": "micro"}
_AGGREGATES = {"spot": [("dice", "dice"), ("betti0_error", "betti_error_0")],
               "tree": [("dice", "dice"), ("betti0_error", "betti_error_0"),
                        ("betti1_error", "betti_error_1"), ("cldice", "cldice")]}


def official(cases: list[dict]) -> dict:
    results = [{_OFFICIAL_KEYS[m]: case[m] for m in METRICS_BY_TYPE[case["type"]]} for case in cases]
    aggregates, groups = {}, {}
    for kind, pairs in _AGGREGATES.items():
        for metric, suffix in pairs:
            key = f"{_PREFIX[kind]}_{suffix}"
            groups[key] = [c[metric] for c in cases if c["type"] == kind]
            aggregates[key] = mean_std(groups[key])[0]
    notes = [n for n in aggregation_pitfalls(groups) if "stdev" not in n]  # 2024 reports no std
    return {"results": results, "aggregates": aggregates, "notes": notes}


EDITION = Edition(
    name="2024",
    metrics=dict(METRICS_BY_TYPE),
    higher_is_better=dict(HIGHER_IS_BETTER),
    route=route,
    score=score,
    official=official,
    routing_help="2024 routes by structure type (dataset.json, the GT folder or the case name: "
                 "vessel, cfos, nucleus, plaque, microglia)",
)
