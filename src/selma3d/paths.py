"""Checks of every command's input and output paths, done before any work starts.

Each command names its inputs (must exist, be a file or a folder, be readable) and its outputs
(may exist only as the right kind, must be writable, must not be, contain or lie inside an input),
so that a mistake costs a one-line :class:`~selma3d.errors.InputError` instead of a traceback
after an hour of work, and an input is never overwritten whatever the flags.

The write test uses ``os.access(W_OK)``, which also answers for read-only mounts (``EROFS``) as root.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, Literal

from .errors import InputError

Kind = Literal["file", "dir", "any"]
KIND_WORDS = {"file": "a file", "dir": "a folder", "any": "a file or folder"}


def _kind_of(path: Path) -> str:
    return "dir" if path.is_dir() else "file"


def check_input(path: str | os.PathLike, kind: Kind = "any", what: str = "input") -> Path:
    """``path`` exists, is of ``kind`` and is readable; returns it as a :class:`Path`."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder" + ("" if what == "input" else f" (the {what})"))
    actual = _kind_of(path)
    if kind != "any" and actual != kind:
        raise InputError(f"{path}: {what} is {KIND_WORDS[actual]}, expected {KIND_WORDS[kind]}")
    if not os.access(path, os.R_OK | (os.X_OK if actual == "dir" else 0)):
        raise InputError(f"{path}: {what} is not readable (permission denied)")
    return path


def _nearest_existing(path: Path) -> Path:
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def overlaps(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` are the same path or one contains the other (symlinks resolved)."""
    ra, rb = Path(a).resolve(), Path(b).resolve()
    return ra == rb or ra in rb.parents or rb in ra.parents


def check_output(path: str | os.PathLike, kind: Kind, inputs: Iterable[str | os.PathLike | None] = (),
                 what: str = "output") -> Path:
    """``path`` can be written as ``kind`` without touching any of ``inputs``.

    Refused: an existing path of the other kind; a parent that is a file; a location that is
    not writable (permission or read-only file system); an output that is, contains or is
    contained in an input. Nothing is created."""
    path = Path(path)
    for source in inputs:
        if source is not None and Path(source).exists() and overlaps(path, source):
            source = Path(source)
            if path.resolve() == source.resolve():
                relation = "is the input"
            elif source.resolve() in path.resolve().parents:
                relation = f"lies inside the input {source}"
            else:
                relation = f"contains the input {source}"
            raise InputError(f"{path}: {what} {relation}; refusing to write there (choose another {what})")
    if path.exists():
        actual = _kind_of(path)
        if kind != "any" and actual != kind:
            raise InputError(f"{path}: {what} exists as {KIND_WORDS[actual]}, expected {KIND_WORDS[kind]}")
        writable_here = path if actual == "dir" else path.parent
        if not os.access(path, os.W_OK) or not os.access(writable_here, os.W_OK | os.X_OK):
            raise InputError(f"{path}: {what} is not writable ({_why_not_writable(writable_here)})")
        return path
    anchor = _nearest_existing(path)
    if not anchor.is_dir():
        raise InputError(f"{path}: cannot create the {what}: {anchor} is a file, not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise InputError(f"{path}: cannot create the {what}: {anchor} is not writable "
                         f"({_why_not_writable(anchor)})")
    return path


def _why_not_writable(folder: Path) -> str:
    """``read-only file system`` or ``permission denied``, as the kernel would say it."""
    try:
        stats = os.statvfs(folder)
    except OSError:
        return "permission denied"
    return "read-only file system" if stats.f_flag & os.ST_RDONLY else "permission denied"


@contextlib.contextmanager
def no_empty_output_on_failure(path: str | os.PathLike):
    """If the command fails, remove the output folder it created, provided nothing was written
    into it (empty sub-folders only): a failed run should not leave an empty run folder that
    looks like one. A folder that existed before, or holds any file, is left alone."""
    path = Path(path)
    existed = path.exists()
    try:
        yield path
    except BaseException:
        if not existed and path.is_dir():
            for folder in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                                 reverse=True) + [path]:
                try:
                    folder.rmdir()  # only ever succeeds on an empty folder
                except OSError:
                    break
        raise
