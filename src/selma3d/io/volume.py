"""One entry point for every volume format selma3d reads.

TIFF slice folders, multi-page TIFF / OME-TIFF files, OME-Zarr (zarr v3 / NGFF 0.5 or zarr v2 /
NGFF 0.4, from selma3d or any other writer) and NIfTI all come back as (z, y, x) array-likes with
``shape``, ``dtype``, ``ndim`` and numpy basic slicing that returns ``np.ndarray`` — the protocol
the sampling and inference code relies on. Every supported dtype (uint8, uint16, int16, float32,
...) is returned as stored; networks see them all through the same percentile normalization
(:mod:`selma3d.data.normalize`), which does not depend on the dtype's range.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from .nifti import is_nifti, read_nifti
from .tiffvolume import is_tiff_file

#: image dtypes selma3d is tested with (camera data, stored microscopy, float exports)
SUPPORTED_DTYPES = tuple(np.dtype(d) for d in ("uint8", "uint16", "int16", "float32"))


def is_zarr(path: str | os.PathLike) -> bool:
    """A zarr store/array: a folder with ``zarr.json`` (v3), ``.zarray``/``.zgroup`` (v2), or named ``*.zarr``."""
    path = Path(path)
    if path.suffix == ".zarr":
        return True
    return path.is_dir() and any((path / name).is_file() for name in ("zarr.json", ".zarray", ".zgroup"))


def _no_levels(path: Path, level: int) -> None:
    if level:
        raise InputError(f"{path}: has no resolution levels; --level {level} applies to OME-Zarr and "
                         "pyramidal TIFF files only")


def open_volume(path: str | os.PathLike, level: int = 0):
    """Open ``path`` lazily as a (z, y, x) volume.

    - a folder of TIFF slices → :class:`~selma3d.io.tiffstack.TiffStack` (lazy);
    - a multi-page TIFF / OME-TIFF file → memory-mapped or read through tifffile's Zarr interface
      (:func:`~selma3d.io.tiffvolume.open_tiff_volume`); ``level`` picks a pyramid level;
    - an OME-Zarr image → its level ``level`` (default 0, full resolution); a path to one level →
      that level (zarr slicing accepts positive steps only);
    - a ``.nii`` / ``.nii.gz`` file → a numpy array (NIfTI patches are small and gzip is not
      seekable, so they are read whole).
    """
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise InputError(f"{path}: link to {os.readlink(path)}, which no longer exists")
        raise InputError(f"{path}: no such file or folder")
    if level < 0:
        raise InputError(f"--level must be 0 or more, got {level}")
    if is_nifti(path):
        _no_levels(path, level)
        return read_nifti(path).array
    if is_zarr(path):
        from .zarrstore import open_zarr_volume

        return open_zarr_volume(path, level=level)
    if is_tiff_file(path):
        from .tiffvolume import open_tiff_volume

        return open_tiff_volume(path, level=level)
    if path.is_dir():
        from .tiffstack import TiffStack

        _no_levels(path, level)
        return TiffStack(path)
    raise InputError(f"{path}: not a volume selma3d can read (expected a folder of TIFF slices, a "
                     "multi-page .tif/.ome.tif file, an OME-Zarr store or a .nii/.nii.gz file)")


def volume_spacing(path: str | os.PathLike, level: int = 0) -> tuple[float, float, float] | None:
    """Voxel spacing (z, y, x) in micrometers recorded in the file (OME-Zarr scale, OME-TIFF
    PhysicalSize, ImageJ spacing/resolution, NIfTI zooms), else ``None`` (TIFF slice folders,
    plain TIFF files).

    NIfTI zooms are taken as micrometers whatever ``xyzt_units`` says: ITK writes "mm" for every
    image, and SELMA3D's patches hold micrometer values under it.
    """
    path = Path(path)
    if is_nifti(path):
        import nibabel as nib

        try:
            zooms = nib.load(str(path)).header.get_zooms()  # header only, no voxel data
        except Exception as exc:
            raise InputError(f"{path}: cannot read NIfTI header ({type(exc).__name__}: {exc})") from None
        return (float(zooms[2]), float(zooms[1]), float(zooms[0])) if len(zooms) >= 3 else None
    if is_zarr(path):
        from .zarrstore import zarr_spacing

        return zarr_spacing(path, level=level)
    if is_tiff_file(path):
        from .tiffvolume import tiff_spacing

        return tiff_spacing(path, level=level)
    return None
