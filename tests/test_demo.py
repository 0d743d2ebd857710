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
