"""The progress journal of a ``selma3d stats`` run: which steps and blocks are finished.

A JSON file inside the output, rewritten atomically (temporary file + ``os.replace``) after every
block, so a killed run resumes where it stopped; it also records what the run was started with
(inputs and options), so that a resumed run refuses another input instead of mixing two.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError
from ..utils.atomic import write_json

JOURNAL_FILE = "selma3d_stats.json"
JOURNAL_FORMAT = "selma3d-stats/1"


class Journal:
    """Finished blocks per step (``done(step)``, ``mark(step, index)``) and whole steps
    (``finished(step)``, ``finish(step)``); ``complete`` is set last."""

    def __init__(self, path: Path, state: dict):
        self.path, self.state = Path(path), state

    @classmethod
    def start(cls, folder: Path, identity: dict) -> "Journal":
        """Open the journal of ``folder`` (resuming it) or start a new one there."""
        path = Path(folder) / JOURNAL_FILE
        if path.is_file():
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise InputError(f"{path}: unreadable progress journal ({exc}); use --overwrite") from None
            if state.get("format") != JOURNAL_FORMAT:
                raise InputError(f"{path}: unknown journal format {state.get('format')!r}; use --overwrite")
            for key, value in identity.items():
                if state.get("identity", {}).get(key) != value:
                    what = "holds finished statistics" if state.get("complete") else "was started"
                    raise InputError(f"{folder}: {what} with another {key} "
                                     f"({state.get('identity', {}).get(key)!r}, now {value!r}); use --overwrite")
            return cls(path, state)
        journal = cls(path, {"format": JOURNAL_FORMAT, "identity": identity, "done": {}, "steps": [],
                             "complete": False})
        journal.save()
        return journal

    @property
    def complete(self) -> bool:
        return bool(self.state.get("complete"))

    def done(self, step: str) -> set[int]:
        return set(self.state["done"].get(step, []))

    def mark(self, step: str, index: int) -> None:
        self.state["done"].setdefault(step, []).append(int(index))
        self.save()

    def finished(self, step: str) -> bool:
        return step in self.state["steps"]

    def finish(self, step: str) -> None:
        if step not in self.state["steps"]:
            self.state["steps"].append(step)
        self.save()

    def set_complete(self) -> None:
        self.state["complete"] = True
        self.save()

    def save(self) -> None:
        write_json(self.path, self.state, indent=1, default=None, newline=False)
