"""Score a folder (or one file) of predictions against ground truth, as SELMA3D does.

:func:`evaluate` matches cases (:mod:`.matching`: the file-name and structure rules), scores
them in parallel (:mod:`.scoring`: the checks, the failures, the summary) and returns one
result that :mod:`.output` writes as JSON and CSV. The public names of the three are re-exported
here.
"""

from __future__ import annotations

import os

from ..editions import DEFAULT_EDITION, get_edition
from .matching import (GT_SUFFIX, IMAGE_SUFFIX, PRED_SUFFIXES, CaseJob, GroundTruthCase, ground_truth_cases,
                       match_cases)
from .output import CASE_FIELDS, EDITION_FIELDS, cases_csv, format_summary, official_metrics, write_csv, write_result
from .scoring import apply_strict, check_binary, default_jobs, run_cases, score_case, summarize

__all__ = [
    "CASE_FIELDS", "EDITION_FIELDS", "GT_SUFFIX", "IMAGE_SUFFIX", "PRED_SUFFIXES", "CaseJob", "GroundTruthCase",
    "apply_strict", "cases_csv", "check_binary", "default_jobs", "evaluate", "format_summary", "ground_truth_cases",
    "match_cases", "official_metrics", "run_cases", "score_case", "summarize", "write_csv", "write_result",
]


def evaluate(pred: str | os.PathLike, gt: str | os.PathLike, jobs: int | None = None,
             progress: bool = True, structure: str | None = None, edition: str = DEFAULT_EDITION,
             threshold: float | None = None, strict: bool = False) -> dict:
    """Score PRED against GT by an edition's rules.

    Returns ``{"edition", "strict", "threshold", "cases", "summary", "official",
    "official_notes", "warnings", "failures", "unmatched_predictions"}``: ``official`` is the
    edition's ``results`` + ``aggregates`` (always the official values, whatever ``strict``),
    ``official_notes`` what the official aggregation would do differently (crash on a missing
    category, NaN means), ``warnings`` one line per degenerate score (see docs/evaluation_pitfalls.md). ``strict`` replaces those scores in
    ``cases`` and ``summary``. Raises :class:`InputError` only when nothing can be matched at all
    (missing or empty GT, PRED is GT).
    """
    rules = get_edition(edition)
    rules.check_available()
    case_jobs, unmatched = match_cases(pred, gt, structure=structure, edition=rules.name, threshold=threshold)
    cases, failures = [], []
    for result, failure in run_cases(case_jobs, jobs or default_jobs(), progress):
        if result is not None:
            cases.append(result)
        else:
            failures.append(failure)
    cases.sort(key=lambda c: c["case"])
    failures.sort(key=lambda f: f["case"])
    official = rules.official(cases)
    warnings = [f"case {c['case']}: {w['message']}" for c in cases for w in c["warnings"]]
    notes = official.pop("notes", []) if cases else []
    scored = [apply_strict(c) for c in cases] if strict else cases
    return {"edition": rules.name, "strict": bool(strict), "threshold": threshold, "cases": scored,
            "summary": summarize(scored, rules), "official": official, "official_notes": notes,
            "warnings": warnings, "failures": failures, "unmatched_predictions": [str(p) for p in unmatched]}
