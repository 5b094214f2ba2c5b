"""The domain objects `Project` returns: frozen dataclasses read from the project file's rows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pld_desktop.core.domain import Conflict, Evaluation
from pld_desktop.core.project import Project
from pld_desktop.core.states import EvaluationStatus


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


def test_an_evaluation_comes_back_as_a_frozen_object_running_then_done(tmp_path: Path) -> None:
    project, rs_id = _project_with_a_rule_set(tmp_path)
    student = {"name": "fake", "sha256": "f" * 64}
    eval_id = project.get_or_create_evaluation(cache_key="k", kind="pld", rule_set_id=rs_id, split="dev",
                                               prompt_text="the prompt", prompt_sha256="a" * 64, student=student,
                                               n_examples=3)
    running = project.evaluation(eval_id)
    assert isinstance(running, Evaluation) and running.status == EvaluationStatus.RUNNING
    assert running.metrics is None and running.finished_at is None and running.student == student
    assert project.evaluations_done() == []
    project.finish_evaluation(eval_id, {"macro_f1": 0.5, "n": 3})
    done = project.evaluation(eval_id)
    assert done.status == EvaluationStatus.DONE and done.metrics == {"macro_f1": 0.5, "n": 3}
    assert (done.kind, done.split, done.rule_set_id, done.prompt_text, done.n_examples) == \
        ("pld", "dev", rs_id, "the prompt", 3)
    assert project.evaluations_done() == [done] == project.evaluations()
    with pytest.raises(dataclasses.FrozenInstanceError):
        done.status = "running"  # type: ignore[misc]
    project.close()
