"""The HTML report and its figures: real files from real arrays."""

import json

import numpy as np
import pytest

from selma3d.errors import InputError
from selma3d.io.nifti import write_nifti
from selma3d.report.figures import curve_figure, overlay_figure
from selma3d.report.html import build_report, find_case_file


def _case(tmp_path, name, seed):
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 10, (12, 20, 24)).astype(np.int16)
    gt = np.zeros(image.shape, np.uint8)
    gt[4:8, 5:10, 6:12] = 1
    image[gt > 0] += 400
    write_nifti(tmp_path / "gt" / f"{name}_img.nii.gz", image)
    write_nifti(tmp_path / "gt" / f"{name}_label.nii.gz", gt)
    write_nifti(tmp_path / "pred" / f"{name}_img.nii.gz", np.roll(gt, 1, axis=2))
    return image, gt


def test_overlay_figure_writes_png_and_checks_shapes(tmp_path):
    image, gt = _case(tmp_path, "cfos_000", 0)
    png = overlay_figure(image, gt, gt, tmp_path / "fig.png", title="x")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="shape"):
        overlay_figure(image, gt[:-1], None, tmp_path / "bad.png")


def test_curve_figure_plots_csv(tmp_path):
    csv = tmp_path / "curve.csv"
    csv.write_text("step,loss,val_dice\n0,1.0,\n1,0.8,0.3\n2,0.6,0.5\n")
    png = curve_figure(csv, tmp_path / "curve.png")
    assert png.stat().st_size > 1000


def test_build_report_lists_metrics_cases_and_figures(tmp_path):
    _case(tmp_path, "cfos_000", 0)
    _case(tmp_path, "microglia_000", 1)
    metrics = {
        "cases": [
            {"case": "cfos_000", "structure": "cfos", "type": "spot", "dice": 0.5, "betti0_error": 0},
            {"case": "microglia_000", "structure": "microglia", "type": "tree", "dice": 0.25,
             "cldice": 0.4, "betti0_error": 1, "betti1_error": 0},
        ],
        "summary": {"spot": {"dice": {"mean": 0.5, "std": None, "n": 1}},
                    "tree": {"dice": {"mean": 0.25, "std": None, "n": 1}}},
        "failures": [{"case": "cfos_009", "error": "prediction missing"}],
    }
    mj = tmp_path / "metrics.json"
    mj.write_text(json.dumps(metrics))
    index = build_report(mj, tmp_path / "report", pred=tmp_path / "pred", gt=tmp_path / "gt")
    text = index.read_text()
    assert "0.500" in text and "0.250" in text and "cfos_009" in text
    assert (tmp_path / "report" / "figures" / "cfos_000.png").is_file()
    assert (tmp_path / "report" / "figures" / "microglia_000.png").is_file()
    assert find_case_file(tmp_path / "gt", "cfos_000", ("_label",)).name == "cfos_000_label.nii.gz"


def test_build_report_rejects_non_metrics_file(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="m.json"):
        build_report(bad, tmp_path / "r")
