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
from ..io.nifti import case_name, is_nifti, read_nifti_array
from .metrics import METRICS_BY_TYPE, metrics_for_type

GT_SUFFIX = "_label"
PRED_SUFFIXES = ("_label", "_pred")
IMAGE_SUFFIX = "_img"
CASE_FIELDS = ("case", "structure", "type", "dice", "cldice", "betti0_error", "betti1_error")


@dataclass(frozen=True)
class CaseJob:
    """One ground-truth case and the prediction matched to it (None when missing)."""

    case: str
    structure: str | None
    type: str | None
    gt: Path
    pred: Path | None
    problem: str | None = None  # a matching problem found before reading anything


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


def match_cases(pred: str | os.PathLike, gt: str | os.PathLike,
                structure: str | None = None) -> tuple[list[CaseJob], list[Path]]:
    """Pair ground-truth cases with predictions (module docstring); also return unmatched predictions.

    ``structure`` forces one structure for every case.
    """
    pred, gt = Path(pred), Path(gt)
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
        problem = None
        if struct is None:
            problem = ("cannot tell its structure (not in dataset.json, folder or file name; "
                       "use --structure)")
        elif kind not in METRICS_BY_TYPE:
            problem = f"structure {struct!r} has no known type (spot or tree)"
        elif not preds:
            problem = (f"no prediction found (expected {case}.nii.gz, {case}_pred.nii.gz, "
                       f"{case}_label.nii.gz or {case}_img.nii.gz)")
        elif len(preds) > 1:
            problem = "several predictions: " + ", ".join(str(p) for p in preds)
        jobs.append(CaseJob(case, struct, kind, gt_case.path, preds[0] if len(preds) == 1 else None, problem))
    unmatched = sorted(p for name, paths in files.items() if name not in used for p in paths)
    return jobs, unmatched


# ----------------------------------------------------------------------------- scoring
def score_case(job: CaseJob) -> dict:
    """Metrics of one case as a JSON-ready dict; raises :class:`InputError` naming the case."""
    if job.problem:
        raise InputError(f"case {job.case}: {job.problem}")
    try:
        gt = read_nifti_array(job.gt)
        pred = read_nifti_array(job.pred)
        if gt.shape != pred.shape:
            raise InputError(f"shape mismatch: ground truth {gt.shape} ({job.gt.name}) vs "
                             f"prediction {pred.shape} ({job.pred.name})")
        for array, role, path in ((gt, "ground truth", job.gt), (pred, "prediction", job.pred)):
            if array.dtype.kind == "f" and np.isnan(array).any():
                raise InputError(f"{role} {path.name} contains NaN values")
        values = metrics_for_type(job.type, gt, pred)
    except Selma3dError as exc:
        message = str(exc)
        raise InputError(message if message.startswith(f"case {job.case}")
                         else f"case {job.case}: {message}") from None
    return {"case": job.case, "structure": job.structure, "type": job.type, **values}


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


def summarize(cases: list[dict]) -> dict:
    """Per type and metric: mean, sample std (ddof=1; None for one case) and n."""
    summary: dict[str, dict] = {}
    for kind, metrics in METRICS_BY_TYPE.items():
        rows = [c for c in cases if c["type"] == kind]
        if not rows:
            continue
        summary[kind] = {}
        for metric in metrics:
            values = np.array([float(r[metric]) for r in rows], dtype=np.float64)
            summary[kind][metric] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else None,
                "n": int(len(values)),
            }
    return summary


def default_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def evaluate(pred: str | os.PathLike, gt: str | os.PathLike, jobs: int | None = None,
             progress: bool = True, structure: str | None = None) -> dict:
    """Score PRED against GT; returns ``{"cases", "summary", "failures", "unmatched_predictions"}``.

    Raises :class:`InputError` only when nothing can be matched at all (missing or empty GT).
    """
    case_jobs, unmatched = match_cases(pred, gt, structure=structure)
    cases, failures = [], []
    for result, failure in _run(case_jobs, jobs or default_jobs(), progress):
        if result is not None:
            cases.append(result)
        else:
            failures.append(failure)
    cases.sort(key=lambda c: c["case"])
    failures.sort(key=lambda f: f["case"])
    return {"cases": cases, "summary": summarize(cases), "failures": failures,
            "unmatched_predictions": [str(p) for p in unmatched]}


# ----------------------------------------------------------------------------- output
def _atomic_write(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(result: dict, path: str | os.PathLike) -> Path:
    return _atomic_write(path, json.dumps(result, indent=2) + "\n")


def cases_csv(cases: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CASE_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for case in cases:
        writer.writerow({k: case.get(k, "") for k in CASE_FIELDS})
    return buffer.getvalue()


def write_csv(cases: list[dict], path: str | os.PathLike) -> Path:
    return _atomic_write(path, cases_csv(cases))


def format_summary(summary: dict) -> str:
    """One line per type: ``tree (n=3): dice 0.91 ± 0.02, ...``."""
    lines = []
    for kind, metrics in summary.items():
        parts = []
        n = 0
        for metric, stats in metrics.items():
            n = stats["n"]
            std = "" if stats["std"] is None or math.isnan(stats["std"]) else f" ± {stats['std']:.4f}"
            parts.append(f"{metric} {stats['mean']:.4f}{std}")
        lines.append(f"{kind} (n={n}): " + ", ".join(parts))
    return "\n".join(lines)
