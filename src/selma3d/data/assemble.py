"""Assemble a dataset (the DESIGN.md layout) from a lab's own files: ``selma3d dataset ...``.

    DATA/dataset.json                                   structures (type, spacing), splits, volumes
    DATA/unannotated/<structure>/<volume>[.zarr|.ome.tif|...]   a link to the user's volume, or a
                                                        converted OME-Zarr copy of it
    DATA/annotated/<split>/<structure>/<case>_img.nii.gz, <case>_label.nii.gz

Every addition is validated before anything is written (readable, 3D, a supported dtype, a
binary label on the image's voxel grid, one voxel spacing per structure), so a dataset built
this way passes :func:`selma3d.data.check.check_dataset`. ``dataset.json`` is rewritten
atomically, last, under a lock, so two commands adding at once cannot lose an entry.
Nothing the user gave is ever modified: volumes are linked or copied, patches are copied.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..utils.atomic import write_json
from ..utils.triples import parse_triple
from .layout import STRUCTURE_TYPES

META = "dataset.json"
CREATED_BY = "selma3d dataset"
TYPES = ("spot", "tree")
SPACING_RTOL = 1e-3
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


# ------------------------------------------------------------------------------ small parts

def parse_spacing(text: str | None, flag: str = "--spacing") -> tuple[float, float, float] | None:
    """``"2,1.6,1.6"`` (also ``2x1.6x1.6`` or ``"2 1.6 1.6"``) → (z, y, x) in micrometers."""
    return parse_triple(text, flag, float, allow_single=False,
                        message=f"{flag} expects three positive numbers Z,Y,X (micrometers), got {{value!r}}")


def check_name(name: str, what: str) -> str:
    if not _NAME.match(name or ""):
        raise InputError(f"{what} {name!r}: use letters, digits and _ . + - only (it becomes a folder or file name)")
    return name


def same_spacing(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(math.isclose(float(x), float(y), rel_tol=SPACING_RTOL) for x, y in zip(a, b))


def fmt_spacing(spacing: Sequence[float]) -> str:
    return "x".join(f"{float(s):g}" for s in spacing) + " µm"


def read_meta(root: Path) -> dict:
    """``DATA/dataset.json``; refuses a folder that is not a dataset yet."""
    path = root / META
    if not path.is_file():
        raise InputError(f"{root}: not a selma3d dataset (no {META}); run `selma3d dataset init {root}` first")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: expected a JSON object")
    return meta


def write_meta(root: Path, meta: dict) -> Path:
    path = root / META
    return write_json(path, meta, indent=1, default=None, mkdir=False)


@contextlib.contextmanager
def editing(root: Path):
    """Lock ``dataset.json`` for one addition; yields its content, which the caller saves."""
    from ..lockfile import output_lock

    with output_lock(root / META, "selma3d dataset"):
        yield read_meta(root)


def structure_entry(meta: dict, structure: str, given_type: str | None) -> dict:
    """The structure's entry in ``meta`` with its type settled: the recorded one, the one given,
    or a SELMA3D default; a clash or no type at all is refused."""
    check_name(structure, "structure")
    if given_type is not None and given_type not in TYPES:
        raise InputError(f"--type {given_type!r}: choose spot (isolated objects) or tree (connected structures)")
    entry = dict((meta.get("structures") or {}).get(structure) or {})
    recorded = entry.get("type")
    if recorded and given_type and recorded != given_type:
        raise InputError(f"structure {structure!r} is recorded as {recorded!r} in {META}; --type {given_type} "
                         "contradicts it")
    kind = recorded or given_type or STRUCTURE_TYPES.get(structure)
    if kind is None:
        raise InputError(f"structure {structure!r} is new and has no type; give --type spot (isolated "
                         "objects: cells, nuclei, plaques) or --type tree (connected: vessels, axons)")
    entry["type"] = kind
    return entry


def settle_spacing(entry: dict, structure: str, spacing: Sequence[float], where: Path) -> None:
    """Record the structure's spacing, or refuse one that disagrees with it (selma3d never
    resamples, so a network would see two scales of the same structure)."""
    recorded = entry.get("spacing_zyx")
    if recorded and not same_spacing(recorded, spacing):
        raise InputError(f"{where}: voxel spacing {fmt_spacing(spacing)} differs from {fmt_spacing(recorded)} "
                         f"recorded for {structure!r}; resample it, or save it with the right voxel size")
    entry["spacing_zyx"] = [float(s) for s in spacing]


# ------------------------------------------------------------------------------------- init

def init_dataset(root: str | os.PathLike, spacing: Sequence[float] | None = None) -> Path:
    """Create ``root`` with ``annotated/``, ``unannotated/`` and ``dataset.json``.

    ``spacing`` (z, y, x) is the default for volumes whose files record none. An existing
    folder is accepted only empty, or holding a hand-made layout (``annotated/``,
    ``unannotated/``) without ``dataset.json``: its structures are then listed (types of the
    SELMA3D names filled in; others left for ``dataset check`` to report)."""
    root = Path(root)
    if (root / META).exists():
        raise InputError(f"{root / META}: already a dataset; add to it with `selma3d dataset add-volume/add-patch`")
    if root.is_dir():
        extra = [p for p in root.iterdir() if p.name not in ("annotated", "unannotated") and not p.name.startswith(".")]
        if extra:
            raise InputError(f"{root}: folder is not empty ({extra[0].name} ...); give a new or empty folder")
    meta: dict = {"name": root.resolve().name, "created_by": CREATED_BY, "structures": {}, "splits": {},
                  "unannotated": {}, "volumes": {}}
    if spacing is not None:
        meta["spacing_zyx"] = [float(s) for s in spacing]
    for struct_dir in sorted((root / "unannotated").glob("*")) + sorted((root / "annotated").glob("*/*")):
        if struct_dir.is_dir() and not struct_dir.name.startswith("."):
            info = meta["structures"].setdefault(struct_dir.name, {})
            if struct_dir.name in STRUCTURE_TYPES:
                info["type"] = STRUCTURE_TYPES[struct_dir.name]
    for split_dir in sorted((root / "annotated").glob("*")):
        for struct_dir in sorted(p for p in split_dir.glob("*") if p.is_dir()):
            names = sorted(p.name.split("_img.nii")[0] for p in struct_dir.glob("*_img.nii*"))
            meta["splits"].setdefault(split_dir.name, {})[struct_dir.name] = names
    (root / "annotated").mkdir(parents=True, exist_ok=True)
    (root / "unannotated").mkdir(exist_ok=True)
    write_meta(root, meta)
    return root


# ------------------------------------------------------------------------------- add-volume

def _suffix(path: Path) -> str:
    lowered = path.name.lower()
    for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif", ".nii.gz", ".nii"):
        if lowered.endswith(suffix):
            return path.name[-len(suffix):]
    return ""


def _check_dtype(dtype, where: Path, what: str = "volume") -> None:
    from ..io.volume import SUPPORTED_DTYPES

    if np.dtype(dtype) not in SUPPORTED_DTYPES:
        names = ", ".join(str(d) for d in SUPPORTED_DTYPES)
        raise InputError(f"{where}: {what} dtype {np.dtype(dtype)} is not supported ({names}); convert it first")


def volume_summary(volume) -> str:
    """Shape, dtype and the 0.05/99.95 % intensity percentiles (to choose ``--fg-threshold``)."""
    from .normalize import estimate_volume_percentiles

    lo, hi = estimate_volume_percentiles(volume, max_slices=8, max_voxels=500_000)
    return (f"{'x'.join(map(str, volume.shape))} {np.dtype(volume.dtype)}, intensity 0.05-99.95 %: "
            f"{lo:g} to {hi:g}")


def add_volume(root: str | os.PathLike, structure: str, source: str | os.PathLike, *, type: str | None = None,
               mode: str = "link", name: str | None = None, level: int = 0,
               spacing: Sequence[float] | None = None, chunks: int = 64, progress: bool = True) -> dict:
    """Add an unannotated volume of ``structure``: ``mode="link"`` makes a symbolic link to it
    (nothing copied), ``mode="convert"`` writes a chunked OME-Zarr copy (resumable; what
    pretraining reads fastest). ``level`` picks a resolution level of an OME-Zarr or pyramidal
    TIFF. Returns the ``volumes`` entry recorded in ``dataset.json``."""
    from ..io.volume import is_zarr, open_volume, volume_spacing
    from ..io.zarrstore import PROGRESS_FILE, zarr_level_path
    from ..paths import check_output

    root, source = Path(root), Path(source)
    if mode not in ("link", "convert"):
        raise InputError(f"unknown mode {mode!r}: link or convert")
    meta = read_meta(root)
    entry = structure_entry(meta, structure, type)
    volume = open_volume(source, level=level)  # readable, 3D, the level exists
    if len(volume.shape) != 3 or min(volume.shape) < 1:
        raise InputError(f"{source}: expected a non-empty 3D (z, y, x) volume, got shape {tuple(volume.shape)}")
    _check_dtype(volume.dtype, source)
    recorded = volume_spacing(source, level=level)
    if recorded is not None and spacing is not None and not same_spacing(recorded, spacing):
        raise InputError(f"{source}: the file records a voxel spacing of {fmt_spacing(recorded)}, --spacing says "
                         f"{fmt_spacing(spacing)}; leave --spacing out or fix the file's metadata")
    chosen = recorded or spacing or meta.get("spacing_zyx")
    if chosen is None:
        raise InputError(f"{source}: the file records no voxel spacing; give --spacing Z,Y,X (micrometers), "
                         f"or set a default with `selma3d dataset init {root} --spacing Z,Y,X`")
    settle_spacing(entry, structure, chosen, source)

    suffix = _suffix(source)
    name = check_name(name or (source.name[: -len(suffix)] if suffix else source.name), "volume name")
    key = f"{structure}/{name}"
    if key in (meta.get("volumes") or {}) or name in ((meta.get("unannotated") or {}).get(structure) or []):
        raise InputError(f"{root / 'unannotated' / structure}: a volume named {name!r} is already in the dataset; "
                         "choose another --name")
    folder = root / "unannotated" / structure
    if mode == "link":
        if is_zarr(source) and not suffix:
            suffix = ".zarr"
        if level and not is_zarr(source):
            raise InputError(f"{source}: a level of a TIFF pyramid cannot be linked; use --convert")
        target = zarr_level_path(source, level) if level else source
        dest = folder / f"{name}{suffix}"
    else:
        dest = folder / f"{name}.zarr"
    check_output(dest, "any", inputs=[source], what="volume")
    if dest.exists() or dest.is_symlink():
        resumable = mode == "convert" and (dest / PROGRESS_FILE).is_file()
        if not resumable:
            raise InputError(f"{dest}: already exists; choose another --name")
    from ..paths import no_empty_output_on_failure

    created = not dest.exists()
    with no_empty_output_on_failure(folder):
        folder.mkdir(parents=True, exist_ok=True)
        _place_volume(root, structure, type, source, volume, dest, target if mode == "link" else None, mode,
                      level, chosen, chunks, progress, name, key, created)
    return _record(root, dest, source, mode, level, volume, chosen)


def _record(root, dest, source, mode, level, volume, spacing) -> dict:
    return {"path": dest.relative_to(root).as_posix(), "source": str(source.resolve()), "mode": mode,
            "level": int(level), "shape": [int(s) for s in volume.shape], "dtype": str(np.dtype(volume.dtype)),
            "spacing_zyx": [float(s) for s in spacing]}


def _place_volume(root, structure, type, source, volume, dest, target, mode, level, chosen, chunks, progress,
                  name, key, created) -> None:
    from ..io.volume import is_zarr
    from ..io.zarr_convert import convert_to_zarr
    from ..io.zarrstore import zarr_level_path

    try:
        if mode == "link":
            os.symlink(os.path.abspath(target), dest, target_is_directory=Path(target).is_dir())
        else:
            from ..lockfile import output_lock

            what = str(zarr_level_path(source, level)) if level and is_zarr(source) else \
                (volume if level else str(source))
            with output_lock(dest, "selma3d dataset add-volume"):
                convert_to_zarr(what, dest, chunks=chunks, spacing=chosen, progress=progress)
        record = _record(root, dest, source, mode, level, volume, chosen)
        with editing(root) as meta:
            latest = structure_entry(meta, structure, type)
            settle_spacing(latest, structure, chosen, source)
            meta.setdefault("structures", {})[structure] = latest
            meta.setdefault("unannotated", {}).setdefault(structure, []).append(name)
            meta.setdefault("volumes", {})[key] = record
            write_meta(root, meta)
    except BaseException:
        if created and mode == "link" and dest.is_symlink():
            dest.unlink()
        raise


# -------------------------------------------------------------------------------- add-patch

def _binary_label(label: np.ndarray, path: Path, binarize: bool) -> np.ndarray:
    if label.dtype == bool:
        return label.astype(np.uint8)
    if np.issubdtype(label.dtype, np.floating):
        if not np.isfinite(label).all():
            raise InputError(f"{path}: label holds NaN or infinite values")
        if not binarize and not np.array_equal(label, np.round(label)):
            raise InputError(f"{path}: label has fractional values (a probability map?); labels are masks: "
                             "threshold it first")
    elif not np.issubdtype(label.dtype, np.integer):
        raise InputError(f"{path}: label dtype {label.dtype} is not a mask")
    if binarize:
        return (label > 0).astype(np.uint8)
    values = np.unique(label)
    if not set(values.tolist()) <= {0, 1}:
        shown = ", ".join(f"{v:g}" for v in values[:6]) + (" ..." if values.size > 6 else "")
        raise InputError(f"{path}: label is not binary (values {shown}); selma3d labels are 0/1 masks; "
                         "add --binarize to store label > 0")
    return label.astype(np.uint8)


def next_case_name(meta: dict, structure: str) -> str:
    used = {c for split in (meta.get("splits") or {}).values() if isinstance(split, dict)
            for names in split.values() for c in names or []}
    i = 0
    while f"{structure}_{i:03d}" in used:
        i += 1
    return f"{structure}_{i:03d}"


def add_patch(root: str | os.PathLike, structure: str, image: str | os.PathLike, label: str | os.PathLike, *,
              split: str = "train", type: str | None = None, case: str | None = None,
              binarize: bool = False) -> tuple[Path, Path]:
    """Copy an annotated crop into ``annotated/<split>/<structure>/<case>_img.nii.gz`` and
    ``<case>_label.nii.gz``, each with the affine and header it was read with (DESIGN.md: never
    reoriented). The label is stored as uint8 0/1. Returns the two written paths."""
    from ..io.nifti import grid_difference, read_nifti
    from ..paths import check_output

    root, image, label = Path(root), Path(image), Path(label)
    check_name(split, "split")
    if image.resolve() == label.resolve():
        raise InputError(f"{label}: the label is the image file itself")
    meta = read_meta(root)
    entry = structure_entry(meta, structure, type)
    img, lbl = read_nifti(image), read_nifti(label)
    _check_dtype(img.array.dtype, image, "image")
    if np.issubdtype(img.array.dtype, np.floating) and not np.isfinite(img.array).all():
        raise InputError(f"{image}: image holds NaN or infinite voxels")
    difference = grid_difference(img, lbl)
    if difference is not None:
        raise InputError(f"{label}: not on the voxel grid of {image.name} ({difference}); draw the label on "
                         "the image itself (same shape, spacing, orientation)")
    mask = _binary_label(lbl.array, label, binarize)
    settle_spacing(entry, structure, img.spacing_zyx, image)

    case = check_name(case or next_case_name(meta, structure), "case name")
    for split_name, per in (meta.get("splits") or {}).items():
        for other, names in (per or {}).items():
            if case in (names or []):
                raise InputError(f"{root / 'annotated' / split_name / other}: a case named {case!r} already exists; "
                                 "choose another --case")
    folder = root / "annotated" / split / structure
    dest_img, dest_lbl = folder / f"{case}_img.nii.gz", folder / f"{case}_label.nii.gz"
    for dest in (dest_img, dest_lbl):
        check_output(dest, "file", inputs=[image, label], what="patch")
        if dest.exists():
            raise InputError(f"{dest}: already exists; choose another --case")
    from ..paths import no_empty_output_on_failure

    written: list[Path] = []
    with no_empty_output_on_failure(root / "annotated" / split):
        _write_patch(root, structure, type, split, case, image, img, mask, lbl, dest_img, dest_lbl, written)
    return dest_img, dest_lbl


def _write_patch(root, structure, type, split, case, image, img, mask, lbl, dest_img, dest_lbl, written) -> None:
    from ..io.nifti import write_nifti

    try:
        written.append(write_nifti(dest_img, img.array, affine=img.affine, header=img.header))
        written.append(write_nifti(dest_lbl, mask, affine=lbl.affine, header=lbl.header))
        with editing(root) as meta:
            latest = structure_entry(meta, structure, type)
            settle_spacing(latest, structure, img.spacing_zyx, image)
            meta.setdefault("structures", {})[structure] = latest
            cases = meta.setdefault("splits", {}).setdefault(split, {}).setdefault(structure, [])
            cases.append(case)
            write_meta(root, meta)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
