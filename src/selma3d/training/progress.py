"""What a training command shows while it runs: a progress bar on a terminal, a plain line every
few seconds in a log (nohup, SLURM, CI), and none of Lightning's banners or expected warnings.

Lightning's Rich bar writes a single line at the very end when stdout is not a terminal, so a
job under a scheduler looked silent for hours; :class:`LogProgress` prints
``[pretrain] step 120/1000 (12 %) · 2.31 steps/s · ETA 0:06:21 · loss 0.4213`` instead.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
import warnings
from typing import TextIO

import pytorch_lightning as pl

from ..utils.progress import LOG_EVERY_SECONDS, format_duration

#: expected Lightning warnings that say nothing a selma3d user can act on
_EXPECTED_WARNINGS = (
    ".*module\\(s\\) in eval mode.*",  # a frozen encoder is in eval mode on purpose
    ".*dataloader is not resumable.*",  # the samplers resume themselves (seeded by step)
    ".*Checkpoint directory .* exists and is not empty.*",
    ".*LeafSpec.*is deprecated.*",
    ".*does not have many workers.*",
    ".*weights_only.*",
)
_LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")


@contextlib.contextmanager
def quiet_lightning():
    """Silence Lightning's INFO banners (devices, tips, "fit stopped") and its expected warnings;
    its real warnings and errors still come through."""
    loggers = [logging.getLogger(n) for n in _LIGHTNING_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        for pattern in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


class LogProgress(pl.Callback):
    """A progress line every ``every`` seconds and at the last step: step, rate, ETA, loss.

    The rate counts the steps of this process only (a resumed run does not claim the steps it
    loaded); the loss is the module's ``latest_loss`` where it keeps one (pretraining: the loss
    of the step just done), else the last one it logged (``trainer.callback_metrics["loss"]``,
    or ``train_loss``).
    """

    def __init__(self, what: str, every: float = LOG_EVERY_SECONDS, stream: TextIO | None = None,
                 clock=time.monotonic):
        self.what, self.every, self.stream, self.clock = what, float(every), stream, clock
        self._start: float | None = None
        self._start_step = 0
        self._last = -math.inf

    def on_train_start(self, trainer, pl_module) -> None:
        self._start, self._start_step = self.clock(), int(trainer.global_step)

    def line(self, trainer, pl_module=None) -> str:
        step, total = int(trainer.global_step), int(trainer.max_steps)
        elapsed = self.clock() - (self.clock() if self._start is None else self._start)
        done_here = step - self._start_step
        rate = done_here / elapsed if elapsed > 0 and done_here > 0 else None
        eta = (total - step) / rate if rate else None
        parts = [f"[{self.what}] step {step}/{total} ({100 * step / max(total, 1):.0f} %)",
                 f"{rate:.2f} steps/s" if rate else "? steps/s", f"ETA {format_duration(eta)}"]
        loss = getattr(pl_module, "latest_loss", None)
        if loss is None:
            metrics = trainer.callback_metrics
            loss = metrics.get("loss", metrics.get("train_loss"))
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        return " · ".join(parts)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero:
            return
        now = self.clock()
        last_step = trainer.global_step >= trainer.max_steps
        if now - self._last >= self.every or last_step:
            self._last = now
            print(self.line(trainer, pl_module), file=self.stream or sys.stdout, flush=True)


def progress_display(enabled: bool, what: str, stream: TextIO | None = None) -> tuple[bool, list[pl.Callback]]:
    """(Lightning's ``enable_progress_bar``, extra callbacks): the Rich bar on a terminal, log
    lines otherwise, nothing when ``enabled`` is False (``--quiet``)."""
    if not enabled:
        return False, []
    stream = stream or sys.stdout
    if stream.isatty():
        return True, []
    return False, [LogProgress(what, stream=stream)]
