"""Issue 10, "Done when": a lab's own files to metrics, through the command line only.

A multi-page uint16 OME-TIFF stack, an OME-Zarr written by another tool (plain zarr v2 with
hand-written NGFF 0.4 metadata, a channel axis and two levels) and two NIfTI crops of a
structure called "axon" (tree) made with nibabel become a dataset (`selma3d dataset ...`), which
is checked, then pretrained on (byol), finetuned from that encoder, used to segment the whole
TIFF stack and the crops, and scored. Tiny network, two steps each: this tests the path, not the
quality.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_helpers import run_cli
from own_data_files import axon_volume, write_crop, write_foreign_ome_zarr, write_tiff_stack

pytestmark = pytest.mark.slow


def _ok(monkeypatch, capsys, *args) -> str:
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, f"selma3d {' '.join(map(str, args))} exited {code}:\n{out}\n{err}"
    assert "Traceback" not in err
    return out


def test_own_files_to_metrics_through_the_cli(tmp_path, monkeypatch, capsys):
    import torch

    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    image, label = axon_volume(seed=0)
    stack = write_tiff_stack(tmp_path / "brain1.ome.tif", image, spacing_zyx=(2.0, 1.0, 1.0))
    other, other_label = axon_volume(seed=1)
    store = write_foreign_ome_zarr(tmp_path / "brain2.ome.zarr", other, spacing_zyx=(2.0, 1.0, 1.0), version="0.4")
    crops = []
    for i, (ys, xs) in enumerate([(slice(0, 32), slice(0, 32)), (slice(32, 64), slice(32, 64))]):
        img = write_crop(tmp_path / f"crop{i}.nii.gz", other[4:28, ys, xs])
        lbl = write_crop(tmp_path / f"crop{i}_mask.nii.gz", other_label[4:28, ys, xs])
        crops.append((img, lbl))
    data = tmp_path / "D"

    _ok(monkeypatch, capsys, "dataset", "init", data)
    out = _ok(monkeypatch, capsys, "dataset", "add-volume", data, "axon", stack, "--type", "tree")
    assert "spacing 2x1x1 µm" in out and "uint16" in out  # read from the OME-XML, not given
    _ok(monkeypatch, capsys, "dataset", "add-volume", data, "axon", store, "--convert", "--quiet")
    for img, lbl in crops:
        _ok(monkeypatch, capsys, "dataset", "add-patch", data, "axon", img, lbl, "--split", "train")
    out = _ok(monkeypatch, capsys, "dataset", "check", data)
    assert "axon (tree)" in out and "2 unannotated volume(s)" in out and "train 2" in out

    meta = json.loads((data / "dataset.json").read_text())
    assert meta["structures"]["axon"] == {"type": "tree", "spacing_zyx": [2.0, 1.0, 1.0]}
    assert (data / "unannotated" / "axon" / "brain1.ome.tif").is_symlink()
    from selma3d.data.layout import load_dataset
    from selma3d.io.volume import open_volume

    volumes = load_dataset(data).unannotated_volumes()
    assert sorted(v.name for v in volumes) == ["brain1", "brain2.zarr"]
    np.testing.assert_array_equal(open_volume(data / "unannotated" / "axon" / "brain2.zarr")[:], other)

    common = ["--model-option", "features=[4,8,16]", "--patch-size", "16", "--max-steps", "2"]
    out = _ok(monkeypatch, capsys, "pretrain", "--method", "byol", "--data", data, "--out", tmp_path / "P",
              *common, "--batch-size", "2", "--num-workers", "0", "--no-progress", "--fg-threshold", "400")
    encoder = tmp_path / "P" / "encoder.pt"
    assert encoder.is_file()
    _ok(monkeypatch, capsys, "finetune", "--data", data, "--out", tmp_path / "F", "--pretrained", encoder,
        "--max-steps", "2", "--patch-size", "16", "--num-workers", "0", "--quiet", "--val-fraction", "0")
    run = json.loads((tmp_path / "F" / "run.json").read_text())
    assert run["structures"] == ["axon"] and run["type"] == "tree"

    # the whole TIFF stack, block by block, and the annotated crops
    _ok(monkeypatch, capsys, "predict", "--model", tmp_path / "F", stack, tmp_path / "mask.zarr", "--quiet",
        "--block-size", "32")
    mask = open_volume(tmp_path / "mask.zarr")
    assert mask.shape == image.shape and set(np.unique(mask[:]).tolist()) <= {0, 1}
    from selma3d.io.volume import volume_spacing

    assert volume_spacing(tmp_path / "mask.zarr") == (2.0, 1.0, 1.0)
    _ok(monkeypatch, capsys, "predict", "--model", tmp_path / "F", data / "annotated" / "train" / "axon",
        tmp_path / "preds", "--quiet")
    out = _ok(monkeypatch, capsys, "evaluate", tmp_path / "preds", data / "annotated" / "train" / "axon",
              "--out", tmp_path / "metrics.json", "--quiet")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [(c["case"], c["structure"], c["type"]) for c in metrics["cases"]] == [
        ("axon_000", "axon", "tree"), ("axon_001", "axon", "tree")]
    assert all({"dice", "cldice", "betti0_error", "betti1_error"} <= set(c) for c in metrics["cases"])
    assert "2 cases scored" in out
