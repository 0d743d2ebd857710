"""Which prediction belongs to which ground-truth case, and of what structure and type.

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

* Edition (``--edition``, :mod:`selma3d.evaluation.editions`): 2024 (default) scores by
  structure type as above; 2025 and 2026 route by the case name's prefix as their scorers do,
  and a case whose name matches none of their structures is a one-line failure.

A prediction that is the ground-truth file itself (or PRED is GT) is an error. Nothing is read
here but file names and ``dataset.json``; a case that cannot be matched carries its ``problem``
and fails alone when scored.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ...data.layout import STRUCTURE_TYPES, find_dataset_json, structure_from_name
from ...errors import InputError
from ...io.nifti import case_name, is_nifti
from ..editions import DEFAULT_EDITION, get_edition
from ..metrics import METRICS_BY_TYPE

GT_SUFFIX = "_label"
PRED_SUFFIXES = ("_label", "_pred")
IMAGE_SUFFIX = "_img"


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
