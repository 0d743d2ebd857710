"""The one resumable-journal helper (selma3d.utils.journal) that stats, blockwise predict and
convert share: open-or-start, format and identity checks with each caller's words, atomic saves."""

from __future__ import annotations

import json

import pytest

from selma3d.errors import InputError
from selma3d.utils.journal import Wording, check_identity, open_journal, read_journal, save_journal

WORDS = Wording(noun="progress file", format_noun="progress format", finished="holds a finished thing",
                mismatch_fix="use --overwrite to start again")


def test_open_starts_then_resumes_the_same_journal(tmp_path):
    path = tmp_path / "out" / "journal.json"
    state = open_journal(path, "kind/1", {"input": "a"}, WORDS, place=tmp_path / "out", fresh={"done": {}})
    assert state == {"format": "kind/1", "identity": {"input": "a"}, "done": {}}
    assert json.loads(path.read_text()) == state  # saved before any work
    state["done"]["x"] = [1]
    save_journal(path, state)
    assert open_journal(path, "kind/1", {"input": "a"}, WORDS, place=tmp_path, fresh={})["done"] == {"x": [1]}
    assert list(path.parent.iterdir()) == [path]  # written through utils.atomic, no temporary left


def test_errors_are_one_line_and_name_the_file_or_the_differing_key(tmp_path):
    path = tmp_path / "journal.json"
    assert read_journal(path, "kind/1", WORDS) is None
    path.write_text("{not json")
    with pytest.raises(InputError, match=r"journal.json: unreadable progress file \(.*\); use --overwrite$"):
        read_journal(path, "kind/1", WORDS)
    for foreign in ({"format": "kind/0"}, ["a", "list"]):
        path.write_text(json.dumps(foreign))
        with pytest.raises(InputError, match="journal.json: unknown progress format"):
            read_journal(path, "kind/1", WORDS)

    state = {"format": "kind/1", "identity": {"input": "a", "options": {"k": 1}}, "complete": False}
    check_identity(state, {"input": "a"}, "OUT", WORDS)
    with pytest.raises(InputError) as error:
        check_identity(state, {"input": "a", "options": {"k": 2}}, "OUT", WORDS)
    assert str(error.value) == "OUT: was started with another options ({'k': 1}, now {'k': 2}); use --overwrite to start again"
    state["complete"] = True
    with pytest.raises(InputError, match="^OUT: holds a finished thing with another input"):
        check_identity(state, {"input": "b"}, "OUT", WORDS)

    custom = Wording(noun="n", format_noun="f", finished="done", mismatch="{place}: {what} with {key}={saved}, "
                     "now {key}={value}; {fix}", mismatch_fix="re-run with the same options")
    with pytest.raises(InputError) as error:
        check_identity({"params": {"chunks": 16}}, {"chunks": 32}, "OUT", custom, section="params")
    assert str(error.value) == "OUT: was started with chunks=16, now chunks=32; re-run with the same options"
