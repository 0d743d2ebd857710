"""Repeatable ``key=value`` options (``--model-option``, ``--method-option``) into a dict."""

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
