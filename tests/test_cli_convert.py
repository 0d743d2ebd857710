"""``selma3d convert`` through the real entry point: success, one-line errors, kill and resume."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from selma3d import cli
from selma3d.errors import InputError
from selma3d.io import tiffstack, zarr_convert, zarrstore
from selma3d.io.tiffstack import write_slices
from selma3d.io.volume import open_volume, volume_spacing

SHAPE = (20, 48, 40)


@pytest.fixture(scope="module")
def volume():
    return np.random.default_rng(0).integers(-2000, 2000, SHAPE).astype(np.int16)


@pytest.fixture
def slices(tmp_path, volume):
    write_slices(tmp_path / "slices", volume)
    return tmp_path / "slices"


def run_cli(monkeypatch, capsys, *args):
    """Run ``selma3d`` in this process exactly as the console script does; return (code, out, err)."""
    monkeypatch.setattr(sys, "argv", ["selma3d", *map(str, args)])
    try:
        cli.app()
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *fragments):
    assert code == 1
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def test_convert_writes_a_verified_store(tmp_path, slices, volume, monkeypatch, capsys):
    out = tmp_path / "brain.zarr"
    code, stdout, _ = run_cli(monkeypatch, capsys, "convert", slices, out, "--chunks", "8",
                              "--spacing", "3", "1.5", "1.5")
    assert code == 0 and "wrote" in stdout
    assert np.array_equal(open_volume(out)[:], volume)
    assert volume_spacing(out) == (3.0, 1.5, 1.5)


def test_missing_slice_gives_one_line_and_writes_nothing(tmp_path, slices, monkeypatch, capsys):
    (slices / "slice_00007.tif").unlink()
    out = tmp_path / "brain.zarr"
    code, _, err = run_cli(monkeypatch, capsys, "convert", slices, out)
    assert_one_line_error(code, err, "missing slice 7", "slice_00007.tif")
    assert not out.exists()


@pytest.mark.parametrize("problem", ["no such folder", "empty folder", "bad spacing"])
def test_bad_inputs_give_one_line(tmp_path, slices, monkeypatch, capsys, problem):
    source, extra = slices, []
    if problem == "no such folder":
        source = tmp_path / "nowhere"
    elif problem == "empty folder":
        source = tmp_path / "empty"
        source.mkdir()
    else:
        extra = ["--spacing", "1", "-2", "1"]
    code, _, err = run_cli(monkeypatch, capsys, "convert", source, tmp_path / "o.zarr", *extra)
    assert_one_line_error(code, err, str(source) if problem != "bad spacing" else "--spacing")
    assert not (tmp_path / "o.zarr").exists()


def test_corrupt_slice_mid_conversion_leaves_store_incomplete(tmp_path, slices, monkeypatch, capsys):
    bad = slices / "slice_00013.tif"
    bad.write_bytes(bad.read_bytes()[:1500])  # header intact, pixels cut: found only when read
    out = tmp_path / "brain.zarr"
    code, _, err = run_cli(monkeypatch, capsys, "convert", slices, out, "--chunks", "8")
    assert_one_line_error(code, err, "slice_00013.tif")
    with pytest.raises(InputError, match="incomplete"):
        open_volume(out)


def test_killed_conversion_resumes_and_verifies(tmp_path, slices, volume, monkeypatch, capsys):
    rng = np.random.default_rng(1)
    write_slices(slices, rng.integers(-2000, 2000, (44, 48, 40)).astype(np.int16), start=20)  # 64 slices
    full = np.concatenate([volume, np.asarray(open_volume(slices))[20:]])
    out = tmp_path / "brain.zarr"

    original_downsample = zarr_convert.downsample_mean

    def killed(_block):
        raise KeyboardInterrupt  # what Ctrl-C or a kill would do while the pyramid is built

    monkeypatch.setattr(zarrstore, "MIN_LEVEL_SIZE", 16)  # let this tiny volume have a level 1
    monkeypatch.setattr(zarr_convert, "downsample_mean", killed)
    args = ("convert", slices, out, "--chunks", "16", "--levels", "2")
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 130 and "interrupted" in err, (code, _, err)
    with pytest.raises(InputError, match="incomplete"):
        open_volume(out)
    monkeypatch.setattr(zarr_convert, "downsample_mean", original_downsample)

    reads = []
    original = tiffstack.TiffStack.read_region

    def counting(self, z, *rest):
        reads.append(z)
        return original(self, z, *rest)

    monkeypatch.setattr(tiffstack.TiffStack, "read_region", counting)
    code, stdout, _ = run_cli(monkeypatch, capsys, *args)
    assert code == 0 and "wrote" in stdout
    assert sorted(reads) == list(range(64))  # level 0 was kept: slices read once, for verification
    assert np.array_equal(open_volume(out)[:], full)
    assert zarrstore.open_zarr_volume(out, level=1).shape == (32, 24, 20)


def test_other_input_is_refused_unless_overwrite(tmp_path, slices, volume, monkeypatch, capsys):
    out = tmp_path / "brain.zarr"
    assert run_cli(monkeypatch, capsys, "convert", slices, out)[0] == 0
    other = tmp_path / "other"
    write_slices(other, volume[::-1])
    code, _, err = run_cli(monkeypatch, capsys, "convert", other, out)
    assert_one_line_error(code, err, "--overwrite")
    assert np.array_equal(open_volume(out)[:], volume)  # the old store is untouched
    assert run_cli(monkeypatch, capsys, "convert", other, out, "--overwrite", "--no-verify")[0] == 0
    assert np.array_equal(open_volume(out)[:], volume[::-1])


def test_console_script_prints_no_traceback(tmp_path):
    exe = Path(sys.executable).with_name("selma3d")
    if not exe.exists():
        pytest.skip("console script not installed")
    result = subprocess.run([str(exe), "convert", str(tmp_path / "nowhere"), str(tmp_path / "o.zarr")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'nowhere'}: no such file or folder"]
