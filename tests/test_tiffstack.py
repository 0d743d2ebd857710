"""TiffStack: lazy slice-folder reading, partial reads, and validation of broken folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from selma3d.errors import InputError
from selma3d.io.tiffstack import TiffStack, natural_key, write_slices
from selma3d.io.volume import open_volume

SHAPE = (20, 48, 40)
LAYOUTS = {
    "uncompressed": {},
    "zlib-strips": {"compression": "zlib", "rowsperstrip": 8},
    "zlib-tiles": {"compression": "zlib", "tile": (16, 16)},
}
KEYS = [
    np.s_[...], np.s_[3], np.s_[-1], np.s_[2:15:4, 7, 3:33], np.s_[-1, 5:30:3, ::-2],
    np.s_[::-3, -10:, 17], np.s_[5:5], np.s_[..., 3], np.s_[1:3, 40:2:-5, ...], np.s_[4:9, 10:27, 5:36],
    np.s_[:, -1, -1], np.s_[7:2], np.s_[19, 47, 39],
]


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(0)
    return rng.integers(-2000, 2000, SHAPE).astype(np.int16)


@pytest.fixture(scope="module", params=list(LAYOUTS))
def stack_folder(request, volume, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    write_slices(folder, volume, **LAYOUTS[request.param])
    return folder


def test_round_trip_and_basic_slicing_match_numpy(stack_folder, volume):
    stack = TiffStack(stack_folder)
    assert stack.shape == volume.shape and stack.dtype == np.int16 and stack.ndim == 3 and len(stack) == 20
    assert np.array_equal(np.asarray(stack), volume)
    for key in KEYS:
        got, want = stack[key], volume[key]
        assert got.shape == want.shape, key
        assert np.array_equal(got, want), key


def test_region_reads_fewer_bytes_than_whole_slices(stack_folder, volume):
    stack = TiffStack(stack_folder)
    stack[:]
    whole = stack.bytes_read
    assert whole >= volume.nbytes * 0.9  # zlib on random data barely compresses
    stack.bytes_read = 0
    stack[3:6]
    assert stack.bytes_read <= whole * 3 / 20 * 1.05  # only the files of z 3..5
    stack.bytes_read = 0
    part = stack[:, 10:18, 20:36]
    assert np.array_equal(part, volume[:, 10:18, 20:36])
    assert stack.bytes_read < whole / 2  # only the rows (strips/tiles) covering y 10..18


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
@pytest.mark.parametrize("layout", ["uncompressed", "zlib-tiles"])
def test_os_level_reads_are_partial(tmp_path, layout):
    """Independent of our own counter: the kernel's count of bytes read by this process."""
    rng = np.random.default_rng(1)
    big = rng.integers(-2000, 2000, (4, 256, 256)).astype(np.int16)
    write_slices(tmp_path, big, **LAYOUTS[layout])
    stack = TiffStack(tmp_path)

    def rchar():
        return int(dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())["rchar"])

    stack[:, :1, :1]  # warm-up (imports, caches)
    before = rchar()
    region = stack[:, 100:116, 0:32]
    partial = rchar() - before
    before = rchar()
    stack[:]
    full = rchar() - before
    assert np.array_equal(region, big[:, 100:116, 0:32])
    assert full >= 0.9 * sum(p.stat().st_size for p in stack.files)
    assert partial < full / 4


def test_natural_sort_of_unpadded_names(tmp_path, volume):
    write_slices(tmp_path, volume[:12], prefix="img", digits=1, start=1)  # img1.tif ... img12.tif
    assert sorted(["img10", "img2", "img1"], key=natural_key) == ["img1", "img2", "img10"]
    stack = TiffStack(tmp_path)
    assert [p.name for p in stack.files[:3]] == ["img1.tif", "img2.tif", "img3.tif"]
    assert np.array_equal(stack[:], volume[:12])


def test_write_slices_is_atomic_and_accepts_iterables(tmp_path, volume):
    paths = write_slices(tmp_path, (plane for plane in volume[:3]), start=5)
    assert [p.name for p in paths] == ["slice_00005.tif", "slice_00006.tif", "slice_00007.tif"]
    assert sorted(os.listdir(tmp_path)) == [p.name for p in paths]  # no temporary leftovers
    assert tifffile.imread(paths[1]).dtype == np.int16
    with pytest.raises(InputError, match="must be 2D"):
        write_slices(tmp_path, [np.zeros((2, 3, 4))])


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no slices here")
    with pytest.raises(InputError, match="no TIFF slices"):
        TiffStack(tmp_path)
    with pytest.raises(InputError, match="no such file"):
        open_volume(tmp_path / "missing")


