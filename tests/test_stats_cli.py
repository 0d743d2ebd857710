"""`selma3d stats` from the command line: every output of a spot and a tree run, resume after a
kill equal to an uninterrupted run, and a changed input or option refused on resume. (Bad inputs
are cases of tests/test_hostile_inputs.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from scipy import ndimage

from cli_helpers import run_cli
from selma3d.errors import InputError
from selma3d.io.volume import open_volume
from selma3d.io.zarr_convert import convert_to_zarr
from selma3d.objects import pipeline
from selma3d.objects.journal import JOURNAL_FILE

SHAPE = (20, 24, 28)
BLOCK = "8,8,8"
N_BLOCKS = 3 * 3 * 4


@pytest.fixture
def inputs(tmp_path):
    rng = np.random.default_rng(5)
    mask = ndimage.binary_dilation(rng.random(SHAPE) < 0.004, np.ones((3, 3, 3))).astype(np.uint8)
    mask[4:16, 12, 5:7] = 1  # a rod across two z faces
    image = rng.integers(0, 3000, SHAPE).astype(np.int16)
    paths = {"mask": convert_to_zarr(mask, tmp_path / "mask.zarr", chunks=8, spacing=(2.0, 1.0, 1.0), progress=False),
             "image": convert_to_zarr(image, tmp_path / "image.zarr", chunks=8, progress=False)}
    return paths, mask, image


def stats(monkeypatch, capsys, paths, out, *extra):
    return run_cli(monkeypatch, capsys, "stats", paths["mask"], "--image", paths["image"], "--out", out,
                   "--block-size", BLOCK, "--quiet", *extra)


def outputs(out: Path) -> dict:
    """Everything a run leaves that a user reads, as comparable values."""
    result = {"labels": np.asarray(open_volume(out / "labels.zarr")[:]),
              "density": np.asarray(zarr.open_group(str(out / "density.zarr"), mode="r")["0"][:]),
              "objects": pd.read_parquet(out / "objects.parquet"),
              "summary": pd.read_csv(out / "summary.csv")}
    if (out / "branches.parquet").exists():
        result["branches"] = pd.read_parquet(out / "branches.parquet")
        result["skeleton"] = np.asarray(open_volume(out / "skeleton.zarr")[:])
    return result


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], pd.DataFrame):
            pd.testing.assert_frame_equal(a[key], b[key])
        else:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("kind", ["spot", "tree"])
def test_stats_writes_labels_tables_density_and_summary(inputs, tmp_path, monkeypatch, capsys, kind):
    paths, mask, image = inputs
    out = tmp_path / "stats"
    code, stdout, stderr = stats(monkeypatch, capsys, paths, out, "--type", kind, "--density-factor", "4")
    assert code == 0, stderr
    assert stdout.strip() == f"statistics written to {out}"
    result = outputs(out)
    assert result["labels"].dtype == np.uint64 and result["labels"].max() == len(result["objects"]) > 0
    assert np.array_equal(result["labels"] > 0, mask > 0)
    pd.testing.assert_frame_equal(result["objects"], pd.read_csv(out / "objects.csv"), check_dtype=False)
    assert result["density"].sum() == len(result["objects"])
    totals = json.loads((out / "stats.json").read_text())
    assert totals["spacing_um"] == [2.0, 1.0, 1.0]  # read from the mask's OME metadata
    assert totals["objects"] == len(result["objects"])
    assert json.loads((out / JOURNAL_FILE).read_text())["complete"]
    assert not (out / pipeline.WORK).exists()
    if kind == "tree":
        assert np.isclose(result["branches"]["length_um"].sum(), totals["length_um"]) and totals["length_um"] > 0
        assert (result["skeleton"] <= mask).all()


def test_kill_and_resume_equals_an_uninterrupted_run(inputs, tmp_path, monkeypatch, capsys):
    paths, mask, image = inputs
    assert stats(monkeypatch, capsys, paths, tmp_path / "full", "--type", "tree")[0] == 0
    full = outputs(tmp_path / "full")

    scanned, written, kills = [], [], []
    real_moments, real_relabel = pipeline.block_moments, pipeline.relabel_block

    def moments_then_die(labels, n, start, image=None):
        if len(scanned) == 20 and "scan" not in kills:
            kills.append("scan")
            raise KeyboardInterrupt  # a kill half-way through the scan
        scanned.append(tuple(start))
        return real_moments(labels, n, start, image)

    def relabel_then_die(mask, block, lut):
        if len(written) == 7 and "labels" not in kills:
            kills.append("labels")
            raise KeyboardInterrupt  # a kill half-way through writing the labels
        written.append(block.index)
        return real_relabel(mask, block, lut)

    monkeypatch.setattr(pipeline, "block_moments", moments_then_die)
    monkeypatch.setattr(pipeline, "relabel_block", relabel_then_die)
    out = tmp_path / "resumed"
    for _ in range(2):
        code, _, stderr = stats(monkeypatch, capsys, paths, out, "--type", "tree")
        assert code == 130 and "interrupted" in stderr
        with pytest.raises(InputError):  # no OME metadata yet: not a finished image
            open_volume(out / "labels.zarr")
        assert not (out / "stats.json").exists() and not json.loads((out / JOURNAL_FILE).read_text())["complete"]
    assert kills == ["scan", "labels"] and len(scanned) == N_BLOCKS and len(written) == 7

    code, _, stderr = stats(monkeypatch, capsys, paths, out, "--type", "tree")
    assert code == 0, stderr
    assert len(set(scanned)) == len(scanned) == N_BLOCKS  # each block scanned once over the three runs
    assert len(set(written)) == len(written) == N_BLOCKS  # and its labels written once
    assert_same(outputs(out), full)

    # finished: not recomputed; another option or input is refused unless --overwrite
    assert stats(monkeypatch, capsys, paths, out, "--type", "tree")[0] == 0
    assert len(scanned) == N_BLOCKS
    code, _, stderr = stats(monkeypatch, capsys, paths, out, "--type", "tree", "--density-factor", "2")
    assert code == 1 and "another options" in stderr and "--overwrite" in stderr
    other = dict(paths, image=paths["mask"])
    code, _, stderr = stats(monkeypatch, capsys, other, out, "--type", "tree")
    assert code == 1 and "another image" in stderr
    code, _, stderr = stats(monkeypatch, capsys, paths, out, "--overwrite")
    assert code == 0, stderr
    assert json.loads((out / "stats.json").read_text())["kind"] == "spot"


def test_tiff_slice_folder_mask(inputs, tmp_path, monkeypatch, capsys):
    from selma3d.io.tiffstack import write_slices

    paths, mask, image = inputs
    folder = tmp_path / "mask_slices"
    write_slices(folder, list(mask))
    code, _, stderr = run_cli(monkeypatch, capsys, "stats", folder, "--out", tmp_path / "a", "--block-size", BLOCK,
                              "--quiet")
    assert code == 0, stderr
    assert stats(monkeypatch, capsys, paths, tmp_path / "b")[0] == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "objects.csv").iloc[:, :4],
                                  pd.read_csv(tmp_path / "b" / "objects.csv").iloc[:, :4])
