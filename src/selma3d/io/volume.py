"""One entry point for every volume format selma3d reads: TIFF slice folder, OME-Zarr, NIfTI.

All of them come back as (z, y, x) array-likes with ``shape``, ``dtype``, ``ndim`` and numpy basic
slicing that returns ``np.ndarray`` — the protocol the sampling and inference code relies on.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from .nifti import is_nifti, read_nifti


def is_zarr(path: str | os.PathLike) -> bool:
    """A zarr v3 store/array (folder with ``zarr.json``) or a folder named ``*.zarr``."""
    path = Path(path)
    return path.suffix == ".zarr" or (path.is_dir() and (path / "zarr.json").is_file())


def open_volume(path: str | os.PathLike):
    """Open ``path`` lazily as a (z, y, x) volume.

    - a folder of TIFF slices → :class:`~selma3d.io.tiffstack.TiffStack` (lazy);
    - an OME-Zarr store → its level 0 (a ``zarr.Array``, lazy); a path to one level → that level
      (zarr slicing accepts positive steps only);
    - a ``.nii`` / ``.nii.gz`` file → a numpy array (NIfTI patches are small and gzip is not
      seekable, so they are read whole).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if is_nifti(path):
        return read_nifti(path).array
    if is_zarr(path):
        from .zarrstore import open_zarr_volume

        return open_zarr_volume(path)
    if path.is_dir():
        from .tiffstack import TiffStack

        return TiffStack(path)
    raise InputError(f"{path}: not a volume selma3d can read "
                     "(expected a folder of TIFF slices, a .zarr store or a .nii/.nii.gz file)")


def volume_spacing(path: str | os.PathLike) -> tuple[float, float, float] | None:
    """Voxel spacing (z, y, x) recorded in the file (OME-Zarr scale, NIfTI header), else ``None``."""
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

        return zarr_spacing(path)
    return None

