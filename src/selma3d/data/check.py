"""Every problem of a dataset at once (``selma3d dataset check``), before hours of training.

Training and evaluation stop at the first bad file; a lab fixing a hand-made dataset wants the
whole list. :func:`check_dataset` reads every annotated pair and opens every unannotated volume
(lazily: headers and metadata only) and collects what is wrong:

- ``dataset.json`` missing or unreadable;
- structures without a type (or with one other than spot/tree);
- splits with no cases, and cases listed in ``dataset.json`` but missing on disk or the reverse;
- images without labels and labels without images; files that are neither;
- unreadable files, shapes or voxel grids of image and label that differ, unsupported image
  dtypes, NaN/inf voxels, labels that are not 0/1 masks;
- voxel spacings that disagree with the structure's recorded one (patches and volumes);
- volumes that do not open (broken links, incomplete conversions, non-3D data).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .assemble import META, TYPES, fmt_spacing, same_spacing
from .layout import IMAGE_SUFFIX, LABEL_SUFFIX, STRUCTURE_TYPES, volume_name


@dataclass(frozen=True)
class Problem:
    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _load_meta(root: Path, problems: list[Problem]) -> dict:
    path = root / META
    if not path.is_file():
        problems.append(Problem(path, "missing; run `selma3d dataset init` (structure types and spacing live there)"))
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        problems.append(Problem(path, f"cannot be read ({exc})"))
        return {}
    if not isinstance(meta, dict):
        problems.append(Problem(path, "is not a JSON object"))
        return {}
    return meta


def _case_of(name: str) -> tuple[str, str] | None:
    """(case, "image"|"label") of a NIfTI name in the layout, else ``None``."""
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            for tag, kind in ((IMAGE_SUFFIX, "image"), (LABEL_SUFFIX, "label")):
                if stem.endswith(tag):
                    return stem[: -len(tag)], kind
    return None


def _check_pair(image: Path, label: Path, spacing, structure: str, problems: list[Problem]) -> None:
    from ..io.nifti import grid_difference, read_nifti
    from ..io.volume import SUPPORTED_DTYPES

    try:
        img = read_nifti(image)
    except InputError as exc:
        problems.append(Problem(image, str(exc).removeprefix(f"{image}: ")))
        img = None
    try:
        lbl = read_nifti(label)
    except InputError as exc:
        problems.append(Problem(label, str(exc).removeprefix(f"{label}: ")))
        lbl = None
    if img is not None:
        dtype = img.array.dtype
        if dtype not in SUPPORTED_DTYPES:
            problems.append(Problem(image, f"image dtype {dtype} is not supported "
                                           f"({', '.join(map(str, SUPPORTED_DTYPES))})"))
        if np.issubdtype(dtype, np.floating) and not np.isfinite(img.array).all():
            problems.append(Problem(image, "image holds NaN or infinite voxels"))
        if spacing and not same_spacing(spacing, img.spacing_zyx):
            problems.append(Problem(image, f"voxel spacing {fmt_spacing(img.spacing_zyx)} differs from "
                                           f"{fmt_spacing(spacing)} recorded for {structure!r}"))
    if lbl is not None:
        values = lbl.array
        if not (values.dtype == bool or np.issubdtype(values.dtype, np.integer)):
            problems.append(Problem(label, f"label dtype {values.dtype} is not an integer mask"))
        unique = np.unique(values)
        if not set(unique.tolist()) <= {0, 1}:
            shown = ", ".join(f"{v:g}" for v in unique[:6]) + (" ..." if unique.size > 6 else "")
            problems.append(Problem(label, f"label is not binary (values {shown})"))
    if img is not None and lbl is not None:
        difference = grid_difference(img, lbl)
        if difference is not None:
            problems.append(Problem(label, f"not on the voxel grid of {image.name} ({difference})"))


def _check_annotated(root: Path, meta: dict, structures: dict, problems: list[Problem]) -> dict[str, int]:
    counts: dict[str, int] = {}
    base = root / "annotated"
    listed = meta.get("splits") if isinstance(meta.get("splits"), dict) else None
    on_disk: dict[str, dict[str, set[str]]] = {}
    for split_dir in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
        found = on_disk.setdefault(split_dir.name, {})
        for struct_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            structures.setdefault(struct_dir.name, None)
            pairs: dict[str, dict[str, Path]] = {}
            for path in sorted(struct_dir.iterdir()):
                if path.name.startswith("."):
                    continue
                parsed = _case_of(path.name)
                if parsed is None or not path.is_file():
                    problems.append(Problem(path, f"not a <case>{IMAGE_SUFFIX}.nii.gz or <case>{LABEL_SUFFIX}.nii.gz file"))
                    continue
                pairs.setdefault(parsed[0], {})[parsed[1]] = path
            if not pairs:
                problems.append(Problem(struct_dir, "empty: no annotated cases"))
            spacing = (meta.get("structures") or {}).get(struct_dir.name, {}) or {}
            for case, files in sorted(pairs.items()):
                if "label" not in files:
                    problems.append(Problem(files["image"], f"has no label ({case}{LABEL_SUFFIX}.nii.gz missing)"))
                elif "image" not in files:
                    problems.append(Problem(files["label"], f"has no image ({case}{IMAGE_SUFFIX}.nii.gz missing)"))
                else:
                    _check_pair(files["image"], files["label"], spacing.get("spacing_zyx"), struct_dir.name, problems)
                found.setdefault(struct_dir.name, set()).add(case)
            counts[split_dir.name] = counts.get(split_dir.name, 0) + len(pairs)
        if not found:
            problems.append(Problem(split_dir, "empty split: no structure folders with cases"))
    if listed is not None:
        for split, per in listed.items():
            for structure, names in (per or {}).items():
                for case in names or []:
                    if case not in on_disk.get(split, {}).get(structure, set()):
                        problems.append(Problem(base / split / structure, f"case {case!r} is listed in {META} "
                                                                          "but its files are missing"))
            if not any((per or {}).values()) and split not in on_disk:
                problems.append(Problem(root / META, f"split {split!r} has no cases"))
        for split, per in on_disk.items():
            for structure, cases in per.items():
                for case in sorted(cases - set(((listed.get(split) or {}).get(structure)) or [])):
                    problems.append(Problem(base / split / structure / f"{case}{IMAGE_SUFFIX}.nii.gz",
                                            f"not listed in {META} splits (evaluate cannot tell its structure)"))
    return counts


def _check_unannotated(root: Path, meta: dict, structures: dict, problems: list[Problem]) -> int:
    from ..io.volume import SUPPORTED_DTYPES, open_volume, volume_spacing

    count = 0
    base = root / "unannotated"
    listed = meta.get("volumes") if isinstance(meta.get("volumes"), dict) else {}
    records = {str((r or {}).get("path", f"unannotated/{key}")): r or {} for key, r in listed.items()}
    seen = set()
    for struct_dir in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
        if struct_dir.name.startswith("."):
            continue
        structures.setdefault(struct_dir.name, None)
        recorded = ((meta.get("structures") or {}).get(struct_dir.name) or {}).get("spacing_zyx")
        for path in sorted(struct_dir.iterdir()):
            name = volume_name(path)
            if name is None:
                if not path.name.startswith("."):
                    problems.append(Problem(path, "not a volume (a TIFF slice folder, .zarr, .tif or .nii.gz)"))
                continue
            key = path.relative_to(root).as_posix()
            seen.add(key)
            count += 1
            record = records.get(key) or {}
            try:
                volume = open_volume(path, level=0)
                spacing = volume_spacing(path)
            except InputError as exc:
                problems.append(Problem(path, str(exc).removeprefix(f"{path}: ")))
                continue
            if len(volume.shape) != 3:
                problems.append(Problem(path, f"not a 3D volume (shape {tuple(volume.shape)})"))
            if np.dtype(volume.dtype) not in SUPPORTED_DTYPES:
                problems.append(Problem(path, f"dtype {np.dtype(volume.dtype)} is not supported "
                                              f"({', '.join(map(str, SUPPORTED_DTYPES))})"))
            spacing = spacing or record.get("spacing_zyx") or recorded or meta.get("spacing_zyx")
            if spacing is None:
                problems.append(Problem(path, "no voxel spacing: not in the file, nor in dataset.json"))
            elif recorded and not same_spacing(spacing, recorded):
                problems.append(Problem(path, f"voxel spacing {fmt_spacing(spacing)} differs from "
                                              f"{fmt_spacing(recorded)} recorded for {struct_dir.name!r}"))
    for key in records:
        if key not in seen:
            problems.append(Problem(root / key, f"is listed in {META} volumes but missing"))
    return count


def check_dataset(root: str | Path) -> tuple[list[Problem], dict]:
    """All problems of the dataset at ``root`` and a summary (structures with types, volume and
    case counts). Never raises for a problem inside the dataset; only for a missing ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found")
    problems: list[Problem] = []
    meta = _load_meta(root, problems)
    if not (root / "annotated").is_dir() and not (root / "unannotated").is_dir():
        problems.append(Problem(root, "no annotated/ or unannotated/ folder"))
    structures: dict[str, None] = {name: None for name in (meta.get("structures") or {})}
    volumes = _check_unannotated(root, meta, structures, problems)
    cases = _check_annotated(root, meta, structures, problems)
    types = {}
    for name in structures:
        info = (meta.get("structures") or {}).get(name) or {}
        kind = info.get("type") or STRUCTURE_TYPES.get(name)
        if kind is None:
            problems.append(Problem(root / META, f"structure {name!r} has no type (spot or tree); add "
                                                 f"\"type\" under structures.{name}"))
        elif kind not in TYPES:
            problems.append(Problem(root / META, f"structure {name!r} has type {kind!r}; expected spot or tree"))
        types[name] = kind
    return problems, {"structures": types, "volumes": volumes, "cases": cases}
