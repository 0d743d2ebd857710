"""Blockwise whole-volume prediction: one pass of MONAI's sliding windows, exact component filter, resume.

The reference is MONAI's ``sliding_window_inference`` on the whole in-memory volume with the same
window, overlap and Gaussian blending (``predict_probabilities`` on the volume normalized by the
run's whole-volume statistics). Blockwise prediction runs exactly those windows, each once, and
blends them with the same weights; only the order of float additions differs where windows of
neighbouring blocks overlap, so probabilities agree to ~1e-7 (tolerance 1e-6) and masks exactly
(no voxel of these volumes lies within 1e-6 of the threshold, checked). This holds for any network
— the tiny U-Net here uses instance norm, whose window statistics make every output voxel depend on
the whole window, which no halo short of the window could reproduce.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from selma3d.data.normalize import Normalization, normalize
from selma3d.errors import InputError
from selma3d.inference import blockwise
from selma3d.inference.blockwise import block_grid, filter_block, predict_whole_volume
from selma3d.inference.postprocess import remove_small_components
from selma3d.inference.predict import load_run, predict_path, predict_probabilities, save_model_file
from selma3d.inference.prefetch import READER_THREAD
from selma3d.io.nifti import write_nifti
from selma3d.io.tiffstack import TiffStack, write_slices
from selma3d.io.volume import open_volume
from selma3d.io.zarr_convert import convert_to_zarr

SHAPE = (18, 45, 41)  # a multiple of neither the block nor the window
PATCH = (8, 20, 16)  # windows larger than a block in y: spill crosses two blocks
BLOCK = (8, 16, 16)  # 3 x 3 x 3 blocks, partial ones at every far edge
OVERLAP = 0.25
OPTIONS = dict(block_size=BLOCK, overlap=OVERLAP, min_size=5, progress=False)
RECORDED = {"method": "percentile", "per": "patch"}  # the run's normalization record
SPEC = Normalization.from_dict(RECORDED)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def tiny_run(volume, tmp_path_factory):
    """A random tiny U-Net whose head is rescaled so that its probabilities spread over (0, 1)
    with ~20% above 0.5 on ``volume`` (a random head gives ~0.47 everywhere: all voxels would sit
    within float rounding of any threshold). The head is a 1x1 convolution, so rescaling it
    rescales the blended logits alike."""
    from selma3d.models import build_model

    torch.manual_seed(0)
    model = build_model("unet3d", features=(4, 8)).eval()  # instance norm, as real runs
    with torch.no_grad():
        probs = predict_probabilities(model, normalize(volume, *SPEC.statistics(volume)), PATCH, overlap=OVERLAP,
                                      normalize=False)
        logits = np.log(probs) - np.log1p(-probs)
        q05, q80, q95 = np.quantile(logits, [0.05, 0.8, 0.95])
        scale = 10 / (q95 - q05)
        model.decoder.head.weight.mul_(scale)
        model.decoder.head.bias.mul_(scale).sub_(float(q80 * scale))
    run = tmp_path_factory.mktemp("runs") / "tiny"
    save_model_file(model, run / "model.pt")
    info = {"format": "selma3d-run", "status": "finished", "model": dict(model.config), "patch_size": list(PATCH),
            "normalization": RECORDED, "threshold": 0.5, "type": "spot"}
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


def one_pass(run, volume, tta_flips=False):
    """MONAI's sliding_window_inference on the whole in-memory volume: the reference."""
    image = normalize(volume, *run.normalization.statistics(volume))
    return predict_probabilities(run.model, image, PATCH, overlap=OVERLAP, normalize=False, tta_flips=tta_flips)


@pytest.fixture(scope="module")
def reference(tiny_run, volume):
    run = load_run(tiny_run, device="cpu")
    probs = one_pass(run, volume)
    assert np.abs(probs - run.threshold).min() > 1e-6  # masks can be compared exactly
    return run, probs, run.threshold


def blockwise_probabilities(run, volume, out, **options):
    options = dict(OPTIONS, min_size=0, skip_empty=False, probabilities=True) | options
    predict_whole_volume(run, volume, out, **options)
    return open_volume(out)[...], np.asarray(__import__("zarr").open_array(str(out / "probabilities"))[...])


