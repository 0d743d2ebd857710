"""Parsing of repeatable ``key=value`` command-line options shared by the sub-commands."""

from __future__ import annotations

from ..errors import InputError


def parse_options(pairs: list[str] | None, flag: str) -> dict:
    """``["features=[4,8,16]", "norm=batch"]`` → dict; values are read as YAML (``8``, ``0.5``,
    ``[16,32]``, ``true``); ``-`` in keys becomes ``_``."""
    import yaml

    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{flag} expects key=value, got {pair!r}")
        try:
            options[key.strip().replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise InputError(f"{flag} {pair!r}: cannot read the value ({exc})") from None
    return options


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
