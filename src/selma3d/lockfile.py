"""One writer per output: a lock file next to the output holding the owner's pid and host.

A second ``selma3d convert --overwrite`` started while the first is still writing the same store
would delete the store under its feet; with the lock it is refused with a message naming the
owner. The lock sits *beside* the output (``.<name>.lock``), so replacing the output cannot delete
it. A lock left by a killed process on this host (its pid no longer runs) is taken over; a lock
from another host is never guessed stale. Created with ``O_CREAT | O_EXCL``, atomic on local and
NFSv3+ file systems. Written by hand: ``fcntl`` locks vanish with the process and say nothing
about who holds them, and no dependency of selma3d offers pid/host lock files.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path

from .errors import InputError


def lock_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.parent / f".{output.name}.lock"


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _try_create(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        json.dump({"pid": os.getpid(), "host": socket.gethostname()}, handle)
    return True


@contextlib.contextmanager
def output_lock(output: str | os.PathLike, command: str = "selma3d"):
    """Hold the lock of ``output`` for the ``with`` block; raise :class:`InputError` if another
    live process holds it."""
    path = lock_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _attempt in range(2):
        if _try_create(path):
            break
        try:
            owner = json.loads(path.read_text())
            pid, host = int(owner["pid"]), str(owner["host"])
        except (OSError, ValueError, KeyError, TypeError):
            raise InputError(f"{output}: locked by an unreadable lock file {path}; remove it if no "
                             f"{command} is writing this output") from None
        if host == socket.gethostname() and not _pid_running(pid):
            path.unlink(missing_ok=True)  # stale: its owner on this host is gone
            continue
        raise InputError(f"{output}: another {command} (pid {pid} on {host}) is writing this output "
                         f"(lock {path}); wait for it to finish, or remove the lock if that process is gone")
    else:
        raise InputError(f"{output}: could not take the lock {path}; another process keeps creating it")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