def test_missing_slice_is_named(tmp_path, volume):
    write_slices(tmp_path, volume[:6])
    (tmp_path / "slice_00003.tif").unlink()
    with pytest.raises(InputError, match=r"missing slice 3 \(slice_00003.tif\)"):
        TiffStack(tmp_path)


def test_stray_file_with_other_name_is_named(tmp_path, volume):
    write_slices(tmp_path, volume[:3])
    tifffile.imwrite(tmp_path / "overview.tif", volume[0])
    with pytest.raises(InputError, match="overview.tif"):
        TiffStack(tmp_path)


@pytest.mark.parametrize("bad", ["shape", "dtype"])
def test_inconsistent_slice_is_named(tmp_path, volume, bad):
    write_slices(tmp_path, volume[:5])
    odd = volume[2, :40] if bad == "shape" else volume[2].astype(np.uint16)
    tifffile.imwrite(tmp_path / "slice_00002.tif", odd)
    with pytest.raises(InputError, match="slice_00002.tif"):
        TiffStack(tmp_path)


def test_corrupt_header_is_named_at_open(tmp_path, volume):
    write_slices(tmp_path, volume[:4])
    (tmp_path / "slice_00001.tif").write_bytes(b"this is not a TIFF file at all")
    with pytest.raises(InputError, match="slice_00001.tif"):
        TiffStack(tmp_path)


@pytest.mark.parametrize("layout", ["uncompressed", "zlib-strips"])
def test_truncated_data_is_named_at_read(tmp_path, volume, layout):
    write_slices(tmp_path, volume[:4], **LAYOUTS[layout])
    path = tmp_path / "slice_00002.tif"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header (at the start) intact, pixel data cut
    stack = TiffStack(tmp_path)
    assert np.array_equal(stack[1], volume[1])
    with pytest.raises(InputError, match="slice_00002.tif"):
        stack[:]


def test_index_errors(stack_folder):
    stack = TiffStack(stack_folder)
    with pytest.raises(IndexError):
        stack[20]
    with pytest.raises(IndexError):
        stack[0, 0, 0, 0]
    with pytest.raises(IndexError):
        stack[[1, 2]]


def test_known_uncompressed_slices_are_read_without_parsing_headers_again(tmp_path, volume, monkeypatch):
    """The second read of a slice skips tifffile's header parsing; a slice rewritten on disk
    (new time stamp) is parsed afresh, so it is never read at a stale offset."""
    write_slices(tmp_path, volume[:6])
    stack = TiffStack(tmp_path)
    assert np.array_equal(stack[:, 3:9, 5:20], volume[:6, 3:9, 5:20])
    parsed = []
    real = tifffile.TiffFile

    def counting(*args, **kwargs):
        parsed.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(tifffile, "TiffFile", counting)
    assert np.array_equal(stack[:, 10:30, 0:7], volume[:6, 10:30, 0:7])
    assert parsed == []
    replaced = volume[2][::-1].copy()
    path = tmp_path / "slice_00002.tif"
    tifffile.imwrite(path, replaced, compression="zlib", tile=(16, 16))  # other layout, same shape
    os.utime(path, ns=(1, 1))
    assert np.array_equal(stack[2], replaced)
    assert parsed == [path]
    assert np.array_equal(stack[2, 4:8], replaced[4:8])  # compressed: parsed on every read
    assert len(parsed) == 2


def test_first_read_parses_no_header_again(tmp_path, volume, monkeypatch):
    """Opening the stack checks every header; it keeps the pixel offsets it found then, so even
    the first read of an uncompressed slice parses nothing."""
    write_slices(tmp_path, volume[:6])
    stack = TiffStack(tmp_path)
    parsed = []
    real = tifffile.TiffFile

    def counting(*args, **kwargs):
        parsed.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(tifffile, "TiffFile", counting)
    assert np.array_equal(stack[:, 2:9, 3:30], volume[:6, 2:9, 3:30])
    assert np.array_equal(stack[4, 5, 6], volume[4, 5, 6])
    assert parsed == []


def _opens(monkeypatch):
    """Paths passed to os.open from now on."""
    opened = []
    real = os.open

    def counting(path, *args, **kwargs):
        opened.append(os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting)
    return opened


