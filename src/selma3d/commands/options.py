"""Option checks shared by the sub-commands (``key=value`` parsing lives in :mod:`selma3d.utils.options`)."""

from __future__ import annotations

from ..errors import InputError
from ..utils.options import parse_options  # noqa: F401  (the commands import it from here)


def check_device(device: str | None, flag: str = "--device") -> None:
    """Refuse a CUDA device that this torch build or machine does not have, before any work
    (torch would fail later with ``AssertionError: Torch not compiled with CUDA enabled``)."""
    if device is None:
        return
    import torch

    name = str(device).strip().lower()
    if name in ("gpu", "cuda") or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            why = ("this torch is a CPU-only build" if torch.version.cuda is None
                   else "no CUDA GPU is visible on this machine")
            raise InputError(f"{flag} {device}: {why}; use {flag} cpu")
        index = int(name.split(":")[1]) if ":" in name and name.split(":")[1].isdigit() else 0
        if index >= torch.cuda.device_count():
            raise InputError(f"{flag} {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return
    if name != "cpu" and not name.startswith("cpu:") and not (flag == "--accelerator" and name in ("auto", "mps")):
        try:
            torch.device(name)
        except (RuntimeError, ValueError):
            raise InputError(f"{flag} {device}: not a device name (cpu, cuda, cuda:1 ...)") from None