@pytest.mark.parametrize("shape, block, tta", [
    (SHAPE, BLOCK, False),
    ((6, 45, 41), (4, 16, 16), False),  # z shorter than the window: MONAI's zero padding
    ((11, 37, 29), (11, 37, 29), False),  # one block: the whole volume
    ((11, 37, 29), (5, 9, 7), True),  # blocks smaller than the stride, all 8 flips
])
def test_blockwise_probabilities_equal_monai_one_pass(reference, volume, tmp_path, shape, block, tta):
    run = reference[0]
    part = volume[:shape[0], :shape[1], :shape[2]]
    expected = one_pass(run, part, tta_flips=tta)
    mask, probs = blockwise_probabilities(run, part, tmp_path / "p.zarr", block_size=block, tta_flips=tta)
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)
    assert (probs == expected).mean() > 0.5  # mostly bit-identical: only the order of some sums differs
    near = np.abs(expected - run.threshold) < 1e-6
    np.testing.assert_array_equal(mask[~near], (expected > run.threshold)[~near])
    assert 0.05 < mask.mean() < 0.95


def test_spill_between_blocks_is_what_makes_the_sums_whole(reference, volume, tmp_path, monkeypatch):
    """Without the overlap store's pieces, voxels near the lower faces of blocks lose the windows
    of their neighbours: the store is not decoration."""
    run, expected, _ = reference
    monkeypatch.setattr(blockwise.OverlapStore, "get", lambda self, producer, consumer: None)
    _, probs = blockwise_probabilities(run, volume, tmp_path / "p.zarr")
    wrong = np.abs(probs - expected) > 1e-3
    assert wrong.any() and not wrong[:BLOCK[0], :BLOCK[1], :BLOCK[2]].any()  # block 0 has no producers


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


@pytest.mark.parametrize("min_size", [3, 5])
def test_component_filter_reads_its_margin_from_the_neighbours_rims(tmp_path, min_size):
    """The filter pass reads only its own block of the raw mask; the margin comes from the
    neighbours' rims, and the result is the global filter."""
    from selma3d.inference.blockwise import RimStore, _MarginView

    rng = np.random.default_rng(min_size)
    mask = (rng.random((20, 40, 36)) < 0.22).astype(np.uint8)
    block_size = (6, 7, 8)
    rims = RimStore(str(tmp_path), min_size - 1)
    for block in block_grid(mask.shape, block_size):
        rims.put(block, mask[block.core])

    class Counting:
        shape, reads = mask.shape, []

        def __getitem__(self, key):
            Counting.reads.append(key)
            return mask[key]

    cores = [b.core for b in block_grid(mask.shape, block_size)]
    got = np.zeros_like(mask)
    for block in block_grid(mask.shape, block_size):
        got[block.core] = filter_block(_MarginView(Counting(), rims, block_size), block, min_size)
    np.testing.assert_array_equal(got, remove_small_components(mask, min_size))
    # the raw array is read for whole cores only, never across a neighbour's chunk
    assert all(key in cores for key in Counting.reads) and len(Counting.reads) <= len(cores)


def test_whole_volume_mask_is_the_same_from_tiff_zarr_nifti_and_array(reference, volume, tiff_input, tmp_path):
    run, probs, threshold = reference
    expected = remove_small_components(probs > threshold, 5)
    assert expected.sum() < (probs > threshold).sum()  # the filter removes something
    out = predict_whole_volume(run, tiff_input, tmp_path / "mask.zarr", threshold=threshold, **OPTIONS)
    mask = open_volume(out)
    assert mask.dtype == np.uint8 and mask.shape == SHAPE and tuple(mask.chunks) == BLOCK
    np.testing.assert_array_equal(mask[...], expected)
    state = json.loads((out / blockwise.PROGRESS_FILE).read_text())
    assert state["complete"] and len(state["done"]["predict"]) == len(block_grid(SHAPE, BLOCK))
    assert state["norm_range"] == list(run.normalization.statistics(volume))  # the whole volume's
    assert not (out / blockwise.RAW_ARRAY).exists() and not (out / blockwise.OVERLAP_STORE).exists()

    zarr_input = convert_to_zarr(tiff_input, tmp_path / "volume.zarr", chunks=16, progress=False)
    nifti_input = write_nifti(tmp_path / "volume.nii.gz", volume)
    for name, source in (("zarr", zarr_input), ("nifti", nifti_input), ("array", volume)):
        other = predict_whole_volume(run, source, tmp_path / f"mask_{name}.zarr", threshold=threshold, **OPTIONS)
        np.testing.assert_array_equal(open_volume(other)[...], expected, err_msg=name)
    # and `selma3d predict` on the NIfTI file (in memory, MONAI once) gives that mask too
    written = predict_path(run.path, nifti_input, tmp_path / "patch_mask.nii.gz", overlap=OVERLAP, min_size=5,
                           device="cpu", progress=False)
    np.testing.assert_array_equal(open_volume(written[0]), expected)


