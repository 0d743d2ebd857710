"""Progress of a long command: a Rich bar on a terminal, a plain line every few seconds in a log.

Rich draws nothing until the end when stdout is not a terminal, so ``predict``, ``convert``,
``stats``, ``synth`` or ``evaluate`` under nohup, SLURM or CI looked silent for as long as they
ran. :func:`progress_bar` returns the Rich bar on a terminal and, in a log, a
:class:`LineProgress` with the same small interface (``add_task``, ``advance``, ``update``) that
prints ``[predict] mask.zarr: predict 12/27 (44 %) · 0.53 blocks/s · ETA 0:00:28`` every few
seconds, also while a long item is still running (a heartbeat), and once when a task completes.
The training commands use the same line format through Lightning (``training.progress``).
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from typing import TextIO

#: seconds between two progress lines in a log
LOG_EVERY_SECONDS = 5.0


def format_duration(seconds: float | None) -> str:
    """``3725`` → ``"1:02:05"``; unknown → ``"?"``."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class _Task:
    def __init__(self, description: str, total: int, completed: int, now: float):
        self.description, self.total, self.completed = description, int(total), int(completed)
        self.start, self.start_completed = now, int(completed)
        self.reported_done = False


class LineProgress:
    """Rich-like progress for logs: a line per running task every ``every`` seconds (from a
    daemon thread, so a slow item still shows the job is alive) and one when a task completes."""

    def __init__(self, what: str, unit: str = "", every: float = LOG_EVERY_SECONDS,
                 stream: TextIO | None = None, clock=time.monotonic):
        self.what, self.unit, self.every = what, unit, float(every)
        self.stream, self.clock = stream, clock
        self._tasks: list[_Task] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ Rich's interface
    def add_task(self, description: str, total: int | None = None, completed: int = 0, **_) -> int:
        with self._lock:
            self._tasks.append(_Task(description, total or 0, completed, self.clock()))
            return len(self._tasks) - 1

    def advance(self, task: int, advance: int = 1) -> None:
        self.update(task, advance=advance)

    def update(self, task: int, *, advance: int = 0, completed: int | None = None,
               description: str | None = None, **_) -> None:
        with self._lock:
            t = self._tasks[task]
            t.completed = int(completed) if completed is not None else t.completed + int(advance)
            if description is not None:
                t.description = description
            finished = t.total and t.completed >= t.total and not t.reported_done
            if finished:
                t.reported_done = True
        if finished:
            self._print(self.line(t))

    def __enter__(self) -> "LineProgress":
        self._thread = threading.Thread(target=self._beat, name="selma3d-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return False

    # ------------------------------------------------------------------ the lines
    def line(self, task: _Task) -> str:
        elapsed = self.clock() - task.start
        done_here = task.completed - task.start_completed
        rate = done_here / elapsed if elapsed > 0 and done_here > 0 else None
        eta = (task.total - task.completed) / rate if rate else None
        unit = f" {self.unit}" if self.unit else ""
        percent = f" ({100 * task.completed / task.total:.0f} %)" if task.total else ""
        parts = [f"[{self.what}] {task.description} {task.completed}/{task.total or '?'}{percent}",
                 f"{rate:.2f}{unit}/s" if rate else f"?{unit}/s",
                 f"ETA {format_duration(eta)}" if task.completed < task.total else
                 f"done in {format_duration(elapsed)}"]
        return " · ".join(parts)

    def running_lines(self) -> list[str]:
        with self._lock:
            return [self.line(t) for t in self._tasks if not t.reported_done]

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            for text in self.running_lines():
                self._print(text)


class NoProgress:
    """The same interface, showing nothing (``--quiet``)."""

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def advance(self, *args, **kwargs) -> None:
        pass

    def update(self, *args, **kwargs) -> None:
        pass

    def __enter__(self) -> "NoProgress":
        return self

    def __exit__(self, *exc) -> bool:
        return False


def progress_bar(enabled: bool, what: str, unit: str = "", stream: TextIO | None = None,
                 transient: bool = True):
    """A context manager yielding an object with ``add_task``/``advance``/``update``: a Rich bar
    when ``stream`` (default stdout) is a terminal, :class:`LineProgress` lines otherwise,
    :class:`NoProgress` when ``enabled`` is False."""
    if not enabled:
        return NoProgress()
    stream = stream or sys.stdout
    isatty = getattr(stream, "isatty", None)
    if not (isatty and isatty()):
        return LineProgress(what, unit=unit, stream=stream)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if unit:
        columns.append(TextColumn(unit))
    return Progress(*columns, TimeRemainingColumn(), console=Console(file=stream), transient=transient)


@contextlib.contextmanager
def counting(enabled: bool, what: str, description: str, total: int, unit: str = "",
             stream: TextIO | None = None):
    """One task: yields ``advance(n=1)``."""
    with progress_bar(enabled, what, unit=unit, stream=stream) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
