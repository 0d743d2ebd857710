"""Atomic file writes: a temporary file next to the target, then ``os.replace``.

A reader (or a resumed run) sees the old file or the new one, never half of one, even after a
``kill -9``: the temporary file lives in the target's folder (same filesystem, so the rename is
atomic) and is removed when the write fails. Every artifact and progress file goes through here.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

#: marks temporary files (``.<name>.partial[<suffix>]``) that a kill may leave behind. The name
#: has no process id: a rerun after a kill writes the same temporary name and so replaces what the
#: killed run left (with a pid in it the debris stayed next to the outputs; tests/test_sigkill_resume.py)
PARTIAL = ".partial"


def temporary_name(path: str | os.PathLike, suffix: str = "") -> Path:
    """The hidden temporary name :func:`atomic_path` writes ``path`` under (same folder)."""
    path = Path(path)
    return path.with_name(f".{path.name}{PARTIAL}{suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", mkdir: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed.

    ``suffix`` ends the temporary name, for writers that choose the format by the extension
    (``fig.savefig``: ``suffix=".png"``).
    """
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path, suffix)
    if tmp.exists():  # left by a killed run
        tmp.unlink()
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path: str | os.PathLike, data: str | bytes, mkdir: bool = True) -> Path:
    """Write text or bytes to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path, mkdir=mkdir) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            with open(tmp, "w", encoding="utf-8", newline="") as handle:
                handle.write(data)
    return path


def write_json(path: str | os.PathLike, payload: Any, indent: int | None = 2, default=str,
               newline: bool = True, mkdir: bool = True) -> Path:
    """``payload`` as JSON (``json.dumps(payload, indent=indent, default=default)``, then a
    newline unless ``newline`` is false), atomically; returns ``path``."""
    text = json.dumps(payload, indent=indent, default=default)
    return atomic_write(path, text + ("\n" if newline else ""), mkdir=mkdir)


def torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path
