"""A folder of 2D TIFF slices (one file per z) as a lazy (z, y, x) array.

Light-sheet volumes arrive as thousands of int16 slices; loading them whole is not an option.
:class:`TiffStack` checks every file's *header* when it is opened (cheap) and afterwards reads
only the slices, and inside each slice only the rows (uncompressed or stripped files) or tiles
(tiled files), that an index touches. tifffile parses the headers and decodes the segments; the
segment selection (which strips/tiles cover a row/column range) is the small part written here,
because tifffile's own readers (``asarray``, ``aszarr``) always work on a whole page or need a
zarr store per file.

Parsing a TIFF header costs about a millisecond, far more than reading the rows of a small
patch, and a random 32³ patch touches 32 files. So for uncompressed contiguous slices (what
microscopes and ``write_slices`` write) the pixel offset found when the stack is opened (every
header is checked then anyway) is remembered, keyed by the file's identity (device, inode, modification time, size); later reads of that slice
``stat`` the path and, when its identity is unchanged, read the rows at that offset with one
``preadv`` straight into the output array, without parsing the header again. The descriptors of
such slices stay open in a small per-process LRU (:data:`OPEN_FILES`, keyed by path), so a read
costs a ``stat`` and a ``preadv`` instead of ``stat`` + ``open`` + ``pread`` + ``close``. A slice
changed on disk (replaced by a rename: other inode; rewritten in place: other time stamp or size)
is parsed afresh and read through a new descriptor.
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

import numpy as np
import tifffile

from ..errors import InputError
from ..utils.atomic import atomic_path

TIFF_SUFFIXES = (".tif", ".tiff")
_NUMBERED = re.compile(r"^(.*?)(\d+)(\D*)$")


def natural_key(name: str):
    """Sort key that orders ``slice_2`` before ``slice_10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_slice_files(folder: str | os.PathLike) -> list[Path]:
    """The TIFF files of ``folder`` in natural order (hidden / temporary files are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder of TIFF slices")
    files = [p for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(TIFF_SUFFIXES)]
    if not files:
        raise InputError(f"{folder}: no TIFF slices (*.tif, *.tiff) in this folder")
    return sorted(files, key=lambda p: natural_key(p.name))


def _check_numbering(folder: Path, files: list[Path]) -> None:
    """Numbered slices must form one gap-free sequence: a missing z would shift everything after it."""
    matches = [_NUMBERED.match(p.name) for p in files]
    if not any(matches):
        return  # unnumbered names: natural order is all we have
    for path, match in zip(files, matches):
        if match is None:
            raise InputError(f"{path}: does not follow the numbered slice naming of {files[0].name}")
    pattern = (matches[0].group(1), matches[0].group(3))
    numbers = []
    for path, match in zip(files, matches):
        if (match.group(1), match.group(3)) != pattern:
            raise InputError(f"{path}: name does not match the slice pattern of {files[0].name} "
                             f"('{pattern[0]}<number>{pattern[1]}')")
        numbers.append(int(match.group(2)))
    for i in range(1, len(numbers)):
        if numbers[i] == numbers[i - 1]:
            raise InputError(f"{files[i]}: duplicate slice number {numbers[i]} (also {files[i - 1].name})")
        if numbers[i] != numbers[i - 1] + 1:
            missing = numbers[i - 1] + 1
            width = len(matches[i - 1].group(2))
            expected = f"{pattern[0]}{missing:0{width}d}{pattern[1]}"
            raise InputError(f"{folder}: missing slice {missing} ({expected}) between "
                             f"{files[i - 1].name} and {files[i].name}")


def _pread(fd: int, nbytes: int, offset: int) -> bytes:
    """``os.pread`` where the OS has it (POSIX), else seek + read."""
    if hasattr(os, "pread"):
        return os.pread(fd, nbytes, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, nbytes)


def _readinto(fd: int, buffer: np.ndarray, offset: int) -> int:
    """Read ``buffer.nbytes`` bytes at ``offset`` into the C-contiguous array ``buffer``
    (``os.preadv`` where the OS has it); returns the number of bytes read."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [buffer], offset)
    data = _pread(fd, buffer.nbytes, offset)
    buffer.reshape(-1).view(np.uint8)[:len(data)] = np.frombuffer(data, np.uint8)
    return len(data)


