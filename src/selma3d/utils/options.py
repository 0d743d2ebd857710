"""Repeatable ``key=value`` options (``--model-option``, ``--method-option``) into a dict."""

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
