"""The dataset layout on disk (DESIGN.md), discovered from ``dataset.json`` or the folders.

    DATA/unannotated/<structure>/<volume>/slice_00000.tif ...   (or <volume>.zarr, <volume>.ome.tif,
                                                                 a link to either: dataset add-volume)
    DATA/annotated/<split>/<structure>/<case>_img.nii.gz, <case>_label.nii.gz
    DATA/dataset.json

Every command that reads a dataset goes through :func:`load_dataset`, so the layout lives in
one place.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

#: The SELMA3D structures and their metric type. Microglia appear only in test splits.
STRUCTURE_TYPES: dict[str, str] = {
    "vessel": "tree",
    "cfos": "spot",
    "nucleus": "spot",
    "plaque": "spot",
    "microglia": "tree",
}
#: ``shifted_test``: a test split drawn from a deliberately different distribution than
#: training (``selma3d synth --shift``; ``dataset.json`` → ``shifted_splits`` says how).
SHIFTED_SPLIT = "shifted_test"
SPLITS = ("train", "preliminary_test", "final_test", SHIFTED_SPLIT)
TEST_SPLITS = ("preliminary_test", "final_test", SHIFTED_SPLIT)
IMAGE_SUFFIX = "_img"
LABEL_SUFFIX = "_label"


def structure_type(structure: str) -> str:
    try:
        return STRUCTURE_TYPES[structure]
    except KeyError:
        raise InputError(
            f"unknown structure {structure!r}; known: {', '.join(STRUCTURE_TYPES)}") from None


def structure_from_name(name: str) -> str | None:
    """Guess the structure from a file or case name (``cfos_003_label`` → ``cfos``)."""
    lowered = name.lower()
    for structure in sorted(STRUCTURE_TYPES, key=len, reverse=True):
        if structure in lowered:
            return structure
    return None


@dataclass(frozen=True)
class AnnotatedCase:
    split: str
    structure: str
    case: str
    image: Path
    label: Path

    @property
    def type(self) -> str:
        return structure_type(self.structure)


@dataclass(frozen=True)
class UnannotatedVolume:
    structure: str
    name: str
    path: Path  # a TIFF slice folder, an OME-Zarr store, a multi-page TIFF or NIfTI file (or a link to one)


#: file suffixes of single-file volumes under ``unannotated/<structure>/`` (longest first)
VOLUME_FILE_SUFFIXES = (".ome.tiff", ".ome.tif", ".nii.gz", ".tiff", ".tif", ".nii")


def volume_name(path: Path) -> str | None:
    """The volume name of an entry of ``unannotated/<structure>/``, or ``None`` if it is not a
    volume: folders (slice folders, Zarr stores) keep their name, files (multi-page TIFF, NIfTI)
    lose their suffix; hidden entries (locks, partial writes) are skipped. A link whose target
    is gone still counts, so reading it reports the broken link instead of the volume vanishing."""
    if path.name.startswith("."):
        return None
    if path.is_dir():
        return path.name
    lowered = path.name.lower()
    for suffix in VOLUME_FILE_SUFFIXES:
        if lowered.endswith(suffix) and (path.is_file() or path.is_symlink()):
            return path.name[: -len(suffix)]
    if path.is_symlink() and not path.exists():
        return path.name
    return None


@dataclass
class Dataset:
    root: Path
    structures: dict[str, dict] = field(default_factory=dict)  # name -> {"type", "spacing_zyx", ...}
    meta: dict = field(default_factory=dict)

    def type_of(self, structure: str) -> str:
        info = self.structures.get(structure)
        return info["type"] if info and "type" in info else structure_type(structure)

    def spacing_of(self, structure: str) -> tuple[float, float, float]:
        info = self.structures.get(structure, {})
        return tuple(float(v) for v in info.get("spacing_zyx", (1.0, 1.0, 1.0)))

    @property
    def splits(self) -> list[str]:
        """Annotated splits present on disk (folders under ``annotated/``)."""
        base = self.root / "annotated"
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    @property
    def shifted_splits(self) -> dict[str, dict]:
        """Splits drawn from another distribution than training, with how they differ
        (``{"shifted_test": {"relative_to": "train", "description": ...}}``), from dataset.json."""
        return dict(self.meta.get("shifted_splits", {}))

    def domain_of(self, split: str, structure: str) -> dict | None:
        """The parameter ranges ``split``'s ``structure`` cases were drawn from, if recorded."""
        return self.meta.get("domains", {}).get(split, {}).get(structure)

    def annotated_cases(self, split: str | None = None,
                        structures: list[str] | None = None) -> list[AnnotatedCase]:
        base = self.root / "annotated"
        cases: list[AnnotatedCase] = []
        if not base.is_dir():
            return cases
        for split_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            if split is not None and split_dir.name != split:
                continue
            for struct_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
                if structures is not None and struct_dir.name not in structures:
                    continue
                for image in sorted(struct_dir.glob(f"*{IMAGE_SUFFIX}.nii*")):
                    stem = image.name.split(IMAGE_SUFFIX + ".nii")[0]
                    label = image.with_name(image.name.replace(IMAGE_SUFFIX + ".nii", LABEL_SUFFIX + ".nii"))
                    if not label.is_file():
                        raise InputError(f"{image}: its label {label.name} is missing")
                    cases.append(AnnotatedCase(split_dir.name, struct_dir.name, stem, image, label))
        return cases

    def unannotated_volumes(self, structures: list[str] | None = None) -> list[UnannotatedVolume]:
        base = self.root / "unannotated"
        volumes: list[UnannotatedVolume] = []
        if not base.is_dir():
            return volumes
        for struct_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            if structures is not None and struct_dir.name not in structures:
                continue
            for vol in sorted(struct_dir.iterdir()):
                name = volume_name(vol)
                if name is not None:
                    volumes.append(UnannotatedVolume(struct_dir.name, name, vol))
        return volumes


def load_dataset(root: str | os.PathLike) -> Dataset:
    """Open a dataset folder; ``dataset.json`` is optional (types then come from the names)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found")
    meta: dict = {}
    meta_path = root / "dataset.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"{meta_path}: invalid JSON ({exc})") from None
    structures = {name: dict(info) for name, info in meta.get("structures", {}).items()}
    if not structures:
        for sub in ("unannotated", "annotated"):
            for path in (root / sub).glob("*" if sub == "unannotated" else "*/*"):
                if path.is_dir() and path.name in STRUCTURE_TYPES:
                    structures.setdefault(path.name, {"type": STRUCTURE_TYPES[path.name]})
    if not (root / "annotated").is_dir() and not (root / "unannotated").is_dir():
        raise InputError(f"{root}: not a selma3d dataset (no annotated/ or unannotated/ folder)")
    return Dataset(root=root, structures=structures, meta=meta)


def find_dataset_json(start: str | os.PathLike) -> Path | None:
    """The nearest ``dataset.json`` in ``start`` or one of its parents, if any."""
    path = Path(start).resolve()
    for candidate in [path, *path.parents]:
        if candidate.is_file():
            continue
        meta = candidate / "dataset.json"
        if meta.is_file():
            return meta
    return None
