"""NIfTI I/O: (z, y, x) order as SimpleITK sees it, LPS+ affines kept exactly, clear errors."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from selma3d.errors import InputError
from selma3d.io.nifti import case_name, read_nifti, write_nifti
from selma3d.io.volume import open_volume, volume_spacing

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def rotation(ax, ay, az):
    ax, ay, az = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@pytest.fixture
def array():
    return np.random.default_rng(0).integers(-1000, 1000, (5, 6, 7)).astype(np.int16)  # z, y, x all different


def test_array_order_matches_simpleitk(tmp_path, array):
    path = write_nifti(tmp_path / "case_img.nii.gz", array, spacing_zyx=(2.0, 1.0, 0.5))
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), array)
    assert sitk.ReadImage(str(path)).GetSpacing() == (0.5, 1.0, 2.0)  # ITK is (x, y, z)
    volume = read_nifti(path)
    assert np.array_equal(volume.array, array) and volume.array.dtype == np.int16
    assert volume.spacing_zyx == (2.0, 1.0, 0.5)
    assert volume_spacing(path) == (2.0, 1.0, 0.5)
    assert np.array_equal(open_volume(path)[1:3, 2, ::2], array[1:3, 2, ::2])
    assert case_name(path) == "case_img"


def test_simpleitk_written_lps_geometry_is_read_and_rewritten_exactly(tmp_path, array):
    """A file written by ITK (as the challenge's are): our affine is ITK's geometry in RAS, and a
    read → write → read cycle keeps the affine bit for bit and ITK sees the same geometry."""
    direction = rotation(20, -35, 50)
    spacing_xyz, origin_lps = (0.7, 1.3, 2.1), (12.5, -40.25, 7.0)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(origin_lps)
    image.SetDirection(tuple(direction.ravel()))
    sitk.WriteImage(image, str(tmp_path / "itk.nii.gz"))

    volume = read_nifti(tmp_path / "itk.nii.gz")
    assert np.array_equal(volume.array, array)
    np.testing.assert_allclose(volume.affine[:3, :3], LPS_TO_RAS @ direction * spacing_xyz, atol=1e-6)
    np.testing.assert_allclose(volume.affine[:3, 3], LPS_TO_RAS @ origin_lps, atol=1e-5)
    np.testing.assert_allclose(volume.spacing_zyx, spacing_xyz[::-1], rtol=1e-6)

    copy = write_nifti(tmp_path / "copy.nii.gz", volume.array, volume.affine, volume.header)
    again = read_nifti(copy)
    assert np.array_equal(again.affine, volume.affine)
    assert np.array_equal(again.array, array)
    itk_copy = sitk.ReadImage(str(copy))
    np.testing.assert_allclose(itk_copy.GetOrigin(), origin_lps, atol=1e-5)
    np.testing.assert_allclose(itk_copy.GetSpacing(), spacing_xyz, rtol=1e-6)
    np.testing.assert_allclose(np.reshape(itk_copy.GetDirection(), (3, 3)), direction, atol=1e-6)


def test_affine_given_to_write_is_kept_exactly(tmp_path, array):
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ rotation(-10, 5, 30) * (0.75, 1.5, 3.0)
    affine[:3, 3] = (-4.5, 100.25, 33.0)
    affine = affine.astype(np.float32).astype(np.float64)  # NIfTI stores the sform as float32
    path = write_nifti(tmp_path / "a.nii", array, affine=affine)
    assert np.array_equal(read_nifti(path).affine, affine)
    assert np.array_equal(np.asarray(nib.load(str(path)).header.get_sform()), affine)


def test_wrong_dimensionality_is_an_error(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 5), np.int16), np.eye(4)), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(InputError, match=r"flat.nii.gz: expected a 3D image, got 2D"):
        read_nifti(tmp_path / "flat.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 2), np.int16), np.eye(4)), str(tmp_path / "time.nii.gz"))
    with pytest.raises(InputError, match=r"time.nii.gz: expected a 3D image, got 4D"):
        read_nifti(tmp_path / "time.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6, 1), np.int16), np.eye(4)), str(tmp_path / "single.nii.gz"))
    assert read_nifti(tmp_path / "single.nii.gz").array.shape == (6, 5, 4)
    with pytest.raises(InputError, match="3D"):
        write_nifti(tmp_path / "bad.nii.gz", np.zeros((2, 3)))


def test_corrupt_file_is_named(tmp_path, array):
    good = write_nifti(tmp_path / "good.nii.gz", array)
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(InputError, match="truncated.nii.gz"):
        read_nifti(truncated)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"not a nifti header" * 10))
    with pytest.raises(InputError, match="garbage.nii.gz"):
        open_volume(garbage)
    with pytest.raises(InputError, match="garbage.nii.gz"):
        volume_spacing(garbage)
    with pytest.raises(InputError, match="missing.nii.gz"):
        read_nifti(tmp_path / "missing.nii.gz")
