"""Score a folder (or one file) of predictions against ground truth, as SELMA3D does.

Matching rule (documented in ``selma3d evaluate --help`` too):

* Ground truth: every NIfTI file under GT (searched recursively). If some are named
  ``<case>_label.nii[.gz]``, only those are ground truth (``*_img`` images next to them are
  skipped), so GT can be a dataset's ``annotated/<split>`` folder. The case is the file name
  without the suffix and without ``_label``.
* Predictions: NIfTI files under PRED (recursively); a prediction for case ``c`` is named
  ``c``, ``c_label`` or ``c_pred`` (``.nii`` or ``.nii.gz``), or, only when none of those
  exists, ``c_img`` (``selma3d predict`` keeps the input image's name). Two predictions for
  one case are an error for that case; predictions that match no case are listed under
  ``unmatched_predictions`` (``*_img`` files next to a used ``c_label`` are not).
* Single files: PRED and GT both files → one case, named after GT, whatever PRED is called.
* Structure of a case: from the nearest ``dataset.json`` at or above GT (its ``splits`` list
  the cases of every structure), else the GT file's folder name when it is a structure
  (``annotated/<split>/<structure>/``), else the case name (``cfos_003`` → cfos). The
  structure's type (``structures.<name>.type`` in dataset.json, else the SELMA3D table) picks
  the metric set: spot → Dice, β0 error; tree → Dice, clDice, β0 and β1 errors.

* Edition (``--edition``, :mod:`.editions`): 2024 (default) scores by structure type as
  above; 2025 and 2026 route by the case name's prefix as their scorers do, and a case whose
  name matches none of their structures is a one-line failure.

Checks before scoring: a prediction must be a binary mask (0 and one other value), else the
case fails unless a ``threshold`` is given (then ``pred > threshold``); a prediction that is
the ground-truth file itself (or PRED is GT) is an error. Degenerate official scores (a
vacuous clDice of 1.0, a NaN clDice or PQ...) are kept and listed in ``warnings``; with
``strict`` they are replaced (docs/evaluation_pitfalls.md).

A bad case (missing prediction, unreadable file, shape mismatch, NaN values) is reported in
``failures`` with a message naming it; every other case is still scored.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.layout import STRUCTURE_TYPES, find_dataset_json, structure_from_name
from ..errors import InputError, Selma3dError
from ..io.nifti import case_name, grid_difference, is_nifti, read_nifti
from ..utils.atomic import atomic_write, write_json
from .editions import DEFAULT_EDITION, Edition, get_edition
from .editions.base import Pitfall
from .metrics import METRICS_BY_TYPE

GT_SUFFIX = "_label"
PRED_SUFFIXES = ("_label", "_pred")
IMAGE_SUFFIX = "_img"
CASE_FIELDS = ("case", "structure", "type", "dice", "cldice", "betti0_error", "betti1_error")
#: Columns of the later editions, written when a case has them.
EDITION_FIELDS = ("panoptic_quality", "betti_matching_error_0", "betti_matching_error_1", "hd95")


@dataclass(frozen=True)
class CaseJob:
    """One ground-truth case and the prediction matched to it (None when missing)."""

    case: str
    structure: str | None
    type: str | None
    gt: Path
    pred: Path | None
    problem: str | None = None  # a matching problem found before reading anything
    edition: str = DEFAULT_EDITION
    threshold: float | None = None  # binarize the prediction with > threshold (else it must be binary)


# ----------------------------------------------------------------------------- matching
def _nifti_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and is_nifti(p) and not p.name.startswith("."))


def _strip(name: str, suffixes: tuple[str, ...]) -> str:
    for suffix in suffixes:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _gt_cases(gt: Path) -> dict[str, Path]:
    if gt.is_file():
        if not is_nifti(gt):
            raise InputError(f"{gt}: ground truth is not a NIfTI file (.nii or .nii.gz)")
        return {_strip(case_name(gt), (GT_SUFFIX,)): gt}
    if not gt.is_dir():
        raise InputError(f"{gt}: ground truth not found")
    files = [p for p in _nifti_files(gt) if not case_name(p).endswith(IMAGE_SUFFIX)]
    labels = [p for p in files if case_name(p).endswith(GT_SUFFIX)]
    files = labels or files
    if not files:
        raise InputError(f"{gt}: no ground-truth NIfTI files (*_label.nii.gz) in this folder")
    cases: dict[str, Path] = {}
    for path in files:
        case = _strip(case_name(path), (GT_SUFFIX,))
        if case in cases:
            raise InputError(f"case {case}: two ground-truth files, {cases[case]} and {path}; "
                             "point GT at one split folder (e.g. DATA/annotated/final_test)")
        cases[case] = path
    return cases


def _pred_files(pred: Path) -> dict[str, list[Path]]:
    """File name without suffix → prediction files under ``pred``."""
    if not pred.is_dir():
        raise InputError(f"{pred}: prediction folder not found")
    found: dict[str, list[Path]] = {}
    for path in _nifti_files(pred):
        found.setdefault(case_name(path), []).append(path)
    return found


def _prediction_names(case: str) -> list[str]:
    return [case] + [case + suffix for suffix in PRED_SUFFIXES]


def _case_structures(gt: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(case → structure, structure → type) from the nearest dataset.json, if any."""
    meta_path = find_dataset_json(gt if gt.is_dir() else gt.parent)
    if meta_path is None:
        return {}, {}
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{meta_path}: cannot read dataset.json ({exc})") from None
    cases: dict[str, str] = {}
    for split in (meta.get("splits") or {}).values():
        if isinstance(split, dict):
            for structure, names in split.items():
                for name in names or []:
                    cases[_strip(case_name(str(name)), (GT_SUFFIX, IMAGE_SUFFIX))] = structure
    types = {name: info["type"] for name, info in (meta.get("structures") or {}).items()
             if isinstance(info, dict) and "type" in info}
    return cases, types


