"""(z, y, x) triples from the command line or a config: ``64``, ``32,64,64``, ``32x64x64``, ``32 64 64``."""

from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

from ..errors import InputError

_SEPARATORS = re.compile(r"[,x\s]+")


def parse_triple(value: str | int | float | Sequence | None, flag: str, kind=int, default=None,
                 allow_single: bool = True, message: str | None = None) -> tuple | None:
    """A positive (z, y, x) triple of ``kind`` (int or float) from text, a number or a sequence.

    One value means the same on every axis (unless ``allow_single`` is false); ``None`` gives
    ``default``. Anything else raises :class:`InputError` naming ``flag`` (``message``, when
    given, is the whole error text, with ``{value!r}`` for what was given).
    """
    if value is None:
        return default

    def fail():
        text = message or (f"{flag} expects {'N or ' if allow_single else ''}Z,Y,X positive "
                           f"{'integers' if kind is int else 'numbers'}, got {{value!r}}")
        return InputError(text.format(value=value))

    if isinstance(value, str):
        parts = [p for p in _SEPARATORS.split(value.strip()) if p]
    elif isinstance(value, (int, float, np.integer, np.floating)):
        parts = [value]
    else:
        try:
            parts = list(value)
        except TypeError:
            raise fail() from None
    try:
        numbers = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise fail() from None
    if len(numbers) == 1 and allow_single:
        numbers *= 3
    if len(numbers) != 3 or not all(math.isfinite(v) and v > 0 for v in numbers):
        raise fail()
    if kind is int:
        if any(v != int(v) for v in numbers):
            raise fail()
        return tuple(int(v) for v in numbers)
    return tuple(kind(v) for v in numbers)
