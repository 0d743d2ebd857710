"""Readers for what labs have: multi-page TIFF / OME-TIFF / ImageJ stacks, OME-Zarr from other
writers (NGFF 0.4 on zarr v2, 0.5 on zarr v3, validated), spacing from the files, and every
supported dtype normalized the same way."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from own_data_files import write_foreign_ome_zarr
from selma3d.errors import InputError
from selma3d.io.volume import open_volume, volume_spacing

RNG = np.random.default_rng(0)
VOLUME = RNG.integers(0, 65535, (10, 24, 20)).astype(np.uint16)  # values above 32767: no int16 wrap


# ------------------------------------------------------------------------------- TIFF files

@pytest.mark.parametrize("options", [{}, {"compression": "zlib"}, {"compression": "zlib", "tile": (16, 16)},
                                     {"rowsperstrip": 3}], ids=["contiguous", "zlib", "zlib-tiles", "strips"])
def test_multipage_tiff_reads_lazily_like_numpy(tmp_path, options):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, VOLUME, photometric="minisblack", **options)
    volume = open_volume(path)
    assert volume.shape == VOLUME.shape and volume.dtype == np.uint16 and volume.ndim == 3
    for key in [(slice(2, 7), slice(3, 19), slice(1, 13)), 4, (Ellipsis, 5), (slice(None), 0)]:
        np.testing.assert_array_equal(volume[key], VOLUME[key])
    assert isinstance(volume[1:3], np.ndarray) and type(volume[1:3]) is np.ndarray
    np.testing.assert_array_equal(np.asarray(volume), VOLUME)


def test_contiguous_stack_is_memory_mapped_and_compressed_one_goes_through_zarr(tmp_path):
    import zarr

    plain, packed = tmp_path / "plain.tif", tmp_path / "packed.tif"
    tifffile.imwrite(plain, VOLUME, photometric="minisblack")
    tifffile.imwrite(packed, VOLUME, photometric="minisblack", compression="zlib")
    assert isinstance(open_volume(plain).base, np.memmap)
    assert isinstance(open_volume(packed).base, zarr.Array)


def test_singleton_channel_and_time_axes_are_dropped(tmp_path):
    path = tmp_path / "tczyx.ome.tif"
    tifffile.imwrite(path, VOLUME[None, :, None], metadata={"axes": "TZCYX"})
    np.testing.assert_array_equal(open_volume(path)[2:5, :, 3], VOLUME[2:5, :, 3])


@pytest.mark.parametrize("data, axes, message", [
    (np.zeros((10, 2, 8, 8), np.uint16), "ZCYX", "2 channels"),
    (np.zeros((3, 10, 8, 8), np.uint16), "TZYX", "3 time points"),
    (np.zeros((8, 8), np.uint16), "YX", "single 2D image"),
])
def test_tiff_layouts_selma3d_cannot_segment_are_refused_naming_the_file(tmp_path, data, axes, message):
    path = tmp_path / "bad.ome.tif"
    tifffile.imwrite(path, data, metadata={"axes": axes})
    with pytest.raises(InputError, match=message) as info:
        open_volume(path)
    assert str(info.value).startswith(str(path))


def test_corrupt_tiff_is_one_input_error(tmp_path):
    path = tmp_path / "broken.tif"
    path.write_bytes(b"II*\x00garbage")
    with pytest.raises(InputError, match="broken.tif: cannot read TIFF"):
        open_volume(path)


def test_ome_tiff_physical_size_with_units(tmp_path):
    path = tmp_path / "s.ome.tif"
    tifffile.imwrite(path, VOLUME, metadata={"axes": "ZYX", "PhysicalSizeZ": 4000, "PhysicalSizeZUnit": "nm",
                                             "PhysicalSizeY": 1.8, "PhysicalSizeX": 1.8})
    assert volume_spacing(path) == pytest.approx((4.0, 1.8, 1.8))


def test_imagej_spacing_and_resolution(tmp_path):
    path = tmp_path / "fiji.tif"
    tifffile.imwrite(path, VOLUME, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                     metadata={"spacing": 3.0, "unit": "um", "axes": "ZYX"})
    assert volume_spacing(path) == pytest.approx((3.0, 0.5, 0.5))


def test_plain_tiff_records_no_spacing(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, VOLUME, photometric="minisblack")
    assert volume_spacing(path) is None


def test_pyramid_level_of_a_tiff(tmp_path):
    path = tmp_path / "pyr.ome.tif"
    big = np.repeat(np.repeat(VOLUME, 2, axis=1), 2, axis=2)
    with tifffile.TiffWriter(path) as tif:
        tif.write(big, subifds=1, metadata={"axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeY": 1.0,
                                            "PhysicalSizeX": 1.0})
        tif.write(big[:, ::2, ::2], subfiletype=1)
    assert open_volume(path).shape == big.shape
    level = open_volume(path, level=1)
    np.testing.assert_array_equal(level[:], VOLUME)
    assert volume_spacing(path, level=1) == pytest.approx((2.0, 2.0, 2.0))
    with pytest.raises(InputError, match="level 2 does not exist"):
        open_volume(path, level=2)


# ---------------------------------------------------------------------- foreign OME-Zarr

@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_foreign_ome_zarr_levels_axes_and_spacing(tmp_path, version):
    store = write_foreign_ome_zarr(tmp_path / "img.ome.zarr", VOLUME, spacing_zyx=(2.0, 0.5, 0.5), version=version,
                                   unit="nanometer")
    volume = open_volume(store)
    assert volume.shape == VOLUME.shape
    np.testing.assert_array_equal(volume[1:4, 5:9], VOLUME[1:4, 5:9])
    np.testing.assert_array_equal(open_volume(store, level=1)[:], VOLUME[::2, ::2, ::2])
    np.testing.assert_array_equal(open_volume(store / "1")[:], VOLUME[::2, ::2, ::2])  # a level's own path
    assert volume_spacing(store) == pytest.approx((2e-3, 5e-4, 5e-4))  # nanometers → micrometers
    assert volume_spacing(store, level=1) == pytest.approx((4e-3, 1e-3, 1e-3))
    assert volume_spacing(store / "1") == pytest.approx((4e-3, 1e-3, 1e-3))
    with pytest.raises(InputError, match="level 5 does not exist"):
        open_volume(store, level=5)


def test_bioformats2raw_layout_opens_its_first_image(tmp_path):
    import zarr

    root = tmp_path / "b2r.zarr"
    zarr.open_group(str(root), mode="w", zarr_format=2).attrs["bioformats2raw.layout"] = 3
    write_foreign_ome_zarr(root / "0", VOLUME)
    np.testing.assert_array_equal(open_volume(root)[:], VOLUME)


def _edit(store, change):
    attrs_path = store / ".zattrs"
    attrs = json.loads(attrs_path.read_text())
    change(attrs["multiscales"][0])
    attrs_path.write_text(json.dumps(attrs))


BROKEN = {
    "no-datasets": (lambda ms: ms.update(datasets=[]), "datasets: must be a non-empty list"),
    "axes-strings": (lambda ms: ms.update(axes=["c", "z", "y", "x"]), "axes: every axis must be an object"),
    "axes-duplicate": (lambda ms: ms["axes"][2].update(name="z"), "unique"),
    "axes-order": (lambda ms: ms.update(axes=ms["axes"][1:] + ms["axes"][:1]), "order must be time, channel"),
    "two-space": (lambda ms: ms["axes"][1].update(type="other"), "a 2D image"),
    "bad-unit": (lambda ms: ms["axes"][3].update(unit="pixel"), "unit 'pixel'"),
    "translation-first": (lambda ms: ms["datasets"][0].update(coordinateTransformations=[
        {"type": "translation", "translation": [0, 0, 0, 0]}, {"type": "scale", "scale": [1, 1, 1, 1]}]),
        "exactly one 'scale' transformation, first"),
    "scale-length": (lambda ms: ms["datasets"][0]["coordinateTransformations"][0].update(scale=[1, 1, 1]),
                     "must be 4 numbers"),
    "scale-zero": (lambda ms: ms["datasets"][0]["coordinateTransformations"][0].update(scale=[1, 0, 1, 1]),
                   "positive"),
    "missing-level": (lambda ms: ms["datasets"][1].update(path="7"), "level named in the OME metadata is missing"),
    "levels-reversed": (lambda ms: ms.update(datasets=ms["datasets"][::-1]), "largest to the smallest"),
    "old-version": (lambda ms: ms.update(version="0.3"), "'0.3' is not supported"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_ome_zarr_metadata_against_the_spec(tmp_path, name):
    store = write_foreign_ome_zarr(tmp_path / "img.ome.zarr", VOLUME)
    change, message = BROKEN[name]
    _edit(store, change)
    with pytest.raises(InputError, match=message) as info:
        open_volume(store)
    assert str(info.value).startswith(str(store))


def test_several_channels_in_ome_zarr_are_refused(tmp_path):
    store = write_foreign_ome_zarr(tmp_path / "img.ome.zarr", VOLUME)
    import zarr

    zarr.open_array(str(store / "0"), mode="r+").resize((2,) + VOLUME.shape)
    with pytest.raises(InputError, match="axis 'c' \\(channel\\) has 2 entries"):
        open_volume(store)


def test_selma3d_own_stores_still_validate(tmp_path):
    from selma3d.io.zarr_convert import convert_to_zarr

    data = RNG.integers(0, 4000, (64, 64, 64)).astype(np.uint16)
    store = convert_to_zarr(data, tmp_path / "own.zarr", chunks=32, spacing=(2, 1, 1), progress=False)
    assert volume_spacing(store) == (2.0, 1.0, 1.0) and volume_spacing(store, level=1) == (4.0, 2.0, 2.0)


# ------------------------------------------------------------------------------ dtypes

def test_every_supported_dtype_normalizes_the_same_way(tmp_path):
    """The same scene stored as uint8, uint16, int16 and float32 (other offsets and gains, as
    other cameras or exports give it) reaches the network as the same [-1, 1] image."""
    from scipy.ndimage import gaussian_filter

    from selma3d.data.normalize import DEFAULT_NORMALIZATION, normalize

    rng = np.random.default_rng(1)
    scene = gaussian_filter((rng.random((16, 48, 48)) > 0.995).astype(np.float32), 1.0) * 40
    scene += rng.normal(0, 0.1, scene.shape)
    stored = {
        "uint8": np.clip(np.rint(40 + scene * 30), 0, 255).astype(np.uint8),
        "uint16": np.clip(np.rint(40000 + scene * 1000), 0, 65535).astype(np.uint16),
        "int16": np.clip(np.rint(-300 + scene * 700), -32768, 32767).astype(np.int16),
        "float32": (0.5 + scene * 0.01).astype(np.float32),
    }
    results = {}
    for name, array in stored.items():
        path = tmp_path / f"{name}.tif"
        tifffile.imwrite(path, array, photometric="minisblack")
        volume = open_volume(path)
        assert volume.dtype == np.dtype(name)
        stats = DEFAULT_NORMALIZATION.volume_statistics(volume)
        results[name] = normalize(volume[:], *stats)
    reference = results["float32"]
    for name, normalized in results.items():
        assert np.abs(normalized - reference).mean() < 0.02, name
        assert np.corrcoef(normalized.ravel(), reference.ravel())[0, 1] > 0.99, name