def test_kill_and_resume_equals_an_uninterrupted_run(reference, tiff_input, tmp_path, monkeypatch):
    run, _, threshold = reference
    options = dict(OPTIONS, threshold=threshold, scheduler="synchronous")
    full = predict_whole_volume(run, tiff_input, tmp_path / "full.zarr", **options)

    calls = []
    real = blockwise._predict_task

    def dies_after_four(*args):
        if len(calls) == 4:
            raise RuntimeError("killed")
        calls.append(args[4].block.index)
        return real(*args)

    monkeypatch.setattr(blockwise, "_predict_task", dies_after_four)
    out = tmp_path / "resumed.zarr"
    with pytest.raises(RuntimeError, match="killed"):
        predict_whole_volume(run, tiff_input, out, **options)
    with pytest.raises(InputError):  # no OME metadata yet: does not look like a finished image
        open_volume(out)
    done = json.loads((out / blockwise.PROGRESS_FILE).read_text())["done"]["predict"]
    assert sorted(done) == sorted(calls)
    pieces = list((out / blockwise.OVERLAP_STORE).glob("piece_*.npy"))
    assert pieces  # the spill of the finished blocks waits for their consumers ...
    assert not [p for p in pieces if int(p.stem.split("_")[2]) in done]  # ... and no longer once consumed

    monkeypatch.setattr(blockwise, "_predict_task", lambda *args: calls.append(args[4].block.index) or real(*args))
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
    with pytest.raises(InputError, match="probabilities.*zarr"):
        predict_whole_volume(run, volume, tmp_path / "slices_out", probabilities=True, progress=False)
    with pytest.raises(InputError, match="--precision"):
        predict_whole_volume(run, volume, tmp_path / "p.zarr", precision="int8", progress=False)
    with pytest.raises(InputError, match="--batch-size"):
        predict_whole_volume(run, volume, tmp_path / "p.zarr", batch_size=0, progress=False)


def test_predict_command_routes_a_tiff_folder_to_the_blockwise_path(reference, tiny_run, tiff_input, tmp_path):
    from typer.testing import CliRunner

    from selma3d.cli import app_typer

    run, probs, threshold = reference
    expected = remove_small_components(probs > threshold, 5)
    out = tmp_path / "cli_mask.zarr"
    block = ",".join(str(b) for b in BLOCK)
    result = CliRunner().invoke(app_typer, ["predict", "--model", str(tiny_run), str(tiff_input), str(out),
                                            "--block-size", block, "--batch-size", "3", "--precision", "fp32",
                                            "--threshold", str(threshold), "--overlap", str(OPTIONS["overlap"]),
                                            "--quiet"])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(open_volume(out)[...], expected)


class CountingModel(torch.nn.Module):
    """The run's network, counting the windows it is asked to predict."""

    def __init__(self, model):
        super().__init__()
        self.model, self.windows = model, 0

    def forward(self, x):
        self.windows += x.shape[0]
        return self.model(x)


