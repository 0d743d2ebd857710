"""A synthetic SELMA3D-like dataset, written in the DESIGN.md layout.

Five structures as in the challenge — vessels (tree, mouse), c-Fos+ cells (spot, mouse), cell
nuclei (spot, human), Aβ plaques (spot, mouse), microglia (tree, mouse; test splits only) —
drawn as geometric phantoms (:mod:`.phantoms`) and imaged like a light-sheet microscope
(:mod:`.imaging`). Labels are the structure before blur and noise.

Every case and volume draws its own object size and density, contrast, PSF, noise, background,
stripes and attenuation from its structure's :class:`~.domain.Domain` (deterministically from
the case key). With ``shift=True`` a ``shifted_test`` split is added, drawn from deliberately
different ranges (:data:`~.domain.SHIFTED_DOMAINS`); ``dataset.json`` records the ranges of
every split and the values each case drew.

Presets: ``tiny`` (seconds, for tests), ``small`` (about a minute, enough for a real
finetuning run on CPU) and ``full`` (the challenge's shape: hundreds of annotated patches and
35 unannotated volumes of 1024³ voxels and more, generated slab by slab with bounded memory).

Writing is resumable and atomic: everything goes to ``.<OUT>.partial`` next to ``OUT``; finished
cases and volumes are kept when a killed run is started again with the same preset and seed,
and the folder is renamed to ``OUT`` only when ``dataset.json`` is complete.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.nifti import write_nifti
from ..io.tiffstack import write_slices
from ..utils.progress import counting
from .domain import SHIFT_DESCRIPTION, SHIFTED_DOMAINS, TRAIN_DOMAINS, Domain, optics_from
from .imaging import LightSheetImager
from .layout import SHIFTED_SPLIT, STRUCTURE_TYPES
from .phantoms import GENERATORS, Scene

FORMAT_VERSION = 2
MOUSE_SPACING = (2.0, 1.625, 1.625)  # µm (z, y, x)
HUMAN_SPACING = (2.0, 1.0, 1.0)


@dataclass(frozen=True)
class StructureSpec:
    name: str
    species: str
    spacing_zyx: tuple[float, float, float]
    domain: Domain  # the training distribution of specimen and microscope

    @property
    def type(self) -> str:
        return STRUCTURE_TYPES[self.name]


STRUCTURES: dict[str, StructureSpec] = {
    name: StructureSpec(name, "human" if name == "nucleus" else "mouse",
                        HUMAN_SPACING if name == "nucleus" else MOUSE_SPACING, TRAIN_DOMAINS[name])
    for name in ("vessel", "cfos", "nucleus", "plaque", "microglia")
}
STRUCTURE_IDS = {name: i for i, name in enumerate(STRUCTURES)}
#: splits drawn from another distribution than training, and the domains they draw from
SHIFTED: dict[str, dict[str, Domain]] = {SHIFTED_SPLIT: SHIFTED_DOMAINS}
SPLIT_IDS = {"train": 0, "preliminary_test": 1, "final_test": 2, SHIFTED_SPLIT: 4}
UNANNOTATED_SPLIT_ID = 3
#: patches are cut from a virtual specimen of this size (for the background/illumination fields)
PATCH_SPECIMEN = (1024, 1024, 1024)


@dataclass(frozen=True)
class Preset:
    """How many cases of which shape (z, y, x) per split and structure."""

    name: str
    annotated: dict[str, dict[str, tuple[int, tuple[int, int, int]]]]
    unannotated: dict[str, list[tuple[int, int, int]]]
    slab_depth: int = 32
    description: str = ""
    notes: dict = field(default_factory=dict)

    @property
    def shifted(self) -> dict[str, tuple[int, tuple[int, int, int]]]:
        """The ``shifted_test`` split: final_test's c-Fos and microglia cases, plus as many
        vessel cases as c-Fos ones (same shape), so both structure types are tested."""
        final = self.annotated["final_test"]
        return {"cfos": final["cfos"], "microglia": final["microglia"], "vessel": final["cfos"]}

    def splits(self, shift: bool) -> dict[str, dict[str, tuple[int, tuple[int, int, int]]]]:
        return {**self.annotated, SHIFTED_SPLIT: self.shifted} if shift else dict(self.annotated)


def _cube(n):
    return (n, n, n)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        "tiny",
        annotated={
            "train": {s: (2, _cube(32)) for s in ("vessel", "cfos", "nucleus", "plaque")},
            "preliminary_test": {"cfos": (1, _cube(32)), "microglia": (1, _cube(32))},
            "final_test": {"cfos": (1, _cube(32)), "microglia": (1, _cube(32))},
        },
        unannotated={s: [(32, 64, 64)] for s in ("vessel", "cfos", "nucleus", "plaque")},
        slab_depth=16,
        description="seconds; for tests",
    ),
    "small": Preset(
        "small",
        annotated={
            "train": {s: (10, _cube(64)) for s in ("vessel", "cfos", "nucleus", "plaque")},
            "preliminary_test": {"cfos": (4, _cube(64)), "microglia": (4, _cube(64))},
            "final_test": {"cfos": (4, _cube(64)), "microglia": (4, _cube(64))},
        },
        unannotated={s: [(80, 192, 192)] for s in ("vessel", "cfos", "nucleus", "plaque")},
        slab_depth=32,
        description="about a minute; enough for a real finetuning run on CPU",
    ),
    # Shaped like the SELMA3D data (arXiv 2501.03880): 315 annotated patches for finetuning,
    # preliminary and final testing (patch sizes from 100³ to 500×500×50, z first here) and 35
    # unannotated volumes of more than 1000³ voxels. The split of the counts over structures
    # is our approximation of the paper's Table 2.
    "full": Preset(
        "full",
        annotated={
            "train": {"vessel": (30, (50, 500, 500)), "cfos": (30, _cube(100)),
                      "nucleus": (30, (50, 300, 300)), "plaque": (30, (100, 200, 200))},
            "preliminary_test": {"cfos": (30, _cube(100)), "microglia": (30, _cube(100))},
            "final_test": {"cfos": (68, _cube(100)), "microglia": (67, _cube(100))},
        },
        unannotated={"vessel": [(1024, 1024, 1024)] * 8 + [(1280, 1280, 1280)] * 2,
                     "cfos": [(1024, 1024, 1024)] * 9 + [(1280, 1280, 1280)],
                     "nucleus": [(1024, 1024, 1024)] * 5,
                     "plaque": [(1024, 1024, 1024)] * 9 + [(1280, 1280, 1280)]},
        slab_depth=16,  # ~0.5 GB peak for 1024² planes
        description="the challenge's shape: ~75 GB, hours",
    ),
}


# ---------------------------------------------------------------------- single items
def _case_key(seed: int, structure: str, split_id: int, index: int) -> tuple[int, ...]:
    return (int(seed), STRUCTURE_IDS[structure], split_id, int(index))


def domain_of(structure: str, split: str | None = "train") -> Domain:
    """The distribution a case of ``split`` draws from (``None``: unannotated volumes)."""
    if split in SHIFTED:
        return SHIFTED[split][structure]
    return STRUCTURES[structure].domain


def draw_parameters(structure: str, key: tuple[int, ...], domain: Domain | None = None) -> dict[str, float]:
    """The specimen and microscope of one case, drawn from ``domain`` (default: training)."""
    domain = STRUCTURES[structure].domain if domain is None else domain
    return domain.draw(np.random.default_rng([*key, 40]))


def case_parameters(structure: str, seed: int = 0, split: str | None = "train", index: int = 0) -> dict[str, float]:
    """What annotated case ``index`` of ``split`` (``None``: unannotated volume) drew."""
    split_id = UNANNOTATED_SPLIT_ID if split is None else SPLIT_IDS[split]
    return draw_parameters(structure, _case_key(seed, structure, split_id, index), domain_of(structure, split))


def make_scene(structure: str, shape_zyx, key: tuple[int, ...], domain: Domain | None = None) -> Scene:
    """The phantom of one case; at least one object (patches are cut where there is some)."""
    spec = STRUCTURES[structure]
    params = draw_parameters(structure, key, domain)
    rng = np.random.default_rng([*key, 10])
    for _ in range(100):
        scene = GENERATORS[structure](tuple(shape_zyx), spec.spacing_zyx, rng,
                                      density=params["density"], size=params["size"])
        if scene.n_objects > 0:
            return scene
    raise RuntimeError(f"could not place any {structure} in a patch of {shape_zyx}")  # pragma: no cover


def make_imager(structure: str, shape_zyx, key: tuple[int, ...], whole_specimen: bool,
                domain: Domain | None = None) -> LightSheetImager:
    """Scene plus microscope for one patch (cut from a larger specimen) or one whole volume,
    both drawn from ``domain`` (default: the structure's training distribution)."""
    optics = optics_from(draw_parameters(structure, key, domain))
    scene = make_scene(structure, shape_zyx, key, domain)
    if whole_specimen:
        return LightSheetImager(scene, optics, key=(*key, 20), tissue=True)
    rng = np.random.default_rng([*key, 30])
    origin = [int(rng.integers(0, max(1, p - s))) for p, s in zip(PATCH_SPECIMEN, shape_zyx)]
    return LightSheetImager(scene, optics, key=(*key, 20), origin_zyx=origin,
                            specimen_shape=PATCH_SPECIMEN)


def make_patch(structure: str, shape_zyx, seed: int = 0, split: str = "train",
               index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One annotated patch: (image int16, label uint8), both (z, y, x); a shifted split
    draws from its shifted domain."""
    key = _case_key(seed, structure, SPLIT_IDS[split], index)
    return make_imager(structure, shape_zyx, key, False, domain_of(structure, split)).render()


def volume_imager(structure: str, shape_zyx, seed: int = 0, index: int = 0) -> LightSheetImager:
    """The imager of one unannotated whole-specimen volume (render it slab by slab)."""
    return make_imager(structure, shape_zyx, _case_key(seed, structure, UNANNOTATED_SPLIT_ID, index), True)


def write_volume(folder: str | os.PathLike, imager: LightSheetImager, slab_depth: int = 32,
                 on_slab=None) -> Path:
    """Render ``imager`` slab by slab into a TIFF slice folder (one int16 file per z).

    Memory is bounded by one slab (plus the PSF margin), whatever the volume size. The folder
    is written as ``<folder>.partial`` and renamed when complete.
    """
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for z0, image, _label in imager.slabs(slab_depth):
        write_slices(tmp, image, start=z0)
        if on_slab is not None:
            on_slab(image.shape[0])
    os.replace(tmp, folder)
    return folder


# ---------------------------------------------------------------------- the dataset
def _case_names(count: int, structure: str) -> list[str]:
    return [f"{structure}_{i:03d}" for i in range(count)]


def _rounded(params: dict[str, float]) -> dict[str, float]:
    return {k: float(f"{v:.4g}") for k, v in params.items()}


def dataset_meta(preset: Preset, seed: int, shift: bool = False) -> dict:
    """``dataset.json``: structures, splits, and how every split was drawn — the ranges of its
    domain (``domains``), which splits are shifted and how (``shifted_splits``), and the values
    each case drew (``case_parameters``), so a report can say what a shift was."""
    annotated = preset.splits(shift)
    splits = {split: {s: _case_names(n, s) for s, (n, _shape) in per.items()}
              for split, per in annotated.items()}
    unannotated = {s: _case_names(len(shapes), s) for s, shapes in preset.unannotated.items()}
    structures = {name: {"type": spec.type, "spacing_zyx": list(spec.spacing_zyx), "species": spec.species}
                  for name, spec in STRUCTURES.items()}
    domains = {split: {s: domain_of(s, split).as_dict() for s in per} for split, per in annotated.items()}
    domains["unannotated"] = {s: domain_of(s, None).as_dict() for s in preset.unannotated}
    shifted = {split: {"relative_to": "train", "description": SHIFT_DESCRIPTION}
               for split in annotated if split in SHIFTED}
    params = {split: {s: {name: _rounded(case_parameters(s, seed, split, i))
                          for i, name in enumerate(names)} for s, names in per.items()}
              for split, per in splits.items()}
    params["unannotated"] = {s: {name: _rounded(case_parameters(s, seed, None, i)) for i, name in enumerate(names)}
                             for s, names in unannotated.items()}
    return {"name": f"selma3d-synthetic-{preset.name}", "preset": preset.name, "seed": int(seed),
            "format_version": FORMAT_VERSION, "structures": structures, "splits": splits,
            "unannotated": unannotated, "shifted_splits": shifted, "domains": domains,
            "case_parameters": params}


#: Inside a finished dataset: every file synth wrote with its size and mtime, so ``--overwrite``
#: deletes only files it can prove it wrote (a user's own dataset.json or extra files stop it).
MANIFEST = ".selma3d_synth_manifest.json"


def _write_manifest(folder: Path) -> None:
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            st = path.stat()
            files[path.relative_to(folder).as_posix()] = [st.st_size, st.st_mtime_ns]
    (folder / MANIFEST).write_text(json.dumps({"written_by": "selma3d synth", "format": 1, "files": files}))


def _provably_ours(out: Path) -> list[Path]:
    """The files of ``out`` (manifest last) if all of them are exactly the ones synth wrote there;
    else raise :class:`InputError` naming the first that is not."""
    try:
        listed = json.loads((out / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{out}: not a selma3d dataset written by `selma3d synth` (no readable {MANIFEST}); "
                         "refusing to overwrite it") from None
    files = []
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if path.is_dir() and not path.is_symlink():
            if not any(name.startswith(rel + "/") for name in listed):
                raise InputError(f"{path}: not written by `selma3d synth`; refusing to overwrite {out}")
            continue
        if rel == MANIFEST:
            continue
        st = path.lstat()
        if listed.get(rel) != [st.st_size, st.st_mtime_ns] or path.is_symlink():
            raise InputError(f"{path}: not written by `selma3d synth` (or changed since); refusing to "
                             f"overwrite {out}")
        files.append(path)
    return files + [out / MANIFEST]


def _remove_dataset(out: Path) -> None:
    """Delete exactly the files synth wrote, then the folders they leave empty (rmdir refuses
    a folder in which something new appeared)."""
    for path in _provably_ours(out):
        path.unlink()
    for folder in sorted((p for p in out.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        folder.rmdir()
    out.rmdir()


def _prepare_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise InputError(f"{out}: folder is not empty (use --overwrite to replace a dataset)")
        _provably_ours(out)


def make_dataset(out: str | os.PathLike, preset: str = "tiny", seed: int = 0, progress: bool = False,
                 overwrite: bool = False, shift: bool = False) -> Path:
    """Write a synthetic SELMA3D-like dataset to ``out`` and return its path; with ``shift``,
    also the ``shifted_test`` split (drawn from :data:`~.domain.SHIFTED_DOMAINS`)."""
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    if int(seed) < 0:
        raise InputError(f"--seed must be a non-negative integer, got {seed}")
    spec = PRESETS[preset]
    out = Path(out)
    _prepare_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial"
    stamp = {"preset": preset, "seed": int(seed), "format_version": FORMAT_VERSION, "shift": bool(shift)}
    stamp_path = partial / "synth.json"
    if partial.exists():
        try:
            resumable = json.loads(stamp_path.read_text()) == stamp
        except (OSError, json.JSONDecodeError):
            resumable = False
        if not resumable:
            shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    stamp_path.write_text(json.dumps(stamp))

    jobs = []  # (kind, split, structure, index, shape)
    for split, per in spec.splits(shift).items():
        for structure, (count, shape) in per.items():
            jobs += [("case", split, structure, i, shape) for i in range(count)]
    for structure, shapes in spec.unannotated.items():
        jobs += [("volume", None, structure, i, shape) for i, shape in enumerate(shapes)]
    total_planes = sum(job[4][0] for job in jobs)

    with counting(progress, "synth", f"synth {preset}", total_planes, unit="planes") as advance:
        for kind, split, structure, index, shape in jobs:
            name = f"{structure}_{index:03d}"
            if kind == "case":
                folder = partial / "annotated" / split / structure
                img_path = folder / f"{name}_img.nii.gz"
                lbl_path = folder / f"{name}_label.nii.gz"
                if not (img_path.is_file() and lbl_path.is_file()):
                    image, label = make_patch(structure, shape, seed, split, index)
                    spacing = STRUCTURES[structure].spacing_zyx
                    write_nifti(lbl_path, label, spacing_zyx=spacing)
                    write_nifti(img_path, image, spacing_zyx=spacing)
                advance(shape[0])
            else:
                folder = partial / "unannotated" / structure / name
                if folder.is_dir():
                    advance(shape[0])
                    continue
                imager = volume_imager(structure, shape, seed, index)
                write_volume(folder, imager, spec.slab_depth, on_slab=advance)

    meta = dataset_meta(spec, seed, shift)
    (partial / "dataset.json").write_text(json.dumps(meta, indent=2))
    stamp_path.unlink()
    _write_manifest(partial)
    if out.exists():
        if any(out.iterdir()):
            _remove_dataset(out)
        else:
            out.rmdir()
    os.replace(partial, out)
    return out
