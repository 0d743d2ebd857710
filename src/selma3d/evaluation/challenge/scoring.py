"""Scoring matched cases: one case (:func:`score_case`), all of them in worker processes with
one failure per bad case (:func:`run_cases`), and their per-type summary (:func:`summarize`).

Checks before scoring: a prediction must be a binary mask (0 and one other value), else the
case fails unless a ``threshold`` is given (then ``pred > threshold``). Degenerate official
scores (a vacuous clDice of 1.0, a NaN clDice or PQ...) are kept and listed in ``warnings``;
with ``strict`` they are replaced (:func:`apply_strict`; docs/evaluation_pitfalls.md).

A bad case (missing prediction, unreadable file, shape mismatch, NaN values) is reported as a
failure with a message naming it; every other case is still scored.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager

import numpy as np

from ...errors import InputError, Selma3dError
from ...io.nifti import grid_difference, read_nifti
from ...utils.progress import progress_bar
from ..editions import DEFAULT_EDITION, Edition, get_edition
from ..editions.base import Pitfall
from .matching import CaseJob


def score_case(job: CaseJob) -> dict:
    """Metrics of one case as a JSON-ready dict; raises :class:`InputError` naming the case."""
    if job.problem:
        raise InputError(f"case {job.case}: {job.problem}")
    try:
        gt_file, pred_file = read_nifti(job.gt), read_nifti(job.pred)
        gt, pred = gt_file.array, pred_file.array
        if gt.shape != pred.shape:
            raise InputError(f"shape mismatch: ground truth {gt.shape} ({job.gt.name}) vs "
                             f"prediction {pred.shape} ({job.pred.name})")
        for array, role, path in ((gt, "ground truth", job.gt), (pred, "prediction", job.pred)):
            if array.dtype.kind == "f" and np.isnan(array).any():
                raise InputError(f"{role} {path.name} contains NaN values")
        if job.threshold is None:
            check_binary(pred, job.pred.name)
            pred = pred > 0
        else:
            pred = pred > job.threshold
        values, pitfalls = get_edition(job.edition).score(job.type, np.ascontiguousarray(gt > 0),
                                                          np.ascontiguousarray(pred))
        difference = grid_difference(gt_file, pred_file)
        if difference:  # scored voxel by voxel as the official code does, but said
            pitfalls = [*pitfalls, Pitfall("grid_mismatch", f"prediction {job.pred.name} is not on the ground "
                                           f"truth's voxel grid ({difference}); scored voxel by voxel anyway")]
    except Selma3dError as exc:
        message = str(exc)
        raise InputError(message if message.startswith(f"case {job.case}")
                         else f"case {job.case}: {message}") from None
    return {"case": job.case, "structure": job.structure, "type": job.type, **values,
            "warnings": [p.as_dict() for p in pitfalls]}


def check_binary(pred: np.ndarray, name: str) -> None:
    """Refuse a prediction that is a probability map or an image rather than a mask.

    The official scorers binarize with ``> 0``, so a probability map or a raw image would be
    scored as an almost-full mask (Dice ≈ 0.01) without a word. Accepted: 0 and one other
    value, or a label map (non-negative integers, mostly 0; ``> 0`` is its foreground).
    Refused: non-integer values (a probability map), negative values, or several values with
    most voxels non-zero (an image).
    """
    nonzero = pred[pred != 0]
    if nonzero.size == 0:
        return
    low, high = nonzero.min(), nonzero.max()
    if low == high and low > 0:
        return
    if pred.dtype.kind == "f" and not np.array_equal(nonzero, np.round(nonzero)):
        why = "non-integer values (a probability map?)"
    elif low < 0:
        why = "negative values (an image?)"
    elif nonzero.size * 2 > pred.size:
        why = "several values and most voxels non-zero (an image?)"
    else:
        return  # a label map
    raise InputError(f"prediction {name} is not a binary mask: {why}, values {low:g} to {high:g}; "
                     "pass --threshold T to score prediction > T")


def apply_strict(case: dict) -> dict:
    """The case with every pitfall's strict values substituted (the official ones kept aside)."""
    replaced = {k: v for w in case.get("warnings", []) for k, v in w["strict"].items()}
    if not replaced:
        return case
    case = dict(case)
    case["official_values"] = {k: case[k] for k in replaced}
    case.update(replaced)
    return case


def _score_safely(job: CaseJob) -> tuple[dict | None, dict | None]:
    """(case result, None) or (None, failure); never raises, so a pool keeps going."""
    try:
        return score_case(job), None
    except Selma3dError as exc:
        return None, {"case": job.case, "error": str(exc)}
    except Exception as exc:  # a bug or an exotic file: report it for this case, score the rest
        return None, {"case": job.case, "error": f"case {job.case}: {type(exc).__name__}: {exc}"}


@contextmanager
def _progress_bar(enabled: bool, total: int):
    """Yield ``advance(case_name)``: a bar on a terminal, a line every few seconds in a log; on
    stderr, because stdout carries the summary."""
    with progress_bar(enabled, "evaluate", unit="cases", stream=sys.stderr) as bar:
        task = bar.add_task("scoring", total=total)
        yield lambda case: bar.advance(task)


def run_cases(jobs: list[CaseJob], workers: int, progress: bool) -> list[tuple[dict | None, dict | None]]:
    """(result, failure) per case, scored ``workers`` at a time in separate processes."""
    workers = min(workers, len(jobs))
    outcomes = []
    if workers <= 1:
        with _progress_bar(progress, len(jobs)) as advance:
            for job in jobs:
                outcomes.append(_score_safely(job))
                advance(job.case)
        return outcomes
    pool = ProcessPoolExecutor(max_workers=workers)
    try:
        # Submitting starts the workers, before the progress bar starts its refresh thread.
        futures = {pool.submit(_score_safely, job): job for job in jobs}
        with _progress_bar(progress, len(jobs)) as advance:
            for future in as_completed(futures):
                job = futures[future]
                try:
                    outcomes.append(future.result())
                except Exception as exc:  # the worker died (out of memory, killed)
                    outcomes.append((None, {"case": job.case, "error":
                                            f"case {job.case}: worker failed ({type(exc).__name__}: {exc})"}))
                advance(job.case)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return outcomes


def summarize(cases: list[dict], edition: str | Edition = DEFAULT_EDITION) -> dict:
    """Per category and metric: mean, sample std (ddof=1; None for one case) and n.

    NaN values (2026's clDice or PQ of degenerate cases) are left out of the mean and std and
    counted in ``n_nan``; the official aggregates (``official`` in the result) keep them.
    """
    rules = edition if isinstance(edition, Edition) else get_edition(edition)
    summary: dict[str, dict] = {}
    for kind, metrics in rules.metrics.items():
        rows = [c for c in cases if c["type"] == kind]
        if not rows:
            continue
        summary[kind] = {}
        for metric in metrics:
            values = np.array([float(r[metric]) for r in rows], dtype=np.float64)
            finite = values[~np.isnan(values)]
            stats = {
                "mean": float(finite.mean()) if len(finite) else None,
                "std": float(finite.std(ddof=1)) if len(finite) > 1 else None,
                "n": int(len(finite)),
            }
            if len(finite) < len(values):
                stats["n_nan"] = int(len(values) - len(finite))
            summary[kind][metric] = stats
    return summary


def default_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, 8))
