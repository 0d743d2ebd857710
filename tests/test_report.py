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
    # what is drawn: the middle slice / max projections of the image, the prediction's footprint
    # in red (alpha 0.45) on each view
    import matplotlib.pyplot as plt

    pred = np.roll(gt, 2, axis=1)
    fig = overlay_figure(image, pred, gt)
    views = [(image[6], pred[6] > 0), (image.max(axis=0), pred.any(axis=0)), (image.max(axis=1), pred.any(axis=1))]
    for ax, (gray, red) in zip(fig.axes, views):
        shown, overlay = (np.asarray(im.get_array()) for im in ax.get_images())
        np.testing.assert_array_equal(shown, gray)
        np.testing.assert_array_equal(overlay[..., 0], 1.0)
        np.testing.assert_allclose(overlay[..., 3], 0.45 * red)
    plt.close(fig)
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


def _hand_dice(gt, pred) -> float:
    g, p = gt > 0, pred > 0
    return 1.0 if not (g.any() or p.any()) else 2 * np.logical_and(g, p).sum() / (g.sum() + p.sum())


def _components(mask) -> int:
    from scipy import ndimage

    return ndimage.label(mask > 0, structure=np.ones((3, 3, 3)))[1]  # 26-connectivity


def test_report_numbers_are_the_metrics_computed_independently(tmp_path):
    """``evaluate`` → metrics.json → ``build_report``: every number in the HTML tables equals
    Dice and the β0 error computed here by hand (numpy, scipy.ndimage.label)."""
    import re

    from selma3d.evaluation.challenge import evaluate

    expected = {}
    for i, (shift, speck) in enumerate([(1, False), (3, True), (0, True)]):
        name = f"cfos_{i:03d}"
        _, gt = _case(tmp_path, name, i)
        pred = np.roll(gt, shift, axis=2)
        if speck:
            pred[0, 0, 0] = 1  # an extra component: β0 error 1
        write_nifti(tmp_path / "pred" / f"{name}_img.nii.gz", pred)
        expected[name] = (_hand_dice(gt, pred), abs(_components(pred) - _components(gt)))
    metrics = evaluate(tmp_path / "pred", tmp_path / "gt", jobs=1, progress=False)
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    for case in metrics["cases"]:  # the JSON itself
        assert case["dice"] == pytest.approx(expected[case["case"]][0], abs=1e-12)
        assert case["betti0_error"] == expected[case["case"]][1]
    text = build_report(tmp_path / "metrics.json", tmp_path / "report", pred=tmp_path / "pred",
                        gt=tmp_path / "gt").read_text()

    rows = dict(re.findall(r"<tr><td>(cfos_\d{3})</td><td>cfos</td>(.*?)</tr>", text))
    assert sorted(rows) == sorted(expected)
    for name, (dice, b0) in expected.items():
        cells = re.findall(r"<td>(.*?)</td>", rows[name])  # Dice, clDice, β0 error, β1 error
        assert cells[0] == f"{dice:.3f}" and cells[2] == str(b0), (name, cells)
        assert f"{name} (cfos)  Dice {dice:.3f}" in text  # the figure caption
    dices = [d for d, _ in expected.values()]
    b0s = [b for _, b in expected.values()]
    assert len(set(f"{d:.3f}" for d in dices)) == 3  # distinct values: a swapped row would show
    summary = re.search(r"spot-like structures \(n = 3\)</h2><table><tr>.*?</tr><tr>(.*?)</tr>", text).group(1)
    assert re.findall(r"<td>(.*?)</td>", summary) == [
        f"{np.mean(dices):.3f} ± {np.std(dices, ddof=1):.3f}", f"{np.mean(b0s):.3f} ± {np.std(b0s, ddof=1):.3f}"]