def _structure_of(case: str, gt_file: Path, from_json: dict[str, str]) -> str | None:
    if case in from_json:
        return from_json[case]
    if gt_file.parent.name in STRUCTURE_TYPES:
        return gt_file.parent.name
    return structure_from_name(case)


@dataclass(frozen=True)
class GroundTruthCase:
    case: str
    path: Path
    structure: str | None
    type: str | None


def ground_truth_cases(gt: str | os.PathLike, structure: str | None = None) -> list[GroundTruthCase]:
    """The ground-truth cases under GT (a file or folder), with structure and type (module doc).

    ``structure`` forces one structure for every case. Raises :class:`InputError` when GT is
    missing or holds no NIfTI file.
    """
    gt = Path(gt)
    files = _gt_cases(gt)
    case_structures, types = _case_structures(gt)
    cases = []
    for case, path in sorted(files.items()):
        struct = structure or _structure_of(case, path, case_structures)
        kind = (types.get(struct) or STRUCTURE_TYPES.get(struct)) if struct else None
        cases.append(GroundTruthCase(case, path, struct, kind))
    return cases


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def match_cases(pred: str | os.PathLike, gt: str | os.PathLike, structure: str | None = None,
                edition: str = DEFAULT_EDITION, threshold: float | None = None
                ) -> tuple[list[CaseJob], list[Path]]:
    """Pair ground-truth cases with predictions (module docstring); also return unmatched predictions.

    ``structure`` forces one structure for every case. Raises :class:`InputError` when PRED is
    GT, or when a prediction file is a ground-truth file (scoring the truth against itself).
    """
    pred, gt = Path(pred), Path(gt)
    rules = get_edition(edition)
    if _same_path(pred, gt):
        raise InputError(f"{pred}: the prediction is the ground truth itself (PRED and GT are the same "
                         f"{'folder' if gt.is_dir() else 'file'}); give the folder of predictions")
    gt_cases = ground_truth_cases(gt, structure)
    if not pred.exists():
        raise InputError(f"{pred}: prediction not found")
    if pred.is_file():
        if not is_nifti(pred):
            raise InputError(f"{pred}: prediction is not a NIfTI file (.nii or .nii.gz)")
        if gt.is_file():
            files = {gt_cases[0].case: [pred]}
        else:
            files = {case_name(pred): [pred]}
            gt_cases = [c for c in gt_cases
                        if files.keys() & {*_prediction_names(c.case), c.case + IMAGE_SUFFIX}]
            if not gt_cases:
                raise InputError(f"{pred}: no ground-truth case of that name in {gt}")
    else:
        files = _pred_files(pred)
    jobs, used = [], set()
    for gt_case in gt_cases:
        case, struct, kind = gt_case.case, gt_case.structure, gt_case.type
        names = [n for n in _prediction_names(case) if n in files]
        if not names and case + IMAGE_SUFFIX in files:
            names = [case + IMAGE_SUFFIX]  # the name `selma3d predict` gives its masks
        used.update(names + [case + IMAGE_SUFFIX])
        preds = [p for n in names for p in files[n]]
        for path in preds:
            if _same_path(path, gt_case.path):
                raise InputError(f"{path}: this prediction is the ground-truth file of case {case} itself; "
                                 "PRED must hold predictions, not the ground truth")
        problem = None
        category = rules.route(case, structure, kind)
        if rules.name != DEFAULT_EDITION and category is None:
            problem = (f"name matches no structure of the {rules.name} edition ({rules.routing_help}; "
                       "rename the case or use --structure)")
        elif rules.name == DEFAULT_EDITION and struct is None:
            problem = ("cannot tell its structure (not in dataset.json, folder or file name; "
                       "use --structure)")
        elif rules.name == DEFAULT_EDITION and kind not in METRICS_BY_TYPE:
            problem = f"structure {struct!r} has no known type (spot or tree)"
        elif not preds:
            problem = (f"no prediction found (expected {case}.nii.gz, {case}_pred.nii.gz, "
                       f"{case}_label.nii.gz or {case}_img.nii.gz)")
        elif len(preds) > 1:
            problem = "several predictions: " + ", ".join(str(p) for p in preds)
        jobs.append(CaseJob(case, struct, category or kind, gt_case.path, preds[0] if len(preds) == 1 else None,
                            problem, rules.name, threshold))
    unmatched = sorted(p for name, paths in files.items() if name not in used for p in paths)
    return jobs, unmatched


