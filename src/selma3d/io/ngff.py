"""OME-NGFF ``multiscales`` metadata of an OME-Zarr image, read and validated (versions 0.4 and 0.5).

Labs bring OME-Zarr written by other tools (ome-zarr-py, bioformats2raw, napari, Fiji/MoBIE,
...): zarr v2 stores with NGFF 0.4 attributes (``.zattrs`` → ``multiscales``) or zarr v3 stores
with NGFF 0.5 (``zarr.json`` → ``attributes.ome.multiscales``), often 4D/5D (t, c, z, y, x).
:func:`read_multiscale` checks the fields selma3d relies on against the specification
(https://ngff.openmicroscopy.org/0.4/ and /0.5/) and says which field of which file is wrong.

Validated by hand, not with ``ome-zarr-models``: its only release for Python 3.11 (1.7) pins
``pydantic<2.13`` and would downgrade the pydantic the rest of selma3d uses. The rules checked:

- ``multiscales`` is a non-empty list; the first entry is used (the spec's default);
- version 0.4 (``multiscales[0].version``, zarr v2) or 0.5 (``ome.version``, zarr v3);
- ``axes``: 2–5 objects with unique ``name``; 2 or 3 of type ``space``, at most one ``time``
  and one ``channel``; time first, then channel/custom, then space; space units from the
  spec's UDUNITS list (plus the common spellings ``µm``/``um``/``micron``);
- ``datasets``: non-empty, each with a ``path`` and ``coordinateTransformations`` holding exactly
  one ``scale`` (first) and at most one ``translation`` (second), each with one value per axis;
  scales positive; each path is an array with one dimension per axis; levels ordered from the
  largest to the smallest shape;
- the optional multiscale-level ``coordinateTransformations`` follow the same rule and multiply
  every level's scale.

selma3d reads one 3D (z, y, x) volume: the three space axes; every other axis must have length 1
(a single channel and time point), otherwise :class:`~selma3d.errors.InputError` says which.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

SUPPORTED_VERSIONS = ("0.4", "0.5")
#: space units of the spec (UDUNITS-2 names) in micrometers, plus common spellings tools write
SPACE_UNITS_UM = {
    "angstrom": 1e-4, "attometer": 1e-12, "centimeter": 1e4, "decimeter": 1e5, "exameter": 1e24,
    "femtometer": 1e-9, "foot": 304800.0, "gigameter": 1e15, "hectometer": 1e8, "inch": 25400.0,
    "kilometer": 1e9, "megameter": 1e12, "meter": 1e6, "micrometer": 1.0, "mile": 1.609344e9,
    "millimeter": 1e3, "nanometer": 1e-3, "parsec": 3.0857e22, "petameter": 1e21, "picometer": 1e-6,
    "terameter": 1e18, "yard": 914400.0, "yoctometer": 1e-18, "yottameter": 1e30, "zeptometer": 1e-15,
    "zettameter": 1e27,
    "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3,
}


def node_type(path: str | os.PathLike) -> str | None:
    """``"array"``, ``"group"`` or ``None`` for a zarr v3 (``zarr.json``) or v2 (``.zarray`` /
    ``.zgroup``) node at ``path``."""
    path = Path(path)
    meta = path / "zarr.json"
    if meta.is_file():
        try:
            return json.loads(meta.read_text()).get("node_type")
        except (OSError, ValueError) as exc:
            raise InputError(f"{meta}: unreadable Zarr metadata ({exc})") from None
    if (path / ".zarray").is_file():
        return "array"
    if (path / ".zgroup").is_file():
        return "group"
    return None


def _attributes(group: Path) -> tuple[dict, Path]:
    """The group's attributes and the file they came from (v3 ``zarr.json`` or v2 ``.zattrs``)."""
    v3 = group / "zarr.json"
    if v3.is_file():
        try:
            return dict(json.loads(v3.read_text()).get("attributes") or {}), v3
        except (OSError, ValueError) as exc:
            raise InputError(f"{v3}: unreadable Zarr metadata ({exc})") from None
    v2 = group / ".zattrs"
    if v2.is_file():
        try:
            return dict(json.loads(v2.read_text())), v2
        except (OSError, ValueError) as exc:
            raise InputError(f"{v2}: unreadable Zarr attributes ({exc})") from None
    return {}, v2


@dataclass(frozen=True)
class Level:
    path: str
    scale: tuple[float, ...]  # one per axis, the multiscale-level scale folded in
    translation: tuple[float, ...] | None