def test_slice_files_stay_open_between_reads(tmp_path, volume, monkeypatch):
    """A known slice is read through a descriptor kept open (no open/close per read), in a
    bounded least-recently-used set."""
    from selma3d.io import tiffstack

    tiffstack.close_open_files()
    monkeypatch.setattr(tiffstack, "OPEN_FILES", 3)
    write_slices(tmp_path, volume[:6])
    stack = TiffStack(tmp_path)
    opened = _opens(monkeypatch)
    assert np.array_equal(stack[0:3, 4:20, 0:9], volume[0:3, 4:20, 0:9])
    assert len(opened) == 3
    for _ in range(3):
        assert np.array_equal(stack[0:3, 1:30, 7:22], volume[0:3, 1:30, 7:22])
        assert np.array_equal(stack[1], volume[1])
    assert len(opened) == 3  # read again through the open descriptors
    assert np.array_equal(stack[3:6], volume[3:6])
    assert len(tiffstack._OPEN.entries) == 3 and len(opened) == 6  # bounded: slices 0..2 were closed
    assert np.array_equal(stack[0], volume[0])
    assert len(opened) == 7
    tiffstack.close_open_files()
    assert not tiffstack._OPEN.entries


@pytest.mark.parametrize("how", ["renamed over", "rewritten in place"])
def test_a_slice_changed_on_disk_is_read_anew_even_with_its_file_open(tmp_path, volume, how):
    """The cached descriptor is used only while the path still names the same file, unchanged:
    a slice replaced by a rename (what write_slices does; same size, even the same time stamp)
    or rewritten in place is read from the new contents, never from the old open file."""
    write_slices(tmp_path, volume[:4])
    stack = TiffStack(tmp_path)
    assert np.array_equal(stack[:, 3:12, 5:25], volume[:4, 3:12, 5:25])  # descriptors now open
    path = tmp_path / "slice_00002.tif"
    stamp = path.stat()
    replaced = (volume[2] // 3 + 7).astype(np.int16)
    if how == "renamed over":
        write_slices(tmp_path, replaced[None], start=2)
        os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # the same time stamp and size
        assert path.stat().st_size == stamp.st_size and path.stat().st_ino != stamp.st_ino
    else:
        with open(path, "r+b") as handle:  # same file (inode), new pixels, new time stamp
            offset = tifffile.TiffFile(path).pages.first.dataoffsets[0]
            handle.seek(offset)
            handle.write(replaced.tobytes())
        os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
        assert path.stat().st_ino == stamp.st_ino
    assert np.array_equal(stack[2, 3:12, 5:25], replaced[3:12, 5:25])
    assert np.array_equal(stack[:, 3:12, 5:25], np.stack([volume[0], volume[1], replaced, volume[3]])[:, 3:12, 5:25])


def test_big_endian_slices_read_through_the_fast_path(tmp_path, volume):
    for z in range(3):
        tifffile.imwrite(tmp_path / f"slice_{z:05d}.tif", volume[z], byteorder=">", photometric="minisblack")
    stack = TiffStack(tmp_path)
    assert stack.dtype == np.int16
    for _ in range(2):  # parsed at open, then through the cached descriptors
        assert np.array_equal(stack[:, 5:17, 2:30], volume[:3, 5:17, 2:30])
        assert np.array_equal(stack[1], volume[1])


def test_threads_share_the_open_files_safely(tmp_path, volume, monkeypatch):
    """Reads from several threads through a tiny descriptor cache: a descriptor evicted while
    another thread reads through it is closed only after that read."""
    from concurrent.futures import ThreadPoolExecutor

    from selma3d.io import tiffstack

    tiffstack.close_open_files()
    monkeypatch.setattr(tiffstack, "OPEN_FILES", 2)
    write_slices(tmp_path, volume)
    stack = TiffStack(tmp_path)

    def reader(seed):
        rng = np.random.default_rng(seed)
        for _ in range(60):
            z0, y0, x0 = (int(rng.integers(0, n - 4)) for n in volume.shape)
            assert np.array_equal(stack[z0:z0 + 4, y0:y0 + 4, x0:], volume[z0:z0 + 4, y0:y0 + 4, x0:])
        return True

    with ThreadPoolExecutor(6) as pool:
        assert all(pool.map(reader, range(6)))
    assert len(tiffstack._OPEN.entries) <= 2
    tiffstack.close_open_files()
