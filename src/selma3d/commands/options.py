"""Parsing of the option values several sub-commands share (``key=value`` options, sizes, devices),
so the same thing is spelled and read the same way in every command."""

from __future__ import annotations

from ..errors import InputError


def parse_options(pairs: list[str] | None, flag: str) -> dict:
    """``["features=[4,8,16]", "norm=batch"]`` → dict; values are read as YAML (``8``, ``0.5``,
    ``[16,32]``, ``true``), and an unbracketed, unquoted ``4,8,16`` is the list ``[4, 8, 16]``
    as well (the spelling of every other list on the command line); ``-`` in keys becomes ``_``."""
    import yaml

    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{flag} expects key=value, got {pair!r}")
        try:
            options[key.strip().replace("-", "_")] = _option_value(value)
        except yaml.YAMLError as exc:
            raise InputError(f"{flag} {pair!r}: cannot read the value ({exc})") from None
    return options


def _option_value(text: str):
    import yaml

    bare = text.strip()
    if "," in bare and bare[:1] not in "[{'\"":
        return [yaml.safe_load(part) for part in bare.split(",") if part.strip()]
    return yaml.safe_load(text)


def parse_size(text, flag: str) -> tuple[int, int, int]:
    """A size in voxels: ``64`` (a cube), ``32,64,64``, ``32x64x64`` or ``32 64 64`` (z, y, x),
    or a number / sequence (from a config file) → a (z, y, x) triple of positive integers."""
    if isinstance(text, (list, tuple)):
        text = ",".join(map(str, text))
    raw = str(text)
    parts = [p for p in raw.replace("x", ",").replace(" ", ",").split(",") if p.strip()]
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) == 1:
        sizes *= 3
    if len(sizes) != 3 or min(sizes) < 1:
        raise InputError(f"{flag} expects one or three positive integers (N or Z,Y,X), got {raw!r}")
    return tuple(sizes)  # type: ignore[return-value]


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
