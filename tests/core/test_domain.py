"""The domain objects `Project` returns: frozen dataclasses read from the project file's rows."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pld_desktop.core.domain import Conflict, Evaluation, Rule, RuleSetRecord, RuleSetSummary
from pld_desktop.core.project import Project
from pld_desktop.core.rule_edits import Duplicate, Merge, SetEnabled, SetText
from pld_desktop.core.states import EvaluationStatus

from ..helpers import rules_of
from ..rawdb import execute, query


def _project_with_a_rule_set(tmp_path: Path) -> tuple[Project, int]:
    project = Project.create(tmp_path / "p.pld")
    rules = rules_of({"uid": "R1", "text": "If it says hello, answer greeting.", "label": "greeting", "enabled": True})
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


# A rules_json as the code that kept rules as dicts wrote it (json.dumps(rules, ensure_ascii=False)): a synthesis
# rule (flag last), a closed-loop rewrite (cluster_id null, from_rules before origin), a rule merged, duplicated in
# the editor (from_rules and duplicated_from appended), a minimal hand-made one, and keys this build does not know.
OLD_RULES_JSON = (
    '[{"uid": "R1", "text": "If the card was used abroad without consent, answer fraud_report.", '
    '"label": "fraud_report", "enabled": false, "cluster_id": 4, "micro_rule_ids": [12, 3, 7], '
    '"example_ids": [101, 99], "origin": "merged", "flag": "copies an example: \u201cmy card\u201d"}, '
    '{"uid": "R2", "text": "If the fee is too high, answer complaint.", "label": "complaint", "enabled": true, '
    '"cluster_id": null, "micro_rule_ids": [], "example_ids": [], "from_rules": ["R1", "R4"], '
    '"origin": "resolution round 2"}, '
    '{"uid": "E3", "text": "Wenn die Gebühr steigt – answer complaint.", "label": "complaint", "enabled": true, '
    '"cluster_id": 2, "micro_rule_ids": [5], "example_ids": [8], "origin": "duplicate of E2", '
    '"from_rules": ["R5", "R6"], "duplicated_from": "E2", "reviewed_by": {"who": "ana", "at": [2026, 12]}}, '
    '{"uid": "H1", "text": "If it asks how, answer question.", "label": "question", "enabled": true, '
    '"note": null}]')


def test_old_rules_json_round_trips_exactly_through_rule() -> None:
    stored = json.loads(OLD_RULES_JSON)
    rules = [Rule.from_dict(d) for d in stored]
    assert json.dumps([r.to_dict() for r in rules], ensure_ascii=False) == OLD_RULES_JSON
    first, second, third, fourth = rules
    assert (first.uid, first.enabled, first.cluster_id, first.micro_rule_ids, first.example_ids) == \
        ("R1", False, 4, (12, 3, 7), (101, 99))
    assert first.flag == "copies an example: \u201cmy card\u201d" and first.from_rules is None
    assert second.from_rules == ("R1", "R4") and second.cluster_id is None and second.origin == "resolution round 2"
    assert third.duplicated_from == "E2" and dict(third.extra) == {"reviewed_by": {"who": "ana", "at": (2026, 12)}}
    assert fourth.micro_rule_ids == () and fourth.origin == "" and dict(fourth.extra) == {"note": None}
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.text = "changed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        third.extra["reviewed_by"]["who"] = "bob"  # type: ignore[index]  # unknown keys are frozen too


def test_edited_rules_keep_their_stored_keys_and_add_what_the_edit_set() -> None:
    rules = [Rule.from_dict(d) for d in json.loads(OLD_RULES_JSON)]
    edited, _ = SetText("R1", "If the card was used abroad, answer fraud_report.").apply(rules)
    edited, _ = SetEnabled("H1", False).apply(edited)
    out = [r.to_dict() for r in edited]
    assert list(out[0]) == list(json.loads(OLD_RULES_JSON)[0])
    assert out[0]["text"] == "If the card was used abroad, answer fraud_report."
    assert out[3] == {"uid": "H1", "text": "If it asks how, answer question.", "label": "question", "enabled": False,
                      "note": None}
    merged = Merge(("R2", "H1")).apply(rules)[0][1].to_dict()  # the old code copied R2 and set five keys
    assert list(merged) == ["uid", "text", "label", "enabled", "cluster_id", "micro_rule_ids", "example_ids",
                            "from_rules", "origin"] and merged["from_rules"] == ["R2", "H1"]
    twin = Duplicate("H1").apply(rules)[0][4].to_dict()  # origin and duplicated_from appended, as dict keys were
    assert list(twin) == ["uid", "text", "label", "enabled", "note", "origin", "duplicated_from"]


def test_a_rule_made_by_the_program_writes_the_keys_the_dict_code_wrote() -> None:
    assert list(Rule("R1", "t", "a").to_dict()) == ["uid", "text", "label", "enabled", "cluster_id",
                                                    "micro_rule_ids", "example_ids", "origin"]
    loop = Rule("R2", "t", "a", from_rules=("R1",), origin="resolution round 1").to_dict()
    assert list(loop)[-2:] == ["from_rules", "origin"] and loop["micro_rule_ids"] == []
    assert list(Rule("R3", "t", "a", enabled=False, cluster_id=1, flag="copies").to_dict())[-2:] == ["origin", "flag"]


def _stored_rules_json(project: Project, rs_id: int) -> str:
    return str(query(project, "SELECT rules_json FROM rule_sets WHERE id = ?", [rs_id])[0]["rules_json"])


def test_old_rules_json_round_trips_exactly_through_the_project(tmp_path: Path) -> None:
    project = Project.create(tmp_path / "p.pld")
    rules = tuple(Rule.from_dict(d) for d in json.loads(OLD_RULES_JSON))
    rs_id = project.add_rule_set(parent_id=None, reason="old file", origin="synthesis", round=None, task="t",
                                 labels=["fraud_report", "complaint", "question"], meanings={"complaint": "unhappy"},
                                 rules=rules, prompt_text="p", prompt_sha256="0" * 64)
    assert _stored_rules_json(project, rs_id) == OLD_RULES_JSON
    project.close()
    # A version written by the old code (the row as it wrote it), read by this one and saved again unchanged.
    execute(tmp_path / "p.pld", "INSERT INTO rule_sets (parent_id, reason, origin, round, task, labels_json, "
            "meanings_json, rules_json, prompt_text, prompt_sha256, content_hash, created_at) "
            "VALUES (NULL, 'old', 'synthesis', NULL, 't', '[\"a\"]', '{}', ?, 'p', ?, 'x', 0)",
            [OLD_RULES_JSON, "0" * 64])
    with Project.open(tmp_path / "p.pld") as again:
        old_id = max(v.id for v in again.rule_sets())
        record = again.rule_set(old_id)
        assert isinstance(record, RuleSetRecord) and record.rules == rules and record.labels == ("a",)
        first = again.rule_set(rs_id)
        assert first.labels == ("fraud_report", "complaint", "question")
        assert dict(first.meanings) == {"complaint": "unhappy"}
        copy_id = again.add_rule_set(parent_id=old_id, reason="saved again", origin="edit", round=None, task="t",
                                     labels=record.labels, meanings=record.meanings, rules=record.rules,
                                     prompt_text="p", prompt_sha256="0" * 64)
        assert _stored_rules_json(again, copy_id) == OLD_RULES_JSON
        assert again.find_rule_set(origin="synthesis", parent_id=None, rules=first.rules, task="t",
                                   labels=first.labels, meanings=first.meanings) == rs_id


def test_a_version_is_parsed_once_and_cannot_be_changed_through_the_cache(tmp_path: Path) -> None:
    project, rs_id = _project_with_a_rule_set(tmp_path)
    loads = 0
    original = json.loads

    def counting(text: str, *args: object, **kwargs: object) -> object:
        nonlocal loads
        loads += 1
        return original(text, *args, **kwargs)

    record = project.rule_set(rs_id)
    json.loads = counting  # type: ignore[assignment]
    try:
        assert project.rule_set(rs_id) is record and loads == 0
    finally:
        json.loads = original
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.rules = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        record.meanings["greeting"] = "hi"  # type: ignore[index]
    assert isinstance(record.rules, tuple) and isinstance(record.labels, tuple)
    summary = project.rule_sets()
    assert summary == [RuleSetSummary(rs_id, None, "test", "manual", None, "0" * 64, record.created_at)]
    project.close()


def test_a_rolled_back_version_leaves_the_cache(tmp_path: Path) -> None:
    project, rs_id = _project_with_a_rule_set(tmp_path)
    rules = project.rule_set(rs_id).rules
    with pytest.raises(RuntimeError), project.transaction():
        gone = project.add_rule_set(parent_id=rs_id, reason="rolled back", origin="edit", round=None, task="t",
                                    labels=["greeting", "other"], meanings={}, rules=rules[:0], prompt_text="p",
                                    prompt_sha256="0" * 64)
        assert project.rule_set(gone).rules == ()
        raise RuntimeError("fails after the read")
    again = project.add_rule_set(parent_id=rs_id, reason="kept", origin="edit", round=None, task="t",
                                 labels=["greeting", "other"], meanings={}, rules=rules, prompt_text="p",
                                 prompt_sha256="0" * 64)
    assert again == gone and project.rule_set(again).reason == "kept" and project.rule_set(again).rules == rules
    project.close()
