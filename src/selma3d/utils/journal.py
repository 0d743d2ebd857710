"""The JSON progress journal of a resumable run: read it back (checking its format tag and that
the run being resumed is the one that was started), or start one; save it atomically.

``selma3d stats``, whole-volume ``predict`` and ``convert`` each keep one inside their output,
rewritten after every finished unit of work, so a killed run resumes where it stopped and a
rerun with another input or other options is refused instead of mixing two. They share this
reader and writer and differ only in their words (:class:`Wording`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .atomic import write_json


@dataclass(frozen=True)
class Wording:
    """How one kind of journal is named in its one-line errors."""

    noun: str  # "<file>: unreadable <noun> (why); <fix>"
    format_noun: str  # "<file>: unknown <format_noun> 'tag'; <fix>"
    finished: str  # what an output whose journal is complete holds, e.g. "holds a finished prediction"
    fix: str = "use --overwrite"
    #: a recorded identity entry differs: fields place, what (``finished`` or "was started"), key,
    #: saved, value, fix (``mismatch_fix``)
    mismatch: str = "{place}: {what} with another {key} ({saved!r}, now {value!r}); {fix}"
    mismatch_fix: str = "use --overwrite"


def read_journal(path: str | os.PathLike, tag: str, wording: Wording) -> dict | None:
    """The journal at ``path`` (None if there is none); unreadable, or of a format other than
    ``tag``: InputError."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable {wording.noun} ({exc}); {wording.fix}") from None
    found = state.get("format") if isinstance(state, dict) else None
    if found != tag:
        raise InputError(f"{path}: unknown {wording.format_noun} {found!r}; {wording.fix}")
    return state


def check_identity(state: dict, identity: dict, place: str | os.PathLike, wording: Wording,
                   section: str = "identity") -> None:
    """Refuse to resume ``state`` when an entry of ``identity`` differs from the one recorded in
    its ``section``; the error names ``place`` (the output) and the first differing key."""
    saved = state.get(section) or {}
    for key, value in identity.items():
        if saved.get(key) != value:
            what = wording.finished if state.get("complete") else "was started"
            raise InputError(wording.mismatch.format(place=place, what=what, key=key, saved=saved.get(key),
                                                     value=value, fix=wording.mismatch_fix))


def save_journal(path: str | os.PathLike, state: dict, mkdir: bool = True) -> Path:
    """Write the journal atomically (compact: it is rewritten after every block)."""
    return write_json(path, state, indent=1, default=None, newline=False, mkdir=mkdir)


def open_journal(path: str | os.PathLike, tag: str, identity: dict, wording: Wording,
                 place: str | os.PathLike, fresh: dict) -> dict:
    """The journal at ``path``, checked against ``identity``; when there is none, a new one
    (format ``tag``, ``identity``, then the ``fresh`` fields) is saved there first and returned."""
    state = read_journal(path, tag, wording)
    if state is not None:
        check_identity(state, identity, place, wording)
        return state
    state = {"format": tag, "identity": identity, **fresh}
    save_journal(path, state)
    return state
