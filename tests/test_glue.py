"""The finetune/predict glue checked against independent oracles: injected validation scores
for the best checkpoint, ``metrics.dice`` for validation Dice, a hand-written flip/threshold/
small-object pipeline (scikit-image) for the ``predict`` flags, and a 1×1×1 convolution whose
stitched sliding-window output must equal its forward pass on the whole volume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from selma3d.io.nifti import read_nifti, write_nifti

TINY_UNET = {"features": [4, 8, 16]}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


class PointwiseConv(nn.Module):
    """A 1×1×1 convolution: every output voxel depends on its own input voxel only, so any
    correct tiling of the volume into windows gives back the whole-volume forward pass."""

    def __init__(self, weight: float = 3.0, bias: float = -0.5):
        super().__init__()
        self.conv = nn.Conv3d(1, 1, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.fill_(weight)
            self.conv.bias.fill_(bias)

    def forward(self, x):
        return self.conv(x)


# --------------------------------------------------------------------------- stitching

@pytest.mark.parametrize("shape,patch,overlap", [((40, 37, 21), (16, 16, 16), 0.5),
                                                 ((23, 50, 9), (8, 16, 16), 0.25),
                                                 ((16, 16, 16), (16, 16, 16), 0.0)])
def test_stitched_pointwise_model_equals_its_whole_volume_forward_pass(shape, patch, overlap):
    from selma3d.inference.predict import predict_probabilities

    model = PointwiseConv().eval()
    image = np.random.default_rng(3).uniform(-1, 1, shape).astype(np.float32)
    with torch.no_grad():
        whole = torch.sigmoid(model(torch.from_numpy(image)[None, None]))[0, 0].numpy()
    stitched = predict_probabilities(model, image, patch, overlap=overlap, normalize=False)
    assert stitched.shape == shape
    np.testing.assert_allclose(stitched, whole, rtol=0, atol=2e-6)
    # flips commute with a pointwise model: TTA must give the same map back
    tta = predict_probabilities(model, image, patch, overlap=overlap, tta_flips=True, normalize=False)
    np.testing.assert_allclose(tta, whole, rtol=0, atol=2e-6)


# --------------------------------------------------------------------------- validation

def test_validation_dice_is_metrics_dice_of_the_stitched_thresholded_prediction():
    from selma3d.evaluation.metrics import dice
    from selma3d.training.finetune import SegmentationModule, summarize_validation

    model = PointwiseConv(weight=4.0, bias=-1.0)
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (20, 24, 28)).astype(np.float32)
    label = (rng.uniform(size=image.shape) > 0.6).astype(np.uint8)
    threshold = 0.7
    module = SegmentationModule(model, patch_size=(16, 16, 16), threshold=threshold, overlap=0.5)
    module.on_validation_epoch_start()
    batch = {"image": torch.from_numpy(image)[None, None], "label": torch.from_numpy(label)[None, None],
             "name": "case_0", "structure": "cfos", "type": "spot"}
    module.eval()
    module.validation_step(batch, 0)

    # oracle: the pointwise model on the whole volume (== the stitched map, test above), > threshold
    prob = 1 / (1 + np.exp(-(4.0 * image.astype(np.float64) - 1.0)))
    expected = dice(label, prob > threshold)
    assert 0.05 < expected < 0.95  # a score that a wrong threshold or stitching would change
    (row,) = module._val_rows
    assert row["dice"] == pytest.approx(expected, abs=1e-12)
    assert row["dice"] != pytest.approx(dice(label, prob > 0.5), abs=1e-3)
    assert summarize_validation(module._val_rows)["val_dice"] == pytest.approx(expected, abs=1e-12)


def test_best_checkpoint_is_the_step_with_the_highest_injected_validation_dice(tiny_dataset, tmp_path,
                                                                              monkeypatch):
    """Validation runs after every step; its Dice is injected (0.2, 0.7, 0.5, 0.7): model.pt must
    hold the weights of step 2 (a later tie does not replace the best) and say so."""
    import selma3d.training.finetune as ft
    import selma3d.training.finetune.module as ft_module

    scores = {1: 0.2, 2: 0.7, 3: 0.5, 4: 0.7}
    snapshots: dict[int, dict] = {}
    original_step = ft.SegmentationModule.validation_step

    def recording_step(self, batch, batch_idx):
        step = int(self.global_step)
        snapshots[step] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        monkeypatch.setattr(ft_module, "validation_metrics", lambda kind, gt, pred: {"dice": scores[step]})
        return original_step(self, batch, batch_idx)

    monkeypatch.setattr(ft.SegmentationModule, "validation_step", recording_step)
    out = ft.finetune(ft.FinetuneConfig(
        data=str(tiny_dataset), out=str(tmp_path / "run"), model_options=dict(TINY_UNET), max_steps=4,
        batch_size=2, patch_size=(16, 16, 16), checkpoint_every=1, val_every=1, val_fraction=0.5,
        structures=["cfos"], threshold=0.5, lr=1e-2, progress=False, num_workers=0))

    assert sorted(snapshots) == [1, 2, 3, 4]
    saved = torch.load(out / "model.pt", weights_only=False)
    assert saved["step"] == 2 and saved["val_dice"] == pytest.approx(0.7)
    for key, value in saved["state_dict"].items():
        assert torch.equal(value, snapshots[2][key]), key
    assert any(not torch.equal(snapshots[2][k], snapshots[4][k]) for k in snapshots[2])
    info = json.loads((out / "run.json").read_text())
    assert info["best"] == {"step": 2, "val_dice": pytest.approx(0.7)}
    curve = {int(float(r["step"])): float(r["val_dice"])
             for r in __import__("csv").DictReader(open(out / "curves.csv")) if r.get("val_dice")}
    assert curve == pytest.approx(scores)


# --------------------------------------------------------------------------- predict flags

def _expected_mask(run_dir, array, tta: bool, threshold: float, min_size: int) -> np.ndarray:
    """What ``predict`` should write, by hand: the run's normalization, the model on the whole
    patch (it is one window), the mean of the 8 mirrored predictions mirrored back, ``> threshold``,
    then scikit-image's small-object removal with 26-connectivity (objects of < min_size voxels)."""
    from skimage.morphology import remove_small_objects

    from selma3d.inference.predict import load_run

    run = load_run(run_dir, device="cpu")
    x = torch.from_numpy(run.normalization(array))[None, None]
    flips = [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)] if tta else [()]
    with torch.no_grad():
        probs = sum(torch.flip(torch.sigmoid(run.model(torch.flip(x, a))), a) for a in flips) / len(flips)
    mask = probs[0, 0].numpy() > threshold
    if min_size > 1:
        mask = remove_small_objects(mask, max_size=min_size - 1, connectivity=3)
    return mask.astype(np.uint8)


