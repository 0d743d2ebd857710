"""``selma3d export``: a bioimage.io model package that validates and whose own test passes."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from cli_helpers import run_cli

pytest.importorskip("bioimageio.spec", reason="model export needs the bioimageio extra")


@pytest.fixture(scope="module")
def package(tiny_run, tmp_path_factory):
    from selma3d.export.bioimageio import export_run

    return export_run(tiny_run, tmp_path_factory.mktemp("export") / "model.zip", authors=["Test Lab"])


def test_package_validates_and_holds_the_runs_pipeline(package, tiny_run):
    from bioimageio.spec import load_description

    from selma3d.data.normalize import Normalization
    from selma3d.inference.predict import load_run, predict_volume

    descr = load_description(str(package))
    assert descr.validation_summary.status == "valid-format", descr.validation_summary.format()
    pre = [p.id for p in descr.inputs[0].preprocessing]
    assert pre[1:4] == ["scale_range", "scale_linear", "clip"]
    run = load_run(tiny_run, device="cpu")
    scale = descr.inputs[0].preprocessing[1].kwargs
    assert (scale.min_percentile, scale.max_percentile) == (run.normalization.low, run.normalization.high)
    post = descr.outputs[0].postprocessing
    assert [p.id for p in post][:2] == ["sigmoid", "binarize"] and post[1].kwargs.threshold == run.threshold
    with zipfile.ZipFile(package) as z:
        names = set(z.namelist())
        assert {"rdf.yaml", "weights.torchscript.pt", "test_input.npy", "test_output.npy", "README.md"} <= names
        with z.open("test_input.npy") as f:
            test_input = np.load(f)
        with z.open("test_output.npy") as f:
            test_output = np.load(f)
        assert b"noise floor" in z.read("README.md")
    # the test output is selma3d's own prediction of the crop (plain percentiles: the package's normalization)
    plain = Normalization(low=run.normalization.low, high=run.normalization.high, noise_floor=None)
    expected = predict_volume(run.model, test_input[0, 0], run.patch_size, threshold=run.threshold, normalize=plain)
    assert test_input.shape[2:] == tuple(run.patch_size)
    np.testing.assert_array_equal(test_output[0, 0], expected)


@pytest.mark.slow
def test_package_test_passes_with_bioimageio_core(package):
    core = pytest.importorskip("bioimageio.core", reason="the package test needs bioimageio.core")
    summary = core.test_model(str(package))
    assert summary.status == "passed", summary.format()


def test_cli_export_and_errors(monkeypatch, capsys, tiny_run, tmp_path):
    code, out, err = run_cli(monkeypatch, capsys, "export", "--model", tiny_run, "--out", tmp_path / "m.zip",
                             "--author", "A. Person", "--quiet")
    assert code == 0 and out == "" and (tmp_path / "m.zip").is_file(), err
    code, _, err = run_cli(monkeypatch, capsys, "export", "--model", tmp_path, "--out", tmp_path / "x.zip")
    assert code == 1 and err.startswith("error:") and "model.pt missing" in err and len(err.splitlines()) == 1
    code, _, err = run_cli(monkeypatch, capsys, "export", "--model", tiny_run, "--out", tmp_path / "model.tar")
    assert code == 1 and "*.zip" in err
