"""The domain objects `Project` returns: frozen dataclasses read from the project file's rows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pld_desktop.core.domain import Conflict
from pld_desktop.core.project import Project


def _project_with_a_rule_set(tmp_path: Path) -> tuple[Project, int]:
    project = Project.create(tmp_path / "p.pld")
    rules = [{"uid": "R1", "text": "If it says hello, answer greeting.", "label": "greeting", "enabled": True}]
    rs_id = project.add_rule_set(parent_id=None, reason="test", origin="manual", round=None, task="t",
                                 labels=["greeting", "other"], meanings={}, rules=rules, prompt_text="p",
                                 prompt_sha256="0" * 64)
    return project, rs_id


def test_conflicts_come_back_as_frozen_objects_with_their_evidence(tmp_path: Path) -> None:
    project, rs_id = _project_with_a_rule_set(tmp_path)
    evidence = {"similarity": 0.93, "rule_changed_since": ["R1"], "text": "naïve – ünïcode"}
    conflict_id = project.add_conflict(rs_id, "R1", "R2", "similarity", "the same condition", evidence)
    project.add_conflict(rs_id, "R1", "R1", "label mismatch", "text says other", "plain")
    first, second = project.conflicts(rs_id)
    assert isinstance(first, Conflict) and first.id == conflict_id and first.rule_set_id == rs_id
    assert (first.rule_a, first.rule_b, first.source, first.reason) == ("R1", "R2", "similarity", "the same condition")
    assert first.evidence == evidence and isinstance(first.created_at, float)
    assert second.evidence == "plain"
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.reason = "changed"  # type: ignore[misc]
    assert project.conflicts(rs_id) == [first, second]  # equal by value, read twice
    project.close()


def test_a_computed_conflict_has_no_id_or_time() -> None:
    c = Conflict(3, "R1", "R1", "label mismatch", "text says a, label is b", {"said": "a"})
    assert c.id is None and c.created_at is None
