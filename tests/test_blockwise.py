"""Blockwise whole-volume prediction: equal to one-shot prediction, exact component filter, resume.

Why the equality test is exact (up to float rounding): the tiny U-Net uses batch norm, which in
eval mode is a fixed per-channel affine map, so every output voxel depends only on the input inside
its receptive field (radius 9 voxels for features (4, 8), measured by perturbing one voxel; (4, 8, 16)
has radius 22 and would need 5x the halo compute for no extra coverage) and on the distance to the
volume border (zero padding). Each block is read with a halo of 10 ≥ 9 and the window size equals
the region size, so each block is a single window; regions start at multiples of the network's size
divisor (2), so max-pooling cells line up with the one-shot run;
regions that would leave the volume are shifted inside, so the only padding they see is the
volume's own border, as in the one-shot run. Hence every core voxel is computed from exactly the
same inputs as when the network runs once on the whole volume; only the order of floating-point
sums differs (different tensor shapes): measured ≤ 6e-8 in probability, test tolerance 1e-6. (With instance norm — the
default of real runs — window statistics differ between any two tilings, so no blocked scheme is
bit-equal to another; that is a property of sliding-window inference, not of blocking.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from selma3d.data.normalize import estimate_volume_percentiles, normalize
from selma3d.errors import InputError
from selma3d.inference import blockwise
from selma3d.inference.blockwise import (Block, block_grid, filter_block, predict_block_probabilities,
                                         predict_whole_volume)
from selma3d.inference.postprocess import remove_small_components
from selma3d.inference.predict import load_run, predict_probabilities, save_model_file
from selma3d.io.tiffstack import TiffStack, write_slices
from selma3d.io.volume import open_volume
from selma3d.io.zarrstore import convert_to_zarr

SHAPE = (16, 48, 40)
PATCH = (16, 36, 36)  # = block + 2 * halo in y and x: one window per block
HALO = (10, 10, 10)  # ≥ the receptive-field radius 9, a multiple of the size divisor 2
BLOCK = (8, 16, 16)  # 2 x 3 x 3 blocks, partial ones at the x edge
OPTIONS = dict(block_size=BLOCK, halo=HALO, overlap=0.25, min_size=5, progress=False)


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_run(volume, tmp_path_factory):
    """A random tiny U-Net whose head is rescaled so that its probabilities spread over (0, 1)
    with ~20% above 0.5 on ``volume`` (a random head gives ~0.47 everywhere: all voxels would sit
    within float rounding of any threshold)."""
    from selma3d.models import build_model

    torch.manual_seed(0)
    model = build_model("unet3d", features=(4, 8), norm="batch").eval()
    lo, hi = estimate_volume_percentiles(volume)
    with torch.no_grad():
        logits = model(torch.from_numpy(normalize(volume, lo, hi))[None, None]).numpy()
        q05, q80, q95 = np.quantile(logits, [0.05, 0.8, 0.95])
        scale = 10 / (q95 - q05)
        model.decoder.head.weight.mul_(scale)
        model.decoder.head.bias.mul_(scale).sub_(float(q80 * scale))
    run = tmp_path_factory.mktemp("runs") / "tiny"
    save_model_file(model, run / "model.pt")
    info = {"format": "selma3d-run", "status": "finished", "model": dict(model.config), "patch_size": list(PATCH),
            "normalization": {"method": "percentile", "per": "patch"}, "threshold": 0.5, "type": "spot"}
    (run / "run.json").write_text(json.dumps(info))
    return run


@pytest.fixture(scope="module")
def volume():
    """Smooth blobs of varied brightness plus noise, int16 like LSM slices."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(1)
    blobs = gaussian_filter(rng.normal(size=SHAPE), sigma=2.0)
    image = 200 + 4000 * np.clip(blobs / blobs.std(), 0, None) + rng.normal(0, 30, SHAPE)
    return image.astype(np.int16)