@dataclass(frozen=True)
class Multiscale:
    """The validated first ``multiscales`` entry of an OME-Zarr image group."""

    group: Path
    source: Path  # the metadata file, for messages
    version: str
    axes: tuple[dict, ...]
    levels: tuple[Level, ...]

    @property
    def space_axes(self) -> list[int]:
        return [i for i, ax in enumerate(self.axes) if ax.get("type") == "space"]

    def level(self, index: int) -> Level:
        if not 0 <= index < len(self.levels):
            raise InputError(f"{self.group}: has {len(self.levels)} resolution level(s) "
                             f"(0..{len(self.levels) - 1}); level {index} does not exist")
        return self.levels[index]

    def level_path(self, index: int) -> Path:
        return self.group / self.level(index).path

    def spacing(self, index: int = 0) -> tuple[float, float, float]:
        """Voxel spacing (z, y, x) of level ``index`` in micrometers (units converted; an axis
        without a unit is taken as micrometers)."""
        scale = self.level(index).scale
        out = []
        for i in self.space_axes:
            unit = self.axes[i].get("unit")
            out.append(float(scale[i]) * (SPACE_UNITS_UM[unit] if unit else 1.0))
        return tuple(out)  # type: ignore[return-value]

    def fixed_index(self, shape) -> tuple[int | None, ...]:
        """Per array axis: ``None`` for z/y/x, ``0`` for a non-space axis of length 1; refuses
        a non-space axis longer than 1 (several channels or time points)."""
        out = []
        for ax, n in zip(self.axes, shape):
            if ax.get("type") == "space":
                out.append(None)
            elif int(n) == 1:
                out.append(0)
            else:
                kind = ax.get("type") or "non-space"
                raise InputError(f"{self.group}: axis '{ax['name']}' ({kind}) has {n} entries; selma3d reads one "
                                 f"3D (z, y, x) volume: save a single {kind if kind != 'non-space' else 'entry'} "
                                 "per image")
        return tuple(out)


def _fail(source: Path, where: str, what: str) -> InputError:
    return InputError(f"{source}: OME-NGFF {where}: {what}")


def _transforms(source: Path, where: str, transforms, n_axes: int) -> tuple[tuple[float, ...], tuple[float, ...] | None]:
    if not isinstance(transforms, list) or not transforms:
        raise _fail(source, where, "must be a non-empty list")
    kinds = [t.get("type") if isinstance(t, dict) else None for t in transforms]
    if kinds[0] != "scale" or kinds.count("scale") != 1:
        raise _fail(source, where, f"must hold exactly one 'scale' transformation, first; got {kinds}")
    if len(kinds) > 2 or (len(kinds) == 2 and kinds[1] != "translation"):
        raise _fail(source, where, f"after 'scale' only one 'translation' is allowed; got {kinds}")
    values = []
    for t in transforms:
        key = t["type"]
        if key not in t:
            raise _fail(source, where, f"'{key}' given by 'path' (a binary file) is not supported; "
                        "write the values inline")
        vec = t[key]
        if (not isinstance(vec, list) or len(vec) != n_axes
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vec)):
            raise _fail(source, where, f"'{key}' must be {n_axes} numbers (one per axis), got {vec!r}")
        values.append(tuple(float(v) for v in vec))
    if not all(v > 0 for v in values[0]):
        raise _fail(source, where, f"'scale' values must be positive, got {list(values[0])}")
    return values[0], values[1] if len(values) == 2 else None


def _check_axes(source: Path, axes) -> tuple[dict, ...]:
    if not isinstance(axes, list) or not 2 <= len(axes) <= 5:
        raise _fail(source, "multiscales[0].axes", f"must be a list of 2 to 5 axes, got {axes!r}")
    if not all(isinstance(a, dict) and isinstance(a.get("name"), str) for a in axes):
        raise _fail(source, "multiscales[0].axes", "every axis must be an object with a 'name' "
                    f"(NGFF before 0.4 used plain names); got {axes!r}")
    names = [a["name"] for a in axes]
    if len(set(names)) != len(names):
        raise _fail(source, "multiscales[0].axes", f"axis names must be unique, got {names}")
    types = [a.get("type") for a in axes]
    if types.count("time") > 1 or types.count("channel") > 1:
        raise _fail(source, "multiscales[0].axes", f"at most one time and one channel axis, got types {types}")
    rank = [0 if t == "time" else 2 if t == "space" else 1 for t in types]
    if rank != sorted(rank) or ("time" in types and types[0] != "time"):
        raise _fail(source, "multiscales[0].axes", f"order must be time, channel/custom, then space; got {names}")
    n_space = types.count("space")
    if n_space not in (2, 3):
        raise _fail(source, "multiscales[0].axes", f"must have 2 or 3 space axes, got {n_space} ({names})")
    if n_space != 3:
        raise InputError(f"{source}: a 2D image (space axes {[n for n, t in zip(names, types) if t == 'space']}); "
                         "selma3d needs a 3D (z, y, x) volume")
    for a in axes:
        unit = a.get("unit")
        if a.get("type") == "space" and unit is not None and unit not in SPACE_UNITS_UM:
            raise _fail(source, "multiscales[0].axes", f"axis '{a['name']}' has unit {unit!r}, not a length unit "
                        "of the spec (e.g. micrometer, nanometer, millimeter)")
    return tuple(dict(a) for a in axes)


