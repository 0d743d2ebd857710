"""Image/label and prediction/ground-truth pairs on different voxel grids (issue 12, item 7)."""

from __future__ import annotations

import numpy as np
import pytest

from selma3d.errors import InputError
from selma3d.io.nifti import default_affine, grid_difference, read_nifti, write_nifti


def _mask(seed=0):
    rng = np.random.default_rng(seed)
    mask = np.zeros((12, 16, 16), np.uint8)
    mask[3:8, 4:10, 5:11] = 1
    return mask | (rng.random(mask.shape) > 0.97).astype(np.uint8)


def test_grid_difference_names_shape_and_affine(tmp_path):
    a = write_nifti(tmp_path / "a.nii.gz", _mask(), spacing_zyx=(2.0, 1.0, 1.0))
    b = write_nifti(tmp_path / "b.nii.gz", _mask(), spacing_zyx=(2.0, 1.0, 1.0))
    c = write_nifti(tmp_path / "c.nii.gz", _mask(), affine=default_affine((2.0, 1.0, 1.0)) @ np.diag([-1, 1, 1, 1]))
    d = write_nifti(tmp_path / "d.nii.gz", _mask()[:, :8])
    assert grid_difference(read_nifti(a), read_nifti(b)) is None
    assert "affines differ" in grid_difference(read_nifti(a), read_nifti(c))
    assert "shapes" in grid_difference(read_nifti(a), read_nifti(d))


def test_finetuning_refuses_a_label_on_another_grid(tmp_path):
    from selma3d.data.layout import AnnotatedCase
    from selma3d.training.finetune_data import load_case

    image = write_nifti(tmp_path / "x_img.nii.gz", _mask().astype(np.int16) * 1000, spacing_zyx=(2.0, 1.6, 1.6))
    label = write_nifti(tmp_path / "x_label.nii.gz", _mask(), spacing_zyx=(2.0, 1.0, 1.0))
    case = AnnotatedCase(split="train", structure="cfos", case="x", image=image, label=label)
    with pytest.raises(InputError, match="x_label.nii.gz: not on its image's voxel grid"):
        load_case(case, "spot")
    same = write_nifti(tmp_path / "y_label.nii.gz", _mask(), spacing_zyx=(2.0, 1.6, 1.6))
    assert load_case(AnnotatedCase(split="train", structure="cfos", case="x", image=image, label=same), "spot")


def test_evaluation_warns_about_a_prediction_on_another_grid(tmp_path):
    from selma3d.evaluation.challenge import evaluate

    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    write_nifti(gt / "cfos_001_label.nii.gz", _mask(), spacing_zyx=(2.0, 1.0, 1.0))
    write_nifti(pred / "cfos_001.nii.gz", _mask(), spacing_zyx=(1.0, 1.0, 1.0))
    write_nifti(gt / "cfos_002_label.nii.gz", _mask(1), spacing_zyx=(2.0, 1.0, 1.0))
    write_nifti(pred / "cfos_002.nii.gz", _mask(1), spacing_zyx=(2.0, 1.0, 1.0))
    result = evaluate(pred, gt, jobs=1, progress=False)
    by_case = {c["case"]: c for c in result["cases"]}
    assert [w["code"] for w in by_case["cfos_001"]["warnings"]] == ["grid_mismatch"]
    assert by_case["cfos_002"]["warnings"] == []
    assert by_case["cfos_001"]["dice"] == 1.0  # still scored voxel by voxel, as the official code does
    assert any("cfos_001" in w and "voxel grid" in w for w in result["warnings"])