@pytest.fixture(scope="module")
def tiff_input(volume, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiff") / "volume"
    write_slices(folder, volume)
    return folder


@pytest.fixture(scope="module")
def reference(tiny_run, volume):
    """One-shot probabilities: the network once on the whole volume, volume-percentile normalized."""
    run = load_run(tiny_run, device="cpu")
    lo, hi = estimate_volume_percentiles(volume)
    probs = predict_probabilities(run.model, normalize(volume, lo, hi), SHAPE, normalize=False)
    return run, probs, run.threshold


def test_block_probabilities_equal_one_shot_prediction(reference, volume):
    run, probs, _ = reference
    lo, hi = estimate_volume_percentiles(volume)
    stitched = np.full(SHAPE, np.nan, np.float32)
    for block in block_grid(SHAPE, BLOCK):
        stitched[block.core] = predict_block_probabilities(run.model, volume, block, HALO, PATCH, (lo, hi))
    assert not np.isnan(stitched).any()
    np.testing.assert_allclose(stitched, probs, rtol=0, atol=1e-6)
    # the halo matters: without it the block borders see zero padding instead of their neighbours
    no_halo = Block(0, (1, 1, 1), (0, 16, 16), (8, 32, 32))
    cut = predict_block_probabilities(run.model, volume, no_halo, (0, 0, 0), (8, 16, 16), (lo, hi))
    assert np.abs(cut - probs[no_halo.core]).max() > 1e-3


@pytest.mark.parametrize("min_size", [2, 5, 12])
def test_blockwise_component_filter_equals_the_global_one(min_size):
    rng = np.random.default_rng(min_size)
    mask = (rng.random((20, 40, 36)) < 0.22).astype(np.uint8)  # near percolation: sizes 1 .. hundreds
    expected = remove_small_components(mask, min_size)
    got = np.zeros_like(mask)
    for block in block_grid(mask.shape, (6, 7, 8)):
        got[block.core] = filter_block(mask, block, min_size)
    assert 0 < expected.sum() < mask.sum()
    np.testing.assert_array_equal(got, expected)


def test_whole_volume_zarr_output_equals_one_shot_mask(reference, tiff_input, tmp_path):
    run, probs, threshold = reference
    # float sums differ by < 1e-6 (test above); no voxel lies that close to the threshold here,
    # so the masks must agree exactly, component filter included
    assert np.abs(probs - threshold).min() > 1e-6
    expected = remove_small_components(probs > threshold, 5)
    out = predict_whole_volume(run, tiff_input, tmp_path / "mask.zarr", threshold=threshold, **OPTIONS)
    mask = open_volume(out)
    assert mask.dtype == np.uint8 and mask.shape == SHAPE and tuple(mask.chunks) == BLOCK
    np.testing.assert_array_equal(mask[...], expected)
    assert expected.sum() < (probs > threshold).sum()  # the filter removed something
    state = json.loads((out / blockwise.PROGRESS_FILE).read_text())
    assert state["complete"] and len(state["done"]["predict"]) == len(block_grid(SHAPE, BLOCK))
    assert not (out / blockwise.RAW_ARRAY).exists()


def test_kill_and_resume_equals_an_uninterrupted_run(reference, tiff_input, tmp_path, monkeypatch):
    run, _, threshold = reference
    options = dict(OPTIONS, threshold=threshold, scheduler="synchronous")
    full = predict_whole_volume(run, tiff_input, tmp_path / "full.zarr", **options)

    calls = []
    real = blockwise._predict_task

    def dies_after_four(*args):
        if len(calls) == 4:
            raise RuntimeError("killed")
        calls.append(args[4].index)
        return real(*args)

    monkeypatch.setattr(blockwise, "_predict_task", dies_after_four)
    out = tmp_path / "resumed.zarr"
    with pytest.raises(RuntimeError, match="killed"):
        predict_whole_volume(run, tiff_input, out, **options)
    with pytest.raises(InputError):  # no OME metadata yet: does not look like a finished image
        open_volume(out)
    assert sorted(json.loads((out / blockwise.PROGRESS_FILE).read_text())["done"]["predict"]) == sorted(calls)

    monkeypatch.setattr(blockwise, "_predict_task", lambda *args: calls.append(args[4].index) or real(*args))
    predict_whole_volume(run, tiff_input, out, **options)
    n_blocks = len(block_grid(SHAPE, BLOCK))
    assert sorted(calls) == list(range(n_blocks))  # each block predicted exactly once over both runs
    np.testing.assert_array_equal(open_volume(out)[...], open_volume(full)[...])

    # a finished output is not recomputed; another model or input is refused unless overwrite
    predict_whole_volume(run, tiff_input, out, **options)
    assert len(calls) == n_blocks
    with pytest.raises(InputError, match="another input"):
        predict_whole_volume(run, np.zeros(SHAPE, np.int16), out, **options)
    with pytest.raises(InputError, match="another options"):
        predict_whole_volume(run, tiff_input, out, **dict(options, min_size=3))
    predict_whole_volume(run, tiff_input, out, overwrite=True, **dict(options, min_size=3))
    assert json.loads((out / blockwise.PROGRESS_FILE).read_text())["identity"]["options"]["min_size"] == 3


def test_zarr_input_to_tiff_folder_output(reference, volume, tiff_input, tmp_path, monkeypatch):
    run, probs, threshold = reference
    zarr_input = convert_to_zarr(tiff_input, tmp_path / "volume.zarr", chunks=16, progress=False)
    real = blockwise._export_task

    def dies_after_one_slab(mask_path, folder, z0, *args):
        if z0 > 0:
            raise RuntimeError("killed")
        return real(mask_path, folder, z0, *args)

    monkeypatch.setattr(blockwise, "_export_task", dies_after_one_slab)
    with pytest.raises(RuntimeError, match="killed"):
        predict_whole_volume(run, zarr_input, tmp_path / "mask_slices", **OPTIONS)
    with pytest.raises(InputError, match="no TIFF slices"):  # half-exported: no visible slice yet
        TiffStack(tmp_path / "mask_slices")
    monkeypatch.setattr(blockwise, "_export_task", real)
    out = predict_whole_volume(run, zarr_input, tmp_path / "mask_slices", workers=2, **OPTIONS)
    slices = TiffStack(out)
    assert slices.dtype == np.uint8 and slices.files[0].name == "slice_00000.tif"
    np.testing.assert_array_equal(slices[...], remove_small_components(probs > threshold, 5))
    assert not (out / blockwise.WORK_STORE).exists()
    assert json.loads((out / blockwise.PROGRESS_FILE).read_text())["complete"]


def test_bad_inputs_name_the_file(reference, volume, tmp_path):
    run = reference[0]
    folder = tmp_path / "gappy"
    write_slices(folder, volume[:6])
    (folder / "slice_00003.tif").unlink()
    with pytest.raises(InputError, match="slice_00003.tif"):
        predict_whole_volume(run, folder, tmp_path / "out.zarr", progress=False)
    with pytest.raises(InputError, match=r"out\.nii\.gz.*unknown output kind"):
        predict_whole_volume(run, volume, tmp_path / "out.nii.gz", progress=False)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="notes.*did not write"):
        predict_whole_volume(run, volume, tmp_path / "notes", progress=False, overwrite=True)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_predict_command_routes_a_tiff_folder_to_the_blockwise_path(reference, tiny_run, tiff_input, tmp_path):
    from typer.testing import CliRunner

    from selma3d.cli import app_typer

    run, probs, threshold = reference
    expected = remove_small_components(probs > threshold, 5)
    out = tmp_path / "cli_mask.zarr"
    block = ",".join(str(b) for b in BLOCK)
    result = CliRunner().invoke(app_typer, ["predict", "--model", str(tiny_run), str(tiff_input), str(out),
                                            "--block-size", block, "--halo", str(HALO if isinstance(HALO, int) else HALO[1]),
                                            "--threshold", str(threshold), "--overlap", str(OPTIONS["overlap"]),
                                            "--quiet"])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(open_volume(out)[...], expected)