def test_empty_blocks_are_skipped_and_written_as_zero(reference, volume, tmp_path):
    """A volume whose far half (in z) is dark mounting medium: its blocks hold no tissue. They are
    not predicted (fewer windows run) and are 0; everything their windows could not reach is the
    one-pass result; with skipping off, the whole volume is."""
    from selma3d.inference.predict import LoadedRun

    run = reference[0]
    dark = volume.copy()
    rng = np.random.default_rng(5)
    dark[BLOCK[0]:] = rng.normal(100, 3, dark[BLOCK[0]:].shape).astype(np.int16)  # z blocks 1 and 2
    expected = one_pass(run, dark)
    counting = CountingModel(run.model)
    counted = LoadedRun(run.path, counting, run.info)
    mask, probs = blockwise_probabilities(counted, dark, tmp_path / "skip.zarr", skip_empty=True)
    skipped_windows = counting.windows
    counting.windows = 0
    mask_all, probs_all = blockwise_probabilities(counted, dark, tmp_path / "all.zarr", skip_empty=False)
    from selma3d.inference.windows import WindowGrid

    grid = WindowGrid(SHAPE, PATCH, OVERLAP, BLOCK)
    tissue_blocks = [b for b in block_grid(SHAPE, BLOCK) if b.grid_index[0] == 0]
    assert skipped_windows == sum(len(grid.block_windows(b.grid_index)) for b in tissue_blocks)
    assert counting.windows == sum(len(grid.block_windows(b.grid_index)) for b in block_grid(SHAPE, BLOCK))
    np.testing.assert_allclose(probs_all, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(mask_all, expected > run.threshold)
    assert not mask[BLOCK[0]:].any() and not probs[BLOCK[0]:].any()
    # windows spill forward only: the tissue blocks' voxels never needed the skipped ones
    np.testing.assert_allclose(probs[:BLOCK[0]], expected[:BLOCK[0]], rtol=0, atol=1e-6)


def test_precision_batch_size_and_prefetch_options(reference, volume, tmp_path):
    run, expected, _ = reference
    mask, probs = blockwise_probabilities(run, volume, tmp_path / "default.zarr")
    mask32, probs32 = blockwise_probabilities(run, volume, tmp_path / "fp32.zarr", precision="fp32")
    np.testing.assert_array_equal(probs32, probs)  # fp32 is the default
    _, batched = blockwise_probabilities(run, volume, tmp_path / "batched.zarr", batch_size=7, prefetch=0)
    np.testing.assert_allclose(batched, expected, rtol=0, atol=1e-5)  # batch shapes change float rounding only
    for precision in ("bf16", "fp16"):  # run on the CPU too (autocast); close to fp32, not equal
        _, low = blockwise_probabilities(run, volume, tmp_path / f"{precision}.zarr", precision=precision)
        assert 0 < np.abs(low - expected).max() < 0.1, precision


def test_a_reader_thread_reads_the_blocks_ahead(reference, volume, tmp_path):
    run, expected, _ = reference

    class Recording:
        shape, dtype, ndim = volume.shape, volume.dtype, 3
        threads: list[str] = []

        def __getitem__(self, key):
            Recording.threads.append(threading.current_thread().name)
            return volume[key]

    n_blocks = len(block_grid(SHAPE, BLOCK))
    mask, _ = blockwise_probabilities(run, Recording(), tmp_path / "ahead.zarr", scheduler="synchronous")
    np.testing.assert_array_equal(mask, expected > run.threshold)
    by_reader = sum(name.startswith(READER_THREAD) for name in Recording.threads)
    assert by_reader >= 0.6 * n_blocks  # all but mispredicted ones (~1 in 4 here), read while another block computes
    Recording.threads.clear()
    blockwise_probabilities(run, Recording(), tmp_path / "inline.zarr", scheduler="synchronous", prefetch=0)
    assert not any(name.startswith(READER_THREAD) for name in Recording.threads)


def test_dask_distributed_workers_give_the_same_mask(reference, tiny_run, tiff_input, tmp_path):
    """Blocks sent to a dask.distributed scheduler wait for their producers' futures and exchange
    spill through the overlap store on disk: the mask is the one-pass mask."""
    distributed = pytest.importorskip("distributed")

    run, probs, threshold = reference
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        out = predict_whole_volume(str(tiny_run), tiff_input, tmp_path / "dist.zarr", threshold=threshold,
                                   scheduler_address=cluster.scheduler_address, device="cpu", **OPTIONS)
    np.testing.assert_array_equal(open_volume(out)[...], remove_small_components(probs > threshold, 5))


@pytest.mark.slow
def test_a_distributed_worker_killed_mid_run_does_not_change_the_mask(reference, tiny_run, tiff_input, tmp_path):
    """Two worker *processes*; one is SIGKILLed once some blocks are done. The scheduler reruns its
    tasks elsewhere (the nanny restarts it) and the mask is still the one-pass mask."""
    import os
    import signal
    import threading

    distributed = pytest.importorskip("distributed")
    run, probs, threshold = reference
    out = tmp_path / "killed.zarr"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        pids = list(client.run(os.getpid).values())
        result: dict = {}

        def predict():
            try:
                result["out"] = predict_whole_volume(str(tiny_run), tiff_input, out, threshold=threshold,
                                                     scheduler_address=cluster.scheduler_address, device="cpu",
                                                     **OPTIONS)
            except BaseException as exc:  # reported below
                result["error"] = exc

        thread = threading.Thread(target=predict)
        thread.start()
        killed = False
        while thread.is_alive():
            try:
                done = json.loads((out / blockwise.PROGRESS_FILE).read_text())["done"].get("predict", [])
            except (OSError, ValueError, KeyError):
                done = []
            if not killed and len(done) >= 3:
                os.kill(pids[0], signal.SIGKILL)
                killed = True
            thread.join(0.01)
        assert "error" not in result, result.get("error")
        assert killed, "the job finished before a worker could be killed"
    np.testing.assert_array_equal(open_volume(result["out"])[...], remove_small_components(probs > threshold, 5))
