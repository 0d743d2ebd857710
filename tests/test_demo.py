"""The end-to-end demo runs every sub-command as a user would and produces scored results."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_quick_demo_runs_the_whole_pipeline(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "selma3d", "demo", str(out), "--mode", "quick"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    scored = {case["structure"] for case in metrics["cases"]}
    assert scored == {"cfos", "microglia"} and not metrics["failures"]
    assert set(metrics["summary"]) == {"spot", "tree"}
    assert (out / "pretrain" / "encoder.pt").is_file()
    assert (out / "vessel_volume.zarr" / "zarr.json").is_file()
    page = (out / "report" / "index.html").read_text()
    assert "microglia" in page
    # the demo answers "did SSL help here?": its study's verdicts are in the report
    assert (out / "study" / "summary.json").is_file() and "Does self-supervised pretraining pay" in page
    assert (out / "report" / "figures" / "curves_cfos.png").is_file()

    # the numbers: each case's Dice in metrics.json and in the report equals the Dice of the
    # written prediction against the ground truth, computed here with numpy
    import re

    import numpy as np

    from selma3d.evaluation.metrics import tree_metrics
    from selma3d.io.nifti import read_nifti_array

    test_dir = out / "data" / "annotated" / "final_test"
    for case in metrics["cases"]:
        gt = read_nifti_array(test_dir / case["structure"] / f"{case['case']}_label.nii.gz") > 0
        pred = read_nifti_array(out / "predictions" / case["structure"] / f"{case['case']}_img.nii.gz") > 0
        dice = 1.0 if not (gt.any() or pred.any()) else 2 * (gt & pred).sum() / (gt.sum() + pred.sum())
        assert case["dice"] == pytest.approx(dice, abs=1e-12), case["case"]
        if case["type"] == "tree":
            assert case["cldice"] == pytest.approx(tree_metrics(gt, pred)["cldice"])
        row = re.search(rf"<tr><td>{case['case']}</td><td>{case['structure']}</td><td>(.*?)</td>", page)
        assert row.group(1) == f"{dice:.3f}"
    for kind in ("spot", "tree"):
        values = [c["dice"] for c in metrics["cases"] if c["type"] == kind]
        assert metrics["summary"][kind]["dice"]["mean"] == pytest.approx(np.mean(values))
