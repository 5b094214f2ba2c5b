"""The state enums are the project file's own words: stored unchanged, read back as plain strings that compare."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from pld_desktop.core.project import Project
from pld_desktop.core.states import (
    FAILED_BATCH_STATES,
    OPEN_BATCH_STATES,
    BatchState,
    CallStatus,
    EvaluationStatus,
    PhaseState,
    RunStatus,
)

from .. import rawdb

# The words project files have always held (changing one would strand old files).
STORED = {
    PhaseState: {"running", "done", "failed", "cancelled", "paused", "interrupted", "not started"},
    RunStatus: {"running", "done", "cancelled", "failed", "quota_exhausted", "interrupted"},
    CallStatus: {"ok", "invalid", "error"},
    EvaluationStatus: {"running", "done"},
    BatchState: {"submitted", "pending", "running", "succeeded", "failed", "cancelled", "expired", "superseded"},
}


def test_the_members_are_the_stored_words() -> None:
    for enum, words in STORED.items():
        assert {m.value for m in enum} == words, enum.__name__
        for member in enum:
            assert member == member.value and f"{member}" == member.value and str(member) == member.value


def test_the_teacher_call_check_constraint_allows_exactly_the_call_statuses(tmp_path: Path) -> None:
    project = Project.create(tmp_path / "p.pld")
    sql = rawdb.query(project, "SELECT sql FROM sqlite_master WHERE name = 'teacher_calls'")[0]["sql"]
    allowed = re.search(r"CHECK \(status IN \(([^)]*)\)\)", sql)
    assert allowed is not None
    assert {w.strip(" '") for w in allowed.group(1).split(",")} == {m.value for m in CallStatus}


def test_a_member_is_written_as_its_text_and_read_back_as_a_plain_string(tmp_path: Path) -> None:
    project = Project.create(tmp_path / "p.pld")
    project.set_phase(2, PhaseState.PAUSED, 1, 3, "quota")
    path = project.path
    project.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT state, typeof(state) FROM phases WHERE phase = 2").fetchone() == ("paused", "text")
    reopened = Project.open(path)
    state = reopened.phase_states()[2]["state"]
    assert type(state) is str and state == PhaseState.PAUSED
    reopened.close()


def test_open_and_failed_batch_states_do_not_overlap() -> None:
    assert not set(OPEN_BATCH_STATES) & set(FAILED_BATCH_STATES)
    assert BatchState.SUCCEEDED not in OPEN_BATCH_STATES + FAILED_BATCH_STATES
