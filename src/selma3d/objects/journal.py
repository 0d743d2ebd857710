"""The progress journal of a ``selma3d stats`` run: which steps and blocks are finished.

A JSON file inside the output, rewritten atomically after every block, so a killed run resumes
where it stopped; it also records what the run was started with (inputs and options), so that a
resumed run refuses another input instead of mixing two (:mod:`selma3d.utils.journal` reads,
checks and writes it).
"""

from __future__ import annotations

from pathlib import Path

from ..utils.journal import Wording, open_journal, save_journal

JOURNAL_FILE = "selma3d_stats.json"
JOURNAL_FORMAT = "selma3d-stats/1"
WORDING = Wording(noun="progress journal", format_noun="journal format", finished="holds finished statistics")


class Journal:
    """Finished blocks per step (``done(step)``, ``mark(step, index)``) and whole steps
    (``finished(step)``, ``finish(step)``); ``complete`` is set last."""

    def __init__(self, path: Path, state: dict):
        self.path, self.state = Path(path), state

    @classmethod
    def start(cls, folder: Path, identity: dict) -> "Journal":
        """Open the journal of ``folder`` (resuming it) or start a new one there."""
        path = Path(folder) / JOURNAL_FILE
        return cls(path, open_journal(path, JOURNAL_FORMAT, identity, WORDING, place=folder,
                                      fresh={"done": {}, "steps": [], "complete": False}))

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
        save_journal(self.path, self.state)