# ----------------------------------------------------------------------------- scoring
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
    """Yield ``advance(case_name)``; draws a rich progress bar on stderr when enabled."""
    if not enabled:
        yield lambda case: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=Console(stderr=True)) as bar:
        task = bar.add_task("", total=total)
        yield lambda case: bar.update(task, advance=1, description=case)


def _run(jobs: list[CaseJob], workers: int, progress: bool) -> list[tuple[dict | None, dict | None]]:
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
    for result, failure in _run(case_jobs, jobs or default_jobs(), progress):
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


def official_metrics(result: dict) -> dict:
    """The edition's own ``metrics.json`` (``results`` + ``aggregates``) from an evaluate() result."""
    return {"results": result["official"]["results"], "aggregates": result["official"]["aggregates"]}


# ----------------------------------------------------------------------------- output
def write_result(path: str | os.PathLike, result: dict) -> Path:
    """An evaluate() result (or its official part) as JSON, atomically."""
    return write_json(path, result, default=None)


def cases_csv(cases: list[dict]) -> str:
    buffer = io.StringIO()
    fields = CASE_FIELDS + tuple(f for f in EDITION_FIELDS if any(f in c for c in cases))
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for case in cases:
        writer.writerow({k: case.get(k, "") for k in fields})
    return buffer.getvalue()


def write_csv(cases: list[dict], path: str | os.PathLike) -> Path:
    return atomic_write(path, cases_csv(cases))


def format_summary(summary: dict) -> str:
    """One line per type: ``tree (n=3): dice 0.91 ± 0.02, ...``."""
    lines = []
    for kind, metrics in summary.items():
        parts = []
        n = 0
        for metric, stats in metrics.items():
            n = stats["n"] + stats.get("n_nan", 0)
            std = "" if stats["std"] is None or math.isnan(stats["std"]) else f" ± {stats['std']:.4f}"
            mean = "–" if stats["mean"] is None else f"{stats['mean']:.4f}"
            nan = f" ({stats['n_nan']} NaN left out)" if stats.get("n_nan") else ""
            parts.append(f"{metric} {mean}{std}{nan}")
        lines.append(f"{kind} (n={n}): " + ", ".join(parts))
    return "\n".join(lines)
