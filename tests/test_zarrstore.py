"""OME-Zarr conversion: content, pyramid, OME-NGFF 0.5 metadata, bounded slabs, resume, refusal."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from selma3d.errors import InputError, Selma3dError
from selma3d.io.tiffstack import write_slices
from selma3d.io.volume import open_volume, volume_spacing
from selma3d.io.zarr_convert import convert_to_zarr
from selma3d.io.zarrstore import downsample_mean, open_zarr_volume, pyramid_shapes, zarr_spacing

SHAPE = (20, 48, 40)


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(0)
    return rng.integers(-2000, 2000, SHAPE).astype(np.int16)


class Recording:
    """An array-like that records which z ranges were read, and can fail after some reads."""

    def __init__(self, data, fail_after=None, alter_after=None):
        self.data, self.fail_after, self.alter_after = data, fail_after, alter_after
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.reads = []

    def __getitem__(self, key):
        z = key[0] if isinstance(key, tuple) else key
        if self.fail_after is not None and len(self.reads) >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.reads.append((z.start, z.stop))
        out = self.data[key].copy()
        if self.alter_after is not None and len(self.reads) > self.alter_after:
            out[0, 0, 0] += 1  # the input changed under us: verification must notice
        return out


@pytest.mark.parametrize("shape", [(4, 6, 8), (5, 7, 9), (1, 1, 1), (6, 5, 4), (1, 8, 3)])
def test_downsample_mean_is_the_mean_of_edge_padded_2x_blocks(shape):
    block = np.random.default_rng(2).integers(-3000, 3000, shape).astype(np.int16)
    padded = np.pad(block, [(0, n % 2) for n in shape], mode="edge")
    z, y, x = (n // 2 for n in padded.shape)
    expected = np.rint(padded.reshape(z, 2, y, 2, x, 2).mean(axis=(1, 3, 5))).astype(np.int16)
    out = downsample_mean(block)
    assert out.dtype == np.int16
    assert np.array_equal(out, expected)


def test_pyramid_shapes_stop_at_min_size_and_level_cap():
    assert pyramid_shapes((300, 260, 129)) == [(300, 260, 129), (150, 130, 65), (75, 65, 33)]
    assert pyramid_shapes((300, 260, 129), max_levels=2) == [(300, 260, 129), (150, 130, 65)]
    assert pyramid_shapes(SHAPE) == [SHAPE]
    with pytest.raises(InputError):
        pyramid_shapes(SHAPE, max_levels=0)


def test_conversion_content_pyramid_and_ome_metadata(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.integers(-500, 500, (70, 66, 80)).astype(np.int16)
    out = convert_to_zarr(data, tmp_path / "v.zarr", chunks=16, spacing=(2.0, 0.5, 0.5), progress=False)
    level0, level1 = open_zarr_volume(out), open_zarr_volume(out, level=1)
    assert np.array_equal(level0[:], data)
    assert level0.chunks == (16, 16, 16) and level1.shape == (35, 33, 40)
    assert np.array_equal(level1[:], downsample_mean(data))
    with pytest.raises(InputError, match="level 2 does not exist"):
        open_zarr_volume(out, level=2)

    meta = json.loads((out / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["node_type"] == "group"
    ome = meta["attributes"]["ome"]
    assert ome["version"] == "0.5"
    ms = ome["multiscales"][0]
    assert [(a["name"], a["type"], a["unit"]) for a in ms["axes"]] == [
        ("z", "space", "micrometer"), ("y", "space", "micrometer"), ("x", "space", "micrometer")]
    scales = [ds["coordinateTransformations"][0] for ds in ms["datasets"]]
    assert scales == [{"type": "scale", "scale": [2.0, 0.5, 0.5]}, {"type": "scale", "scale": [4.0, 1.0, 1.0]}]
    assert [ds["path"] for ds in ms["datasets"]] == ["0", "1"]
    assert json.loads((out / "1" / "zarr.json").read_text())["dimension_names"] == ["z", "y", "x"]
    assert volume_spacing(out) == (2.0, 0.5, 0.5)
    assert zarr_spacing(out / "1") == (4.0, 1.0, 1.0)
    assert open_volume(out / "1").shape == (35, 33, 40)


def test_reads_are_bounded_to_one_chunk_depth(tmp_path, volume):
    source = Recording(volume)
    convert_to_zarr(source, tmp_path / "v.zarr", chunks=8, progress=False)
    assert max(stop - start for start, stop in source.reads) <= 8
    # level 0 written once (3 slabs) + verified once (3 slabs)
    assert sorted(source.reads) == sorted([(0, 8), (8, 16), (16, 20)] * 2)


def test_killed_conversion_looks_incomplete_then_resumes(tmp_path, volume):
    out = tmp_path / "v.zarr"
    with pytest.raises(KeyboardInterrupt):
        convert_to_zarr(Recording(volume, fail_after=2), out, chunks=8, progress=False)
    assert "ome" not in zarr.open_group(str(out), mode="r").attrs
    with pytest.raises(InputError, match="incomplete"):
        open_volume(out)
    with pytest.raises(InputError, match="incomplete"):
        open_volume(out / "0")

    resumed = Recording(volume)
    convert_to_zarr(resumed, out, chunks=8, progress=False)
    assert resumed.reads[0] == (16, 20)  # only the missing slab is converted, then all is verified
    assert sorted(resumed.reads[1:]) == [(0, 8), (8, 16), (16, 20)]
    assert np.array_equal(open_volume(out)[:], volume)

    again = Recording(volume)
    convert_to_zarr(again, out, chunks=8, progress=False)
    assert again.reads == []  # already complete: nothing to do


def test_store_from_other_input_or_options_is_refused(tmp_path, volume):
    first, second = tmp_path / "a", tmp_path / "b"
    write_slices(first, volume)
    write_slices(second, volume[:, :, ::-1])
    out = tmp_path / "v.zarr"
    convert_to_zarr(first, out, chunks=8, progress=False)
    with pytest.raises(InputError, match="was converted from"):
        convert_to_zarr(second, out, chunks=8, progress=False)
    with pytest.raises(InputError, match="chunks=8, now chunks=16"):
        convert_to_zarr(first, out, chunks=16, progress=False)
    convert_to_zarr(second, out, chunks=16, overwrite=True, progress=False)
    assert np.array_equal(open_volume(out)[:], volume[:, :, ::-1])
    assert open_volume(out).chunks == (16, 16, 16)


def test_overwrite_refuses_a_folder_that_is_not_a_store(tmp_path, volume):
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "thesis.txt").write_text("do not delete")
    with pytest.raises(InputError, match="not a Zarr store"):
        convert_to_zarr(volume, keep, overwrite=True, progress=False)
    with pytest.raises(InputError, match="not written by 'selma3d convert'"):
        convert_to_zarr(volume, keep, progress=False)
    assert (keep / "thesis.txt").read_text() == "do not delete"


def test_verification_failure_leaves_store_incomplete(tmp_path, volume):
    out = tmp_path / "v.zarr"
    with pytest.raises(Selma3dError, match="verification failed: level 0 slice 0"):
        convert_to_zarr(Recording(volume, alter_after=3), out, chunks=8, progress=False)
    with pytest.raises(InputError, match="incomplete"):
        open_zarr_volume(out)


def test_bad_arguments(tmp_path, volume):
    with pytest.raises(InputError, match="3D"):
        convert_to_zarr(volume[0], tmp_path / "a.zarr", progress=False)
    with pytest.raises(InputError, match="--spacing"):
        convert_to_zarr(volume, tmp_path / "b.zarr", spacing=(1, 0, 1), progress=False)
    with pytest.raises(InputError, match="--chunks"):
        convert_to_zarr(volume, tmp_path / "c.zarr", chunks=0, progress=False)
    with pytest.raises(InputError, match="not a Zarr store"):
        open_zarr_volume(tmp_path)
