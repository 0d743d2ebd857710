"""Patch prediction: sliding windows, TTA, thresholding, small components, NIfTI output, router."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from selma3d.errors import InputError, Selma3dError
from selma3d.io.nifti import read_nifti, write_nifti

TINY_UNET = {"features": [4, 8, 16]}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _finetune(data, out, structures, steps=3):
    from selma3d.training.finetune import FinetuneConfig, finetune

    return finetune(FinetuneConfig(data=str(data), out=str(out), model_options=dict(TINY_UNET), max_steps=steps,
                                   patch_size=(16, 16, 16), val_fraction=0.0, structures=structures,
                                   lr=1e-2, progress=False, num_workers=0))


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory):
    """A spot run (c-Fos) and a tree run (vessels), a few steps each."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("runs")
    spot = _finetune(tiny_dataset, base / "spot", ["cfos"])
    tree = _finetune(tiny_dataset, base / "tree", ["vessel"])
    torch.set_num_threads(previous)
    return {"spot": spot, "tree": tree}


def _cli(*args):
    from selma3d.cli import app_typer

    result = CliRunner().invoke(app_typer, [str(a) for a in args])
    if isinstance(result.exception, Selma3dError):
        return 1, f"error: {result.exception}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


# --------------------------------------------------------------------------- stitching

def test_sliding_window_matches_the_bare_forward_pass_on_one_window():
    from selma3d.inference.predict import predict_probabilities
    from selma3d.models import build_model

    torch.manual_seed(0)
    model = build_model("unet3d", **TINY_UNET).eval()
    image = np.random.default_rng(0).uniform(-1, 1, (16, 24, 32)).astype(np.float32)
    with torch.no_grad():
        bare = torch.sigmoid(model(torch.from_numpy(image)[None, None]))[0, 0].numpy()
    probs = predict_probabilities(model, image, (16, 24, 32), overlap=0.5, normalize=False)
    np.testing.assert_allclose(probs, bare, atol=1e-5)

    # flip TTA is the mean of the flipped predictions, flipped back
    expected = np.zeros_like(bare)
    with torch.no_grad():
        for axes in [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]:
            x = torch.from_numpy(image)[None, None]
            y = torch.sigmoid(model(torch.flip(x, axes) if axes else x))
            expected += (torch.flip(y, axes) if axes else y)[0, 0].numpy() / 8
    tta = predict_probabilities(model, image, (16, 24, 32), tta_flips=True, normalize=False)
    np.testing.assert_allclose(tta, expected, atol=1e-5)


def test_larger_and_smaller_inputs_are_stitched_to_their_own_shape():
    from selma3d.inference.predict import predict_probabilities, predict_volume
    from selma3d.models import build_model

    model = build_model("unet3d", **TINY_UNET)
    rng = np.random.default_rng(1)
    for shape in [(40, 37, 20), (8, 10, 12)]:
        image = rng.integers(0, 4000, shape).astype(np.int16)
        probs = predict_probabilities(model, image, (16, 16, 16), overlap=0.25)
        assert probs.shape == shape and probs.dtype == np.float32 and 0 <= probs.min() <= probs.max() <= 1

    # the mask against an oracle outside the prediction code: a 1x1x1 convolution's probabilities
    # are sigmoid(w * x + b) voxel by voxel, whatever the tiling or padding
    pointwise = torch.nn.Conv3d(1, 1, 1)
    with torch.no_grad():
        pointwise.weight.fill_(2.0)
        pointwise.bias.fill_(0.3)
    for shape in [(40, 37, 20), (8, 10, 12)]:
        image = rng.uniform(-1, 1, shape).astype(np.float32)
        expected = 1 / (1 + np.exp(-(2.0 * image.astype(np.float64) + 0.3))) > 0.6
        mask = predict_volume(pointwise, image, (16, 16, 16), overlap=0.25, threshold=0.6, normalize=False)
        assert mask.dtype == np.uint8 and mask.shape == shape
        np.testing.assert_array_equal(mask, expected.astype(np.uint8))


def test_small_components_are_removed_with_26_connectivity():
    from selma3d.inference.postprocess import remove_small_components

    mask = np.zeros((20, 20, 20), np.uint8)
    mask[1, 1, 1] = 1  # 1 voxel
    mask[5, 5, 5:9] = 7  # 4 voxels
    mask[10, 10, 10] = mask[11, 11, 11] = mask[12, 12, 12] = mask[13, 13, 13] = mask[14, 14, 14] = 1  # 5, diagonal
    mask[2:5, 14:17, 14:17] = 1  # 27 voxels
    out = remove_small_components(mask, 5)
    assert out.dtype == np.uint8 and out.sum() == 5 + 27
    assert out[1, 1, 1] == 0 and out[5, 5, 5:9].sum() == 0 and out[12, 12, 12] == 1
    assert remove_small_components(mask, 0).sum() == (mask > 0).sum()