def _identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    """What says a slice file is still the one parsed: (device, inode, mtime in ns, size). A file
    replaced by a rename has another inode, one rewritten in place another time stamp or size."""
    return stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size


def _open_files_budget(most: int = 256) -> int:
    """Slice files to keep open: ``most``, at most a quarter of the process's descriptor limit;
    none on Windows, where a file held open cannot be replaced."""
    if os.name == "nt":
        return 0
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 64
    return most if soft == resource.RLIM_INFINITY else max(0, min(most, soft // 4))


#: slice files kept open per process (least recently used closed first; 0: open per read)
OPEN_FILES = _open_files_budget()


class _OpenFiles:
    """LRU of read-only descriptors of known uncompressed slices, keyed by path.

    An entry is ``[fd, identity, users, closed_on_release]``; ``identity`` is the ``fstat`` of
    the descriptor when it was opened. :meth:`acquire` hands out the entry only for the identity
    the caller just read with ``stat(path)``: while a descriptor is open its inode cannot be
    reused, so an equal (device, inode) means the path still names the open file, and an equal
    time stamp and size mean it was not rewritten. A descriptor evicted (or found stale) while
    another thread reads through it is closed when that read releases it.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.entries: OrderedDict[str, list] = OrderedDict()

    def acquire(self, path: str, identity: tuple) -> list | None:
        """An open entry for ``path`` with this identity (the caller must :meth:`release` it),
        or None when the file on disk is no longer that one."""
        with self.lock:
            entry = self.entries.get(path)
            if entry is not None:
                if entry[1] == identity:
                    entry[2] += 1
                    self.entries.move_to_end(path)
                    return entry
                self._drop(path)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            opened = _identity(os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        if opened != identity:  # replaced between the caller's stat and this open
            os.close(fd)
            return None
        entry = [fd, identity, 1, OPEN_FILES <= 0]
        if OPEN_FILES > 0:
            with self.lock:
                if path in self.entries:  # another thread opened it meanwhile: keep theirs
                    entry[3] = True
                else:
                    self.entries[path] = entry
                    while len(self.entries) > OPEN_FILES:
                        self._drop(next(iter(self.entries)))
        return entry

    def release(self, entry: list) -> None:
        with self.lock:
            entry[2] -= 1
            close = entry[3] and entry[2] == 0
        if close:
            os.close(entry[0])

    def _drop(self, path: str) -> None:
        """Forget ``path`` (lock held); close its descriptor now if no read uses it."""
        entry = self.entries.pop(path)
        entry[3] = True
        if entry[2] == 0:
            os.close(entry[0])

    def clear(self) -> None:
        """Close every cached descriptor (those in use when their read ends)."""
        with self.lock:
            for path in list(self.entries):
                self._drop(path)

    def after_fork(self) -> None:
        """In a forked child (a DataLoader worker): a fresh lock (the parent's may have been held
        by another thread) and no reads in flight; the inherited descriptors stay usable."""
        self.lock = threading.Lock()
        for entry in self.entries.values():
            entry[2] = 0


_OPEN = _OpenFiles()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_OPEN.after_fork)


def close_open_files() -> None:
    """Close the slice files :class:`TiffStack` keeps open (they are closed anyway when evicted
    or at exit; e.g. before deleting or unmounting a folder)."""
    _OPEN.clear()


def _read_header(path: Path) -> tuple[tuple[int, ...], np.dtype, tuple | None]:
    """(shape, dtype, raw) of a slice file; ``raw`` is (file identity, pixel data offset, on-disk
    dtype) for an uncompressed contiguous image (read later without parsing the header again),
    else None."""
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            shape, dtype, npages = page.shape, page.dtype, len(tif.pages)
            raw = None
            if dtype is not None and page.is_contiguous and page.compression == 1 and page.fillorder == 1:
                raw = (_identity(os.fstat(tif.filehandle.fileno())), int(page.dataoffsets[0]),
                       np.dtype(dtype).newbyteorder(tif.byteorder))
    except Exception as exc:  # tifffile raises several kinds for broken headers
        raise InputError(f"{path}: cannot read TIFF header ({type(exc).__name__}: {exc})") from None
    if npages != 1 or len(shape) != 2 or dtype is None:
        raise InputError(f"{path}: expected one 2D grayscale image per file, "
                         f"got {npages} page(s) of shape {shape}")
    return tuple(int(s) for s in shape), np.dtype(dtype), raw


def _normalize_key(key, shape):
    """Turn a numpy basic index into one ``int`` or ``range`` per axis (plus which axes drop)."""
    if not isinstance(key, tuple):
        key = (key,)
    if sum(k is Ellipsis for k in key) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if Ellipsis in key:
        i = key.index(Ellipsis)
        fill = len(shape) - (len(key) - 1)
        key = key[:i] + (slice(None),) * fill + key[i + 1:]
    if len(key) > len(shape):
        raise IndexError(f"too many indices: array is {len(shape)}-dimensional, {len(key)} were indexed")
    key = key + (slice(None),) * (len(shape) - len(key))
    out = []
    for axis, (k, n) in enumerate(zip(key, shape)):
        if isinstance(k, slice):
            out.append(range(*k.indices(n)))
        elif isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)):
            i = int(k) + n if k < 0 else int(k)
            if not 0 <= i < n:
                raise IndexError(f"index {int(k)} is out of bounds for axis {axis} with size {n}")
            out.append(i)
        else:
            raise IndexError("TiffStack supports basic indexing only (ints, slices, ...), "
                             f"got {type(k).__name__}")
    return out


def _span(r: range | int) -> tuple[int, int, slice | int]:
    """Contiguous [lo, hi) covering an index plus the local index that picks it from the span."""
    if isinstance(r, int):
        return r, r + 1, 0
    if len(r) == 0:
        return 0, 0, slice(0, 0)
    lo, hi = min(r), max(r) + 1
    stop = r.stop - lo
    return lo, hi, slice(r.start - lo, None if stop < 0 else stop, r.step)


class TiffStack:
    """Lazy, array-like (z, y, x) view of a folder of 2D TIFF slices (natural file-name order).

    Supports ``shape``, ``dtype``, ``ndim``, ``len()``, ``np.asarray`` and numpy basic slicing
    (ints, slices with steps, negative indices, ``...``); ``stack[z0:z1, y0:y1, x0:x1]`` returns
    a numpy array and reads only the files of z0..z1 and the rows/tiles of the region.
    ``bytes_read`` counts the image bytes read from disk so far.
    """

    def __init__(self, folder: str | os.PathLike, max_workers: int | None = None):
        self.path = Path(folder)
        self.files = list_slice_files(self.path)
        _check_numbering(self.path, self.files)
        shape, dtype, raw = _read_header(self.files[0])
        #: z -> (file identity, pixel data offset, on-disk dtype) of uncompressed slices, from the
        #: header check here, so even a slice's first read parses nothing
        self._raw: dict[int, tuple[tuple[int, int, int, int], int, np.dtype]] = {0: raw} if raw else {}
        for z, path in enumerate(self.files[1:], start=1):
            other_shape, other_dtype, raw = _read_header(path)
            if other_shape != shape or other_dtype != dtype:
                raise InputError(f"{path}: slice is {other_shape[0]}x{other_shape[1]} {other_dtype}, "
                                 f"but {self.files[0].name} is {shape[0]}x{shape[1]} {dtype}")
            if raw:
                self._raw[z] = raw
        self.shape = (len(self.files),) + shape
        self.dtype = dtype
        self.max_workers = max_workers or min(4, os.cpu_count() or 1)
        self.bytes_read = 0
        self._lock = threading.Lock()
        self._paths = [os.fspath(p) for p in self.files]

    ndim = 3

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __repr__(self) -> str:
        return f"TiffStack({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"

    def __array__(self, dtype=None, copy=None):
        data = self[...]
        return data if dtype is None else data.astype(dtype, copy=False)

    def __getitem__(self, key) -> np.ndarray:
        zs, ys, xs = _normalize_key(key, self.shape)
        y0, y1, ylocal = _span(ys)
        x0, x1, xlocal = _span(xs)
        z_list = [zs] if isinstance(zs, int) else list(zs)

        def read(z):
            return self.read_region(z, y0, y1, x0, x1)[ylocal, xlocal]

        # Threads pay off for decoding compressed segments or reading large regions; the known
        # uncompressed rows of a small region are read faster in this thread.
        known = all(z in self._raw for z in z_list)
        large = (y1 - y0) * self.shape[2] * self.dtype.itemsize >= (1 << 20)
        if known and not large and z_list and (y1 - y0) * (x1 - x0) > 0:
            rows = self._read_known(z_list, y0, y1)
            block = rows[:, :, x0:x1][(slice(None), ylocal, xlocal)]
            if isinstance(zs, int):
                block = block[0]
            return np.ascontiguousarray(block) if isinstance(block, np.ndarray) else block
        if len(z_list) >= 4 and self.max_workers > 1 and (y1 - y0) * (x1 - x0) > 0 and (large or not known):
            with ThreadPoolExecutor(self.max_workers) as pool:
                planes = list(pool.map(read, z_list))
        else:
            planes = [read(z) for z in z_list]
        if isinstance(zs, int):
            return planes[0]
        if not planes:
            rows = 1 if isinstance(ys, int) else len(ys)
            cols = 1 if isinstance(xs, int) else len(xs)
            empty = np.empty((0, rows, cols), self.dtype)
            return empty[(slice(None),) + tuple(0 if isinstance(a, int) else slice(None) for a in (ys, xs))]
        return np.stack(planes)

    def _read_known(self, z_list: list[int], y0: int, y1: int) -> np.ndarray:
        """Whole rows y0..y1 of slices ``z_list`` (all in ``self._raw``) as one (n, rows, width)
        array, each slice read straight into its plane (a ``stat`` and one ``preadv`` through a
        cached descriptor while the file is unchanged)."""
        width = self.shape[2]
        rows = np.empty((len(z_list), y1 - y0, width), self.dtype)
        for i, z in enumerate(z_list):
            self.read_region(z, y0, y1, 0, width, rows[i])
        return rows

    def _read_cached(self, z: int, path: str, y0: int, y1: int, x0: int, x1: int, out: np.ndarray) -> bool:
        """Region of known uncompressed slice ``z`` into ``out`` through a cached descriptor, if
        the file on disk is still the one parsed; False (nothing read) if it is not."""
        known = self._raw.get(z)
        if known is None:
            return False
        identity = _identity(os.stat(path))
        if known[0] != identity:
            return False
        entry = _OPEN.acquire(path, identity)
        if entry is None:
            return False
        try:
            self._read_rows(entry[0], known[1], known[2], y0, y1, x0, x1, out)
        finally:
            _OPEN.release(entry)
        return True

    def read_region(self, z: int, y0: int, y1: int, x0: int, x1: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows y0..y1, columns x0..x1 of slice ``z``, reading only the segments that cover them
        (into ``out`` when given: a C-contiguous array of that shape and the stack's dtype)."""
        path = self._paths[z]
        if out is None:
            out = np.empty((max(y1 - y0, 0), max(x1 - x0, 0)), self.dtype)
        if out.size == 0:
            return out
        try:
            if self._read_cached(z, path, y0, y1, x0, x1, out):
                return out
            with tifffile.TiffFile(self.files[z]) as tif:
                page = tif.pages.first
                if page.shape != self.shape[1:] or page.dtype != self.dtype:
                    raise InputError(f"{path}: slice changed on disk: now {page.shape} {page.dtype}, "
                                     f"expected {self.shape[1:]} {self.dtype}")
                if page.is_contiguous and page.compression == 1 and page.fillorder == 1:
                    disk_dtype = self.dtype.newbyteorder(tif.byteorder)
                    fd = tif.filehandle.fileno()
                    self._read_rows(fd, page.dataoffsets[0], disk_dtype, y0, y1, x0, x1, out)
                    # the identity of the file parsed (not of the path's stat above: it may
                    # have been replaced in between)
                    self._raw[z] = (_identity(os.fstat(fd)), int(page.dataoffsets[0]), disk_dtype)
                else:
                    self._raw.pop(z, None)
                    self._read_segments(tif, page, y0, y1, x0, x1, out)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"{path}: cannot read slice data ({type(exc).__name__}: {exc})") from None
        return out

    def _count(self, nbytes: int) -> None:
        with self._lock:
            self.bytes_read += nbytes

    def _read_rows(self, fd: int, data_offset: int, disk_dtype: np.dtype, y0, y1, x0, x1, out) -> None:
        """Uncompressed contiguous image: read whole rows y0..y1 at their offset (``os.preadv``
        on the descriptor ``fd``, so no shared file position; straight into ``out`` when it
        spans the whole width)."""
        width = self.shape[2]
        offset = data_offset + y0 * width * self.dtype.itemsize
        rows = out if x0 == 0 and x1 == width else np.empty((y1 - y0, width), self.dtype)
        got = _readinto(fd, rows, offset)
        self._count(got)
        if got != rows.nbytes:
            raise OSError(f"file truncated: expected {rows.nbytes} bytes at offset {offset}, got {got}")
        if disk_dtype != self.dtype:  # stored with the other byte order
            rows.byteswap(inplace=True)
        if rows is not out:
            out[...] = rows[:, x0:x1]

    def _read_segments(self, tif, page, y0, y1, x0, x1, out) -> None:
        """Strips or tiles (compressed or not): read and decode only the ones overlapping the region."""
        height, width = page.shape
        if page.is_tiled:
            seg_h, seg_w = page.tilelength, page.tilewidth
        else:
            seg_h, seg_w = page.rowsperstrip or height, width
        per_row = -(-width // seg_w)
        fh = tif.filehandle
        decode = page.decode
        for sy in range(y0 // seg_h, -(-y1 // seg_h)):
            for sx in range(x0 // seg_w, -(-x1 // seg_w)):
                index = sy * per_row + sx
                offset, count = page.dataoffsets[index], page.databytecounts[index]
                if count == 0:
                    data = None
                else:
                    fh.seek(offset)
                    data = fh.read(count)
                    self._count(len(data))
                    if len(data) != count:
                        raise OSError(f"file truncated in segment {index}")
                segment, (_, _, top, left, _), _ = decode(data, index, jpegtables=page.jpegtables)
                if segment is None:  # empty segment: tifffile's convention is zeros
                    segment = np.zeros((1, seg_h, seg_w, 1), self.dtype)
                segment = segment[0, :, :, 0]
                # overlap of this segment with the requested region, in image coordinates
                ty0, ty1 = max(top, y0), min(top + segment.shape[0], y1, height)
                tx0, tx1 = max(left, x0), min(left + segment.shape[1], x1, width)
                out[ty0 - y0:ty1 - y0, tx0 - x0:tx1 - x0] = segment[ty0 - top:ty1 - top, tx0 - left:tx1 - left]


def write_slices(folder: str | os.PathLike, volume: np.ndarray | Iterable[np.ndarray], prefix: str = "slice_",
                 start: int = 0, digits: int = 5, compression: str | None = None,
                 rowsperstrip: int | None = None, tile: tuple[int, int] | None = None) -> list[Path]:
    """Write 2D slices as ``<prefix>00000.tif`` ... (uncompressed by default).

    ``volume`` is a (z, y, x) array or any iterable of 2D arrays (so a generator can write a volume
    larger than memory). Each file is written under a hidden temporary name and renamed, so a
    killed writer never leaves a truncated ``.tif`` that looks like a slice.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for offset, plane in enumerate(volume):
        plane = np.asarray(plane)
        if plane.ndim != 2:
            raise InputError(f"{folder}: slice {start + offset} must be 2D, got shape {plane.shape}")
        name = f"{prefix}{start + offset:0{digits}d}.tif"
        path = folder / name
        with atomic_path(path, mkdir=False) as tmp:
            tifffile.imwrite(tmp, plane, photometric="minisblack", compression=compression,
                             rowsperstrip=rowsperstrip, tile=tile, metadata=None)
        written.append(path)
    return written
