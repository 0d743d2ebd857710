"""What an edition of the SELMA3D challenge is: its routing, its metrics, its official output.

Each edition module (``e2024``, ``e2025``, ``e2026``) builds one :class:`Edition`. The driver
(:mod:`selma3d.evaluation.challenge`) finds cases and reads files; an edition only says which
category a case belongs to, what it scores there, which results look degenerate, and how the
organizers aggregate.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Pitfall:
    """A score that the official code gives but that misleads (see docs/evaluation_pitfalls.md).

    ``strict`` holds the values ``--strict`` substitutes (e.g. ``{"cldice": 0.0}``); empty when
    the pitfall is only reported.
    """

    code: str
    message: str
    strict: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "strict": dict(self.strict)}


@dataclass(frozen=True)
class Edition:
    """One edition's rules.

    Attributes
    ----------
    name : "2024", "2025" or "2026".
    metrics : category → metric names in table order (e.g. ``{"isolated": ("dice", ...)}``).
    higher_is_better : metric → True when a higher value is better (ranking).
    route : ``(case, structure, structure_type) → category or None`` (None: not scored by
        this edition; the driver reports the case as a one-line failure).
    score : ``(category, gt, pred) → (metrics dict, [Pitfall])``; gt, pred are bool arrays.
    official : ``[case result] → {"results": [...], "aggregates": {...}}``, the organizers'
        metrics.json for the scored cases in the given order.
    routing_help : one sentence for error messages: how this edition routes cases.
    check_available : raises :class:`~selma3d.errors.Selma3dError` (one line, with the fix)
        when a library the edition needs is missing; called once before any case is read.
    """

    name: str
    metrics: dict[str, tuple[str, ...]]
    higher_is_better: dict[str, bool]
    route: Callable[[str, str | None, str | None], str | None]
    score: Callable[[str, np.ndarray, np.ndarray], tuple[dict, list[Pitfall]]]
    official: Callable[[list[dict]], dict]
    routing_help: str
    check_available: Callable[[], object] = lambda: None


def _has_nan(values: list) -> bool:
    return any(isinstance(v, float) and math.isnan(v) for v in values)


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """``statistics.mean`` and ``statistics.stdev`` as the organizers call them.

    Where the official scripts crash, this gives None so a local check still writes its file
    (:func:`aggregation_pitfalls` says why): no value (mean, ``StatisticsError``), a single
    value (stdev), or a NaN among the values (stdev raises AttributeError on Python 3.11-3.13,
    ValueError on 3.10; ``mean`` returns NaN).
    """
    mean = statistics.mean(values) if values else None
    std = statistics.stdev(values) if len(values) > 1 and not _has_nan(values) else None
    return mean, std


def official_output(results: list[dict], groups: dict[str, list[float]]) -> dict:
    """The organizers' metrics.json: per-case ``results``, ``<group>_mean``/``<group>_std`` aggregates
    (statistics.mean/stdev semantics via :func:`mean_std`) and the pitfalls of the aggregation."""
    aggregates = {}
    for key, values in groups.items():
        aggregates[f"{key}_mean"], aggregates[f"{key}_std"] = mean_std(values)
    return {"results": results, "aggregates": aggregates, "notes": aggregation_pitfalls(groups)}


def aggregation_pitfalls(groups: dict[str, list[float]]) -> list[str]:
    """Messages for aggregates the official code would not produce or would produce as NaN."""
    notes = []
    for key, values in groups.items():
        if not values:
            notes.append(f"{key}: no case; the official scorer stops with StatisticsError (mean of no data)")
        elif len(values) == 1:
            notes.append(f"{key}: one case; the official scorer stops with StatisticsError (stdev needs two)")
        n_nan = sum(1 for v in values if isinstance(v, float) and math.isnan(v))
        if n_nan:
            notes.append(f"{key}: {n_nan} NaN value(s): the official mean is NaN and statistics.stdev "
                         "raises on NaN, so the official scorer fails for the whole submission")
    return notes


def why_degenerate(gt: np.ndarray, pred: np.ndarray) -> tuple[str, bool]:
    """Why a skeleton overlap came out empty, and whether the case deserves a 0 (``--strict``).

    A 0 is deserved when the prediction is empty, the truth is empty (and the prediction is
    not), or the two do not touch. It is not when they overlap but a skeleton is empty (Lee's
    thinning deletes objects that are two voxels thick in every direction): a perfect
    prediction of a 2×2 rod has no skeleton either, so no score can be read from it.
    """
    gt_any, pred_any = bool(gt.any()), bool(pred.any())
    if not (gt_any or pred_any):
        return "both masks are empty", False
    if not pred_any:
        return "the prediction is empty", True
    if not gt_any:
        return "the ground truth is empty", True
    if not (gt & pred).any():
        return "the prediction does not touch the ground truth", True
    return "the masks overlap but a skeleton is empty (objects two voxels thin vanish in Lee's thinning)", False