# --------------------------------------------------------------------------- files

def test_cli_predict_writes_binary_uint8_masks_with_the_input_affine(runs, tiny_dataset, tmp_path):
    folder = tmp_path / "inputs"
    source = read_nifti(next((tiny_dataset / "annotated" / "final_test" / "cfos").glob("*_img.nii.gz")))
    affine = np.array([[0, 0, -1.625, 10.0], [0, -1.625, 0, -3.0], [2.0, 0, 0, 7.5], [0, 0, 0, 1]])
    write_nifti(folder / "a_img.nii.gz", source.array, affine=affine)
    write_nifti(folder / "a_label.nii.gz", np.zeros_like(source.array, dtype=np.uint8), affine=affine)
    write_nifti(folder / "b.nii", source.array[:, :20, :28], affine=np.diag([-2.0, -1.0, 3.0, 1.0]))

    code, output = _cli("predict", "--model", runs["spot"], folder, tmp_path / "out", "--quiet")
    assert code == 0, output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_img.nii.gz", "b.nii"]  # labels skipped
    for name, shape in (("a_img.nii.gz", source.array.shape), ("b.nii", (32, 20, 28))):
        written, original = read_nifti(tmp_path / "out" / name), read_nifti(folder / name)
        assert written.array.dtype == np.uint8 and written.array.shape == shape
        assert set(np.unique(written.array)) <= {0, 1}
        np.testing.assert_array_equal(written.affine, original.affine)

    # one file to one named file, with TTA, a threshold and no small-component removal
    code, output = _cli("predict", "--model", runs["spot"], folder / "b.nii", tmp_path / "single.nii.gz",
                        "--tta", "--threshold", "0.3", "--min-size", "0", "--quiet")
    assert code == 0, output
    from selma3d.inference.predict import load_run

    single = read_nifti(tmp_path / "single.nii.gz").array
    run = load_run(runs["spot"])
    image = read_nifti(folder / "b.nii").array
    np.testing.assert_array_equal(single, run.predict(image, tta_flips=True, threshold=0.3, min_size=0))
    # the flags were applied: the default settings give another mask
    assert not np.array_equal(single, run.predict(image))
    # (tests/test_glue.py checks each flag against a hand-written flip/threshold/small-object pipeline)


def test_predict_rejects_whole_volumes_and_unknown_inputs(runs, tiny_dataset, tmp_path):
    from selma3d.inference.predict import predict_path

    tiff_folder = next((tiny_dataset / "unannotated").glob("*/*"))
    with pytest.raises(InputError, match="TIFF slice folder.*whole volume"):
        predict_path(runs["spot"], tiff_folder, tmp_path / "o")
    (tmp_path / "v.zarr").mkdir()
    with pytest.raises(InputError, match="Zarr volume"):
        predict_path(runs["spot"], tmp_path / "v.zarr", tmp_path / "o")
    with pytest.raises(InputError, match="not found"):
        predict_path(runs["spot"], tmp_path / "missing.nii.gz", tmp_path / "o")
    code, output = _cli("predict", "--model", tmp_path, tiny_dataset / "annotated" / "final_test" / "cfos",
                        tmp_path / "o")
    assert code == 1 and "model.pt missing" in output


def test_router_sends_each_patch_to_the_model_of_its_type(runs, tiny_dataset, tmp_path):
    from selma3d.inference.predict import load_run
    from selma3d.training.router import load_router

    code, output = _cli("finetune", "--router", "--data", tiny_dataset, "--out", tmp_path / "router",
                        "--router-steps", "200", "--patch-size", "24", "--val-fraction", "0", "--quiet")
    assert code == 0, output
    router = load_router(tmp_path / "router" / "router.pt")
    inputs = tmp_path / "inputs"
    for structure in ("cfos", "vessel"):
        image = read_nifti(tiny_dataset / "annotated" / "train" / structure / f"{structure}_001_img.nii.gz")
        write_nifti(inputs / f"{structure}.nii.gz", image.array, affine=image.affine)
    assert [router.classify(read_nifti(inputs / f"{s}.nii.gz").array) for s in ("cfos", "vessel")] == ["spot", "tree"]

    code, output = _cli("predict", "--model", runs["spot"], "--model", runs["tree"], "--router",
                        tmp_path / "router", inputs, tmp_path / "out", "--quiet")
    assert code == 0, output
    for structure, kind in (("cfos", "spot"), ("vessel", "tree")):
        expected = load_run(runs[kind]).predict(read_nifti(inputs / f"{structure}.nii.gz").array)
        np.testing.assert_array_equal(read_nifti(tmp_path / "out" / f"{structure}.nii.gz").array, expected)

    code, output = _cli("predict", "--model", runs["spot"], "--model", runs["tree"], inputs, tmp_path / "o2")
    assert code == 1 and "--router" in output
