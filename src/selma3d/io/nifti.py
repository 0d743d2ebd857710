"""NIfTI patches in (z, y, x) order, keeping the file's affine (LPS+) exactly.

SELMA3D's annotated patches are int16 NIfTI in LPS+. The official evaluator reads them with
SimpleITK, whose ``GetArrayFromImage`` returns (z, y, x); nibabel returns (x, y, z), so we
transpose. We never reorient to RAS: ``as_closest_canonical`` flips axes and changes skeletons.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InputError
from ..utils.atomic import atomic_path

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).endswith(NIFTI_SUFFIXES)


def case_name(path: str | os.PathLike) -> str:
    """File name without the NIfTI suffix (``a/b/c_img.nii.gz`` → ``c_img``)."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass
class NiftiVolume:
    """A NIfTI image as a (z, y, x) array plus what is needed to write it back unchanged."""

    array: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        sx, sy, sz = (float(v) for v in self.header.get_zooms()[:3])
        return (sz, sy, sx)


def _load_verified(path: Path) -> nib.Nifti1Image:
    """Load ``path``; a ``.nii.gz`` is decompressed whole first so that gzip checks its CRC-32 and
    length. (nibabel reads only the bytes the image needs and stops before the gzip trailer, so a
    stream with zeroed bytes in the middle would otherwise load as valid, with wrong voxels.)"""
    if not str(path).endswith(".gz"):
        return nib.load(str(path))
    import gzip
    import zlib

    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise InputError(f"{path}: cannot read NIfTI: corrupt gzip stream ({exc}); the file is damaged or truncated "
                         "(check it with `gzip -t`)") from None
    return nib.Nifti1Image.from_bytes(raw)


def read_nifti(path: str | os.PathLike, dtype=None) -> NiftiVolume:
    """Read a 3D NIfTI file as (z, y, x). Raises :class:`InputError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such NIfTI file")
    try:
        img = _load_verified(path)
        data = np.asarray(img.dataobj)
    except InputError:
        raise
    except Exception as exc:  # nibabel raises many kinds for corrupt files
        raise InputError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D image, got {data.ndim}D with shape {data.shape}")
    array = np.ascontiguousarray(data.transpose(2, 1, 0))
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return NiftiVolume(array=array, affine=np.array(img.affine, dtype=np.float64), header=img.header.copy())


def grid_difference(a: "NiftiVolume", b: "NiftiVolume", atol: float = 1e-3) -> str | None:
    """How two volumes' voxel grids differ (shape or affine beyond ``atol``), or ``None``.

    A label drawn on another grid than its image (resampled, flipped, another origin) still has
    the right shape often enough to be accepted silently, and then teaches or scores the wrong
    voxels.
    """
    if a.array.shape != b.array.shape:
        return f"shapes {a.array.shape} vs {b.array.shape}"
    if not np.allclose(a.affine, b.affine, atol=atol):
        worst = float(np.abs(a.affine - b.affine).max())
        return f"affines differ (largest entry difference {worst:.4g})"
    return None


def read_nifti_array(path: str | os.PathLike, dtype=None) -> np.ndarray:
    return read_nifti(path, dtype=dtype).array


def default_affine(spacing_zyx=(1.0, 1.0, 1.0)) -> np.ndarray:
    """An LPS+ affine as ITK writes it for an identity direction: diag(-sx, -sy, sz)."""
    sz, sy, sx = spacing_zyx
    return np.diag([-float(sx), -float(sy), float(sz), 1.0])


def write_nifti(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray | None = None,
                header: nib.Nifti1Header | None = None, spacing_zyx=(1.0, 1.0, 1.0)) -> Path:
    """Write a (z, y, x) array; the affine is stored exactly (sform and qform).

    Written to a temporary name and renamed, so an interrupted write never leaves a file
    that looks complete.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.ndim != 3:
        raise InputError(f"{path}: can only write 3D arrays, got shape {array.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if affine is None:
        affine = default_affine(spacing_zyx)
    affine = np.asarray(affine, dtype=np.float64)
    data = array.transpose(2, 1, 0)
    if header is not None:
        header = header.copy()
        header.set_data_dtype(data.dtype)
        header["scl_slope"] = np.nan  # raw values: no rescaling on read
        header["scl_inter"] = np.nan
    img = nib.Nifti1Image(data, affine, header=header)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.set_data_dtype(data.dtype)
    suffix = ".nii.gz" if str(path).endswith(".nii.gz") else ".nii"
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, str(tmp))
    return path