def find_image_group(path: Path) -> Path:
    """``path`` itself, or for a bioformats2raw store (``bioformats2raw.layout``) its first image ``0/``."""
    attrs, _ = _attributes(path)
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else attrs
    if "multiscales" not in ome and "bioformats2raw.layout" in ome and node_type(path / "0") == "group":
        return path / "0"
    return path


def read_multiscale(group: str | os.PathLike, check_arrays: bool = True) -> Multiscale:
    """Validate and return the first ``multiscales`` entry of the OME-Zarr image at ``group``.

    Raises :class:`InputError` naming the metadata file and the field that breaks the spec.
    ``check_arrays`` also opens every level's array metadata (cheap: no chunk is read).
    """
    group = find_image_group(Path(group))
    attrs, source = _attributes(group)
    ome = attrs.get("ome")
    if isinstance(ome, dict):
        multiscales, version = ome.get("multiscales"), ome.get("version")
    else:
        multiscales = attrs.get("multiscales")
        version = multiscales[0].get("version") if isinstance(multiscales, list) and multiscales \
            and isinstance(multiscales[0], dict) else None
    if multiscales is None:
        raise InputError(f"{group}: Zarr group without OME 'multiscales' metadata (in {source.name})")
    if not isinstance(multiscales, list) or not multiscales or not isinstance(multiscales[0], dict):
        raise _fail(source, "multiscales", "must be a non-empty list of objects")
    ms = multiscales[0]
    if version is None and "axes" in ms:
        version = "0.4"  # some 0.4 writers leave the (then optional) version out
    version = str(version)
    if version not in SUPPORTED_VERSIONS:
        raise _fail(source, "version", f"{version!r} is not supported (selma3d reads 0.4 and 0.5); "
                    "re-save the image with a current OME-Zarr writer")
    axes = _check_axes(source, ms.get("axes"))
    datasets = ms.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise _fail(source, "multiscales[0].datasets", "must be a non-empty list")
    global_scale = (1.0,) * len(axes)
    if "coordinateTransformations" in ms:
        global_scale, _ = _transforms(source, "multiscales[0].coordinateTransformations",
                                      ms["coordinateTransformations"], len(axes))
    levels = []
    for i, ds in enumerate(datasets):
        where = f"multiscales[0].datasets[{i}]"
        if not isinstance(ds, dict) or not isinstance(ds.get("path"), str) or not ds["path"]:
            raise _fail(source, where, "needs a 'path' (the level's array)")
        if "coordinateTransformations" not in ds:
            raise _fail(source, where, "needs 'coordinateTransformations' (a 'scale')")
        scale, translation = _transforms(source, f"{where}.coordinateTransformations",
                                         ds["coordinateTransformations"], len(axes))
        levels.append(Level(ds["path"], tuple(s * g for s, g in zip(scale, global_scale)), translation))
    result = Multiscale(group=group, source=source, version=version, axes=axes, levels=tuple(levels))
    if check_arrays:
        previous = None
        for i, level in enumerate(levels):
            shape = array_shape(group / level.path)
            if len(shape) != len(axes):
                raise _fail(source, f"multiscales[0].datasets[{i}]", f"array '{level.path}' has {len(shape)} "
                            f"dimensions, the axes name {len(axes)}")
            if previous is not None and any(a > b for a, b in zip(shape, previous)):
                raise _fail(source, "multiscales[0].datasets", f"levels must go from the largest to the smallest; "
                            f"'{level.path}' {shape} is larger than the level before {previous}")
            previous = shape
    return result


def array_shape(path: Path) -> tuple[int, ...]:
    """Shape from a zarr array's metadata (v3 ``zarr.json`` or v2 ``.zarray``), no chunk read."""
    for name, key in (("zarr.json", "shape"), (".zarray", "shape")):
        meta = path / name
        if meta.is_file():
            try:
                info = json.loads(meta.read_text())
            except (OSError, ValueError) as exc:
                raise InputError(f"{meta}: unreadable Zarr metadata ({exc})") from None
            if name == "zarr.json" and info.get("node_type") != "array":
                break
            return tuple(int(s) for s in info[key])
    raise InputError(f"{path}: no Zarr array here (a level named in the OME metadata is missing)")