def test_predict_flags_change_the_mask_exactly_as_computed_by_hand(tiny_run, tiny_dataset, tmp_path):
    from selma3d.cli import app_typer
    from typer.testing import CliRunner

    source = read_nifti(next((tiny_dataset / "annotated" / "final_test" / "cfos").glob("*_img.nii.gz")))
    array = source.array[:16, :16, :16]  # one window: the network's forward pass is the oracle
    write_nifti(tmp_path / "in.nii.gz", array, affine=source.affine)
    run_threshold = json.loads((tiny_run / "run.json").read_text())["threshold"]

    def predict(*flags):
        out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}.nii.gz"
        result = CliRunner().invoke(app_typer, ["predict", "--model", str(tiny_run), str(tmp_path / "in.nii.gz"),
                                                str(out), "--quiet", "--device", "cpu", *flags])
        assert result.exit_code == 0, result.output
        return read_nifti(out).array

    # a threshold at which the TTA map has small specks for --min-size to remove
    probs_threshold = float(np.quantile(_probs_tta(tiny_run, array), 0.9))
    threshold = round(probs_threshold, 4)
    default = predict()
    np.testing.assert_array_equal(default, _expected_mask(tiny_run, array, False, run_threshold, 5))
    flagged = predict("--tta", "--threshold", str(threshold), "--min-size", "20")
    expected = _expected_mask(tiny_run, array, True, threshold, 20)
    np.testing.assert_array_equal(flagged, expected)
    assert expected.any()
    # each flag matters here: without it the hand-computed mask differs
    assert not np.array_equal(expected, _expected_mask(tiny_run, array, False, threshold, 20))
    assert not np.array_equal(expected, _expected_mask(tiny_run, array, True, threshold, 0))
    assert not np.array_equal(expected, _expected_mask(tiny_run, array, True, run_threshold, 20))
    no_dust = predict("--tta", "--threshold", str(threshold), "--min-size", "0")
    np.testing.assert_array_equal(no_dust, _expected_mask(tiny_run, array, True, threshold, 0))


def _probs_tta(run_dir, array):
    from selma3d.inference.predict import load_run

    run = load_run(run_dir, device="cpu")
    x = torch.from_numpy(run.normalization(array))[None, None]
    flips = [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    with torch.no_grad():
        return (sum(torch.flip(torch.sigmoid(run.model(torch.flip(x, a))), a) for a in flips) / 8)[0, 0].numpy()
