"""The four phases end to end on the demo CSV with test doubles: caching, resume, locked test split, export."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from pydantic import BaseModel

from pld_desktop.core.export import export_rule_set
from pld_desktop.core.pipeline import run_pipeline
from pld_desktop.core.progress import ProgressBase, SilentProgress
from pld_desktop.core.project import APPLICATION_ID
from pld_desktop.core.protocols import TeacherRequest
from pld_desktop.core.teacher_calls import LockedSplitError, TeacherJob, run_teacher_jobs

from .. import rawdb
from ..fakes import FakeBackends, FakeTeacher
from ..helpers import make_project, rules_of, settings


class _Dummy(BaseModel):
    x: int


def test_full_pipeline_with_doubles(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    backends = FakeBackends()
    report = run_pipeline(project, settings(), backends, SilentProgress())
    assert report.status == "done"
    n_train = len(project.examples(split="train"))
    assert len(project.micro_rules()) == n_train
    assert rawdb.query(project, "SELECT COUNT(*) AS n FROM clusters")[0]["n"] >= 3  # at least one per label
    assert len(project.rule_sets()) >= 1
    last = project.get_setting("last_evaluation")
    kinds = {project.evaluation(last[k]).kind: project.evaluation(last[k]).metrics["macro_f1"]
             for k in ("pld", "zero_shot", "few_shot")}
    assert set(kinds) == {"pld", "zero_shot", "few_shot"}
    # Phase states are all done and the file is sound.
    assert all(p["state"] == "done" for p in project.phase_states().values())
    assert project.integrity_check() == "ok"
    project.close()
    with open(tmp_path / "p.pld", "rb") as fh:
        assert int.from_bytes(fh.read(100)[68:72], "big") == APPLICATION_ID


def test_test_split_is_never_sent_to_the_teacher(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    backends = FakeBackends()
    run_pipeline(project, settings(), backends, SilentProgress())
    test_texts = [e.text for e in project.examples(split="test")]
    for req in backends.t.requests:
        for text in test_texts:
            assert text not in req.user
    # And the guard itself refuses a job that names a test example.
    job = TeacherJob("x", TeacherRequest("s", "u", _Dummy), (project.examples("test")[0].id,))
    with pytest.raises(LockedSplitError):
        run_teacher_jobs(project, backends.t, [job], SilentProgress(), phase=1)


def test_second_phase1_run_makes_zero_teacher_calls(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    backends = FakeBackends()
    run_pipeline(project, settings(), backends, SilentProgress(), phases=[1])
    first = backends.t.calls
    assert first == len(project.examples(split="train"))
    run_pipeline(project, settings(), backends, SilentProgress(), phases=[1])
    assert backends.t.calls == first
    # Even with the micro-rules gone, the request cache answers (same request content -> no call).
    rawdb.execute(project, "DELETE FROM micro_rules")
    run_pipeline(project, settings(), backends, SilentProgress(), phases=[1])
    assert backends.t.calls == first
    assert len(project.micro_rules()) == first


def test_rerunning_every_phase_costs_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    backends = FakeBackends()
    run_pipeline(project, settings(), backends, SilentProgress())
    calls, student_calls = backends.t.calls, backends.s.calls
    versions = len(project.rule_sets())
    run_pipeline(project, settings(), backends, SilentProgress())
    assert backends.t.calls == calls
    assert backends.s.calls == student_calls
    assert len(project.rule_sets()) == versions


class CancelAfter(ProgressBase):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def on_report(self, done: int, total: int, message: str) -> None:
        if done >= self.n:
            self.cancel()


def test_cancel_in_phase1_then_resume_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    reference = make_project(tmp_path, "ref.pld")
    run_pipeline(reference, settings(), FakeBackends(), SilentProgress())
    ref_prompt = reference.rule_set(reference.get_setting("chosen_rule_set_id")).prompt_text

    project = make_project(tmp_path, "p.pld")
    backends = FakeBackends(FakeTeacher(delay_s=0.01, max_concurrency=2))
    report = run_pipeline(project, settings(), backends, CancelAfter(10))
    assert report.status == "cancelled"
    assert project.phase_states()[1]["state"] == "cancelled"
    done_before = len(project.micro_rules())
    calls_before = backends.t.calls
    assert 10 <= done_before < len(project.examples(split="train"))
    report = run_pipeline(project, settings(), backends, SilentProgress())
    assert report.status == "done"
    # No completed call was repeated: the resumed run only asked for the missing items (+ phases 2-3).
    extraction_requests = [r for r in backends.t.requests if r.kind == "extraction"]
    assert len(extraction_requests) == len({r.user for r in extraction_requests})
    assert calls_before >= done_before
    assert project.rule_set(project.get_setting("chosen_rule_set_id")).prompt_text == ref_prompt


def test_invalid_replies_are_retried_then_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    bad = project.examples(split="train")[0].text
    backends = FakeBackends(FakeTeacher(invalid_for=[bad]))
    report = run_pipeline(project, settings(teacher_max_attempts=3), backends, SilentProgress(), phases=[1])
    assert report.status == "done"
    assert report.phases[1].failed == 1
    rows = rawdb.query(project, "SELECT status, attempt FROM teacher_calls WHERE status = 'invalid'")
    assert [r["attempt"] for r in rows] == [1, 2, 3]
    failed = rawdb.query(project, "SELECT * FROM failed_items")
    assert len(failed) == 1 and "JSON" in failed[0]["reason"]
    assert len(project.micro_rules()) == len(project.examples(split="train")) - 1


def test_quota_exhausted_stops_cleanly_and_resumes(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    teacher = FakeTeacher(quota_after=15, max_concurrency=1)
    report = run_pipeline(project, settings(), FakeBackends(teacher), SilentProgress())
    assert report.status == "quota_exhausted"
    assert project.phase_states()[1]["state"] == "paused"
    assert len(project.micro_rules()) == 15
    teacher.quota_after = None
    report = run_pipeline(project, settings(), FakeBackends(teacher), SilentProgress())
    assert report.status == "done"
    assert len(project.micro_rules()) == len(project.examples(split="train"))


def test_export_txt_is_byte_identical_to_the_evaluated_prompt(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    run_pipeline(project, settings(), FakeBackends(), SilentProgress())
    paths = export_rule_set(project, tmp_path / "out")
    by_ext = {p.suffix: p for p in paths}
    ev = project.evaluation(project.get_setting("last_evaluation")["pld"])
    assert by_ext[".txt"].read_bytes() == ev.prompt_text.encode("utf-8")
    doc = json.loads(by_ext[".json"].read_text())
    assert doc["prompt"]["sha256"] == ev.prompt_sha256
    assert doc["models"]["student"]["sha256"] == "f" * 64
    assert doc["dataset"]["dataset_hash"]
    assert set(doc["metrics"]) == {"pld", "zero_shot", "few_shot"}
    assert all("micro_rules" in r for r in doc["rules"])
    assert "unclustered_micro_rules" in doc  # noise rules are listed, never silently dropped
    md = by_ext[".md"].read_text()
    assert "## Rules" in md and "macro-F1" in md
    assert len(rawdb.query(project, "SELECT * FROM exports")) == 3


def test_markdown_export_escapes_hostile_text(tmp_path: Path) -> None:
    from pld_desktop.core.export import md_escape
    assert md_escape("<script>alert(1)</script> | [x](http://e)") == \
        r"\<script\>alert\(1\)\</script\> \| \[x\]\(http://e\)"


def test_rule_set_versions_are_immutable(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    run_pipeline(project, settings(), FakeBackends(), SilentProgress(), phases=[1, 2])
    with pytest.raises(sqlite3.DatabaseError, match="immutable"):
        rawdb.execute(project, "UPDATE rule_sets SET prompt_text = 'x'")


def test_synthesis_keeps_every_label_and_records_conflicts(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    run_pipeline(project, settings(), FakeBackends(), SilentProgress(), phases=[1, 2])
    rs = project.rule_set(project.get_setting("synthesis_rule_set_id"))
    assert {r.label for r in rs.rules} == set(project.labels())
    for r in rs.rules:
        assert r.micro_rule_ids and r.example_ids
    assert project.conflicts(rs.id), "the review call named a conflicting pair"
    # Every micro-rule is in exactly one cluster (noise clusters included): nothing silently dropped.
    members = rawdb.query(project, "SELECT micro_rule_id FROM cluster_members")
    assert sorted(m["micro_rule_id"] for m in members) == sorted(m["id"] for m in project.micro_rules())


def test_closed_loop_saves_every_candidate_with_its_dev_score(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    run_pipeline(project, settings(), FakeBackends(), SilentProgress(), phases=[1, 2, 3])
    rounds = project.loop_rounds()
    assert rounds
    for r in rounds:
        if r["candidate_rule_set_id"] is not None:
            cand = project.rule_set(r["candidate_rule_set_id"])
            assert cand.parent_id == r["base_rule_set_id"]
            assert cand.reason.startswith(f"resolution round {r['round']}")
            assert r["dev_macro_f1"] is not None
    chosen = project.get_setting("chosen_rule_set_id")
    dev_scores = {e.rule_set_id: e.metrics["macro_f1"] for e in project.evaluations()
                  if e.split == "dev" and e.kind == "pld"}
    assert dev_scores[chosen] == max(dev_scores.values())


def test_a_rewrite_that_loses_a_label_gets_its_previous_rules_back() -> None:
    from pld_desktop.core.phases.closed_loop import _repair
    old = rules_of({"uid": "R1", "text": "If a payment was not made by the customer, answer fraud_report.",
                    "label": "fraud_report"},
                   {"uid": "R2", "text": "If the customer asks how to do something, answer question.",
                    "label": "question"})
    new = rules_of({"uid": "R1", "text": "1 },", "label": "question"},
                   {"uid": "R2", "text": "If the message asks for opening hours, answer question.",
                    "label": "question"})
    rules, note = _repair(new, old, ["complaint", "fraud_report", "question"])
    assert [r.text for r in rules] == [new[1].text, old[0].text]
    assert [r.uid for r in rules] == ["R1", "R2"]
    assert "dropped 1 rule" in note and "fraud_report" in note


def test_exports_get_the_users_usual_permissions(tmp_path: Path) -> None:
    import os

    from pld_desktop.core.export import write_atomic
    umask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "x.txt", b"hello")
    finally:
        os.umask(umask)
    assert (tmp_path / "x.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "x.txt").read_bytes() == b"hello"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_a_rewritten_rule_takes_the_label_its_text_names() -> None:
    from pld_desktop.core.phases.closed_loop import _repair
    new = rules_of({"uid": "R1", "text": "If the customer was charged a fee they dislike, answer complaint.",
                    "label": "question"},
                   {"uid": "R2", "text": "If the message asks for opening hours, answer question.",
                    "label": "question"})
    rules, note = _repair(new, [], ["complaint", "question"])
    assert [r.label for r in rules] == ["complaint", "question"]
    assert "1 rule(s) relabelled" in note


def test_a_phase_whose_input_is_missing_says_what_to_run_first(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    backends = FakeBackends()
    for phase, first in ((2, "phase 1"), (3, "phase 2"), (4, "phases 2 and 3")):
        with pytest.raises(ValueError, match=first):
            run_pipeline(project, settings(), backends, SilentProgress(), phases=[phase])
    assert backends.t.calls == 0 and backends.s.calls == 0


def test_every_closed_loop_candidate_gets_data_conflicts_too(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    run_pipeline(project, settings(conflict_similarity=0.3), FakeBackends(), SilentProgress(), phases=[1, 2, 3])
    candidates = [r["candidate_rule_set_id"] for r in project.loop_rounds() if r["candidate_rule_set_id"]]
    assert candidates
    for cand in candidates:
        sources = {c.source for c in project.conflicts(cand)}
        assert sources & {"similarity", "co-firing"}
