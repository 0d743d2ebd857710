"""One multi-page TIFF / OME-TIFF / ImageJ hyperstack file as a lazy (z, y, x) volume.

Stacks saved by Fiji, microscope software or ``tifffile`` hold every z plane as a page of one
file. Uncompressed, contiguous stacks are memory-mapped (``tifffile.memmap``: a read touches only
the bytes of its region); anything else (compressed, tiled, strip-chopped, pyramidal) is read
through tifffile's Zarr interface (``TiffFile.aszarr``), which decodes only the pages and tiles an
index covers. Singleton axes (one channel, one time point) are dropped; more than one channel or
time point is refused, since selma3d segments one channel at a time.

Voxel spacing comes from the file where it is recorded: OME-XML ``PhysicalSizeZ/Y/X`` (with
their units), else ImageJ's ``spacing`` (z) and the X/YResolution tags (y, x).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..errors import InputError
from .axes import ZYXView
from .ngff import SPACE_UNITS_UM

TIFF_FILE_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")
#: tifffile axis codes that can stand for the stacking (z) axis of a plain multi-page file
DEPTH_AXES = "ZIQ"


def is_tiff_file(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.name.lower().endswith(TIFF_FILE_SUFFIXES) and not path.is_dir()


def _open(path: Path):
    import tifffile

    try:
        return tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises several kinds for broken files
        raise InputError(f"{path}: cannot read TIFF ({type(exc).__name__}: {exc})") from None


def _layout(path: Path, axes: str, shape: tuple[int, ...]) -> tuple[int | None, ...]:
    """Per axis: ``None`` for z/y/x, ``0`` for a dropped singleton; refuses other layouts."""
    if not axes.endswith("YX"):
        raise InputError(f"{path}: image axes are {axes!r} {shape}; expected the last two to be Y and X")
    fixed: list[int | None] = []
    depth = []
    for i, (ax, n) in enumerate(zip(axes[:-2], shape[:-2])):
        if ax in DEPTH_AXES and n > 1:
            depth.append(i)
            fixed.append(None)
        elif n == 1:
            fixed.append(0)
        else:
            what = {"C": "channels", "S": "samples per pixel (RGB?)", "T": "time points"}.get(ax, f"entries on axis {ax}")
            raise InputError(f"{path}: has {n} {what} (axes {axes!r}, shape {shape}); selma3d reads one 3D "
                             "grayscale volume: save a single channel and time point per file")
    if not depth:
        raise InputError(f"{path}: a single 2D image (axes {axes!r}, shape {shape}), not a 3D stack")
    if len(depth) > 1:
        raise InputError(f"{path}: more than one stacking axis (axes {axes!r}, shape {shape}); "
                         "expected one z axis")
    return tuple(fixed) + (None, None)


def open_tiff_volume(path: str | os.PathLike, level: int = 0):
    """Level ``level`` (0: full resolution) of the first image series of a TIFF file, lazily."""
    path = Path(path)
    tif = _open(path)
    try:
        series = tif.series[0]
        levels = series.levels
        if not 0 <= level < len(levels):
            raise InputError(f"{path}: has {len(levels)} resolution level(s); level {level} does not exist")
        chosen = levels[level]
        axes, shape = chosen.axes, tuple(int(s) for s in chosen.shape)
        fixed = _layout(path, axes, shape)
        dtype = np.dtype(chosen.dtype)
        if level == 0 and chosen.dataoffset is not None and dtype.isnative:
            import tifffile

            base = tifffile.memmap(path, series=0, mode="r")
            tif.close()
            view = base[tuple(slice(None) if f is None else f for f in fixed)]
            return ZYXView(view, (None, None, None), path=path)
        import zarr

        base = zarr.open_array(tif.aszarr(series=0, level=level), mode="r")
        return ZYXView(base, fixed, path=path, keep=tif)
    except InputError:
        tif.close()
        raise
    except Exception as exc:
        tif.close()
        raise InputError(f"{path}: cannot read TIFF image data ({type(exc).__name__}: {exc})") from None


def _unit_um(unit: str | None, path: Path, what: str) -> float:
    if unit in (None, ""):
        return 1.0
    unit = str(unit).strip()
    factor = SPACE_UNITS_UM.get(unit) or SPACE_UNITS_UM.get(unit.lower())
    if factor is None:
        raise InputError(f"{path}: {what} unit {unit!r} is not a length unit selma3d knows "
                         "(µm, nm, mm, micrometer ...)")
    return factor


def _ome_spacing(path: Path, xml: str) -> tuple[float, float, float] | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise InputError(f"{path}: unreadable OME-XML metadata ({exc})") from None
    pixels = root.find(".//{*}Image/{*}Pixels")
    if pixels is None:
        return None
    values = []
    for axis in "ZYX":
        size = pixels.get(f"PhysicalSize{axis}")
        if size is None:
            return None
        try:
            value = float(size) * _unit_um(pixels.get(f"PhysicalSize{axis}Unit", "µm"), path, f"PhysicalSize{axis}")
        except ValueError:
            raise InputError(f"{path}: OME-XML PhysicalSize{axis}={size!r} is not a number") from None
        values.append(value)
    return tuple(values)  # type: ignore[return-value]


def _imagej_spacing(path: Path, tif) -> tuple[float, float, float] | None:
    meta = tif.imagej_metadata or {}
    if "spacing" not in meta:
        return None
    page = tif.pages.first
    try:
        factor = _unit_um(meta.get("unit"), path, "ImageJ")
    except InputError:
        return None  # 'pixel' or similar: no physical size recorded
    out = [float(meta["spacing"]) * factor]
    for tag in ("YResolution", "XResolution"):
        value = page.tags.get(tag)
        if value is None:
            return None
        num, den = value.value
        if not num:
            return None
        out.append(float(den) / float(num) * factor)
    return tuple(out)  # type: ignore[return-value]


def tiff_spacing(path: str | os.PathLike, level: int = 0) -> tuple[float, float, float] | None:
    """Voxel spacing (z, y, x) in micrometers recorded in an OME-TIFF or ImageJ TIFF (of level
    ``level``: level 0's spacing times the shape ratio), else ``None``."""
    path = Path(path)
    with _open(path) as tif:
        spacing = None
        if tif.is_ome and tif.ome_metadata:
            spacing = _ome_spacing(path, tif.ome_metadata)
        if spacing is None and tif.is_imagej:
            spacing = _imagej_spacing(path, tif)
        if spacing is None or level == 0:
            return spacing
        levels = tif.series[0].levels
        base, chosen = levels[0], levels[min(level, len(levels) - 1)]
        ratio = [a / b for a, b in zip(base.shape, chosen.shape)]
        ax = base.axes
        picks = [ax.index(c) for c in "YX"]
        depth = [i for i, c in enumerate(ax[:-2]) if c in DEPTH_AXES and base.shape[i] > 1]
        scale = [ratio[depth[0]] if depth else 1.0] + [ratio[i] for i in picks]
        return tuple(s * r for s, r in zip(spacing, scale))  # type: ignore[return-value]
