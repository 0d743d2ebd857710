"""A real ``kill -9`` in the middle of synth, convert and whole-volume predict, then a rerun: the
result equals an uninterrupted run's (the exception-based interruption tests next to each
command check the bookkeeping; these check that nothing depends on cleanup code running).

The kill point is drawn at random from the work the killed run has recorded on disk (seeded, so
a failure reproduces); the test is meaningful only if the process was still running when it was
killed, which it asserts.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _selma3d(*args) -> list[str]:
    return [sys.executable, "-m", "selma3d", *map(str, args)]


def _env() -> dict:
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_and_kill(args, ready, timeout: float = 600.0) -> None:
    """Start ``selma3d ARGS``, SIGKILL it as soon as ``ready()`` is true; fail if it ended first."""
    process = subprocess.Popen(_selma3d(*args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if process.poll() is not None:
                pytest.fail(f"finished (exit {process.returncode}) before the kill point: "
                            f"{process.stderr.read().decode()[-500:]}")
            if time.monotonic() > deadline:
                pytest.fail("kill point never reached")
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL


def run_to_end(*args) -> None:
    result = subprocess.run(_selma3d(*args), env=_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]


def file_digests(root: Path, skip=()) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip}


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@pytest.mark.parametrize("kill_after", [2, random.Random(12).randint(3, 8)])
def test_synth_killed_then_rerun_writes_the_same_files(tmp_path, kill_after):
    out = tmp_path / "data"
    partial = tmp_path / ".data.partial"

    def cases_written() -> bool:
        return partial.is_dir() and len(list(partial.rglob("*_label.nii.gz"))) >= kill_after

    run_and_kill(["synth", out, "--preset", "tiny", "--seed", "3", "--quiet"], cases_written)
    assert not (out / "dataset.json").exists()  # a killed run never looks finished
    run_to_end("synth", out, "--preset", "tiny", "--seed", "3", "--quiet")
    run_to_end("synth", tmp_path / "fresh", "--preset", "tiny", "--seed", "3", "--quiet")
    from selma3d.data.synthetic import MANIFEST

    assert file_digests(out, skip={MANIFEST}) == file_digests(tmp_path / "fresh", skip={MANIFEST})
    # the manifest (what `--overwrite` may delete) lists the same files and sizes; mtimes differ
    sizes = [{k: v[0] for k, v in _json(root / MANIFEST)["files"].items()} for root in (out, tmp_path / "fresh")]
    assert sizes[0] == sizes[1]


def _write_slices(folder: Path, volume: np.ndarray) -> Path:
    import tifffile

    folder.mkdir(parents=True)
    for z, plane in enumerate(volume):
        tifffile.imwrite(folder / f"slice_{z:05d}.tif", plane)
    return folder


def _noisy_volume(shape, seed: int) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    blobs = gaussian_filter(rng.normal(size=shape), 2.0)
    return (300 + 3000 * np.clip(blobs / blobs.std(), 0, None) + rng.normal(0, 40, shape)).astype(np.int16)


def test_convert_killed_then_rerun_stores_the_same_volume(tmp_path):
    import zarr

    from selma3d.io.zarrstore import PROGRESS_FILE

    slices = _write_slices(tmp_path / "slices", _noisy_volume((128, 160, 160), 4))
    out = tmp_path / "brain.zarr"
    kill_after = random.Random(5).randint(1, 3)  # slabs of level 0 recorded as done

    def slabs_done() -> bool:
        state = _json(out / PROGRESS_FILE) or {}
        return len(state.get("done", {}).get("level 0", [])) >= kill_after

    args = ["--chunks", "16", "--quiet"]
    run_and_kill(["convert", slices, out, *args], slabs_done)
    run_to_end("convert", slices, out, *args)
    run_to_end("convert", slices, tmp_path / "fresh" / "brain.zarr", *args)
    resumed = zarr.open_group(str(out), mode="r")
    fresh = zarr.open_group(str(tmp_path / "fresh" / "brain.zarr"), mode="r")
    assert sorted(resumed.array_keys()) == sorted(fresh.array_keys())
    for name in fresh.array_keys():
        np.testing.assert_array_equal(resumed[name][...], fresh[name][...], err_msg=name)
    assert resumed.attrs.asdict() == fresh.attrs.asdict()


def test_whole_volume_predict_killed_then_rerun_writes_the_same_probabilities(tmp_path):
    import torch
    import zarr

    from selma3d.inference.blockwise import PROGRESS_FILE
    from selma3d.inference.predict import save_model_file
    from selma3d.models import build_model

    torch.manual_seed(0)
    model = build_model("unet3d", features=(4, 8)).eval()
    run = tmp_path / "run"
    save_model_file(model, run / "model.pt")
    (run / "run.json").write_text(json.dumps({
        "format": "selma3d-run", "status": "finished", "model": dict(model.config), "patch_size": [16, 16, 16],
        "threshold": 0.5, "type": "spot"}))
    tiff = _write_slices(tmp_path / "volume", _noisy_volume((40, 96, 96), 6))
    args = ["--model", run, "--block-size", "16,32,32", "--probabilities", "--no-skip-empty", "--device", "cpu",
            "--quiet"]
    out = tmp_path / "mask.zarr"
    kill_after = random.Random(7).randint(2, 8)  # of 27 blocks

    def blocks_done() -> bool:
        state = _json(out / PROGRESS_FILE) or {}
        return len(state.get("done", {}).get("predict", [])) >= kill_after

    run_and_kill(["predict", tiff, out, *args], blocks_done)
    run_to_end("predict", tiff, out, *args)
    run_to_end("predict", tiff, tmp_path / "fresh" / "mask.zarr", *args)
    resumed = zarr.open_group(str(out), mode="r")
    fresh = zarr.open_group(str(tmp_path / "fresh" / "mask.zarr"), mode="r")
    assert resumed.attrs.asdict() == fresh.attrs.asdict()
    assert sorted(resumed.array_keys()) == sorted(fresh.array_keys()) and "probabilities" in fresh
    for name in fresh.array_keys():
        np.testing.assert_array_equal(resumed[name][...], fresh[name][...], err_msg=name)
