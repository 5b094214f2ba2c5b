"""Phase 1 through the Gemini Batch API: the real google-genai client against the fake server's batch endpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pld_desktop.backends.gemini_batch import GeminiBatchTeacher
from pld_desktop.backends.gemini_teacher import GeminiTeacher
from pld_desktop.core.batch_extraction import (
    BATCH_PRICE_FACTOR,
    BatchJobFailed,
    PollSchedule,
    batch_summary,
    run_batch_extraction,
)
from pld_desktop.core.pipeline import run_pipeline
from pld_desktop.core.progress import Cancelled, ProgressBase, SilentProgress
from pld_desktop.core.project import Project
from pld_desktop.core.settings import RunSettings
from pld_desktop.core.teacher_calls import QuotaExhausted

from .. import rawdb
from ..fake_gemini import FakeGemini, enable_batches, invalid_json, quota_exhausted, server_error
from ..fakes import FakeBackends
from ..helpers import GEMINI_KEY as KEY
from ..helpers import batch_teacher, extraction_responder, make_project

REPO = Path(__file__).resolve().parents[2]
FAST_POLL = PollSchedule(initial_s=0.02, factor=1.5, max_s=0.1)


def generate_calls(server: FakeGemini) -> int:
    return sum(1 for r in server.requests if r.action == "generateContent")


def rules_by_example(project: Project) -> dict[str, tuple[str, str, str]]:
    return {r["ext_id"]: (r["reasoning"], r["rule"], r["label"]) for r in project.micro_rules()}


class RecordingProgress(ProgressBase):
    def __init__(self, cancel_when: str | None = None) -> None:
        super().__init__()
        self.reports: list[str] = []
        self.cancel_when = cancel_when

    def on_report(self, done: int, total: int, message: str) -> None:
        self.reports.append(message)
        if self.cancel_when and self.cancel_when in message:
            self.cancel()


def test_batch_phase1_gives_the_sync_rules_at_half_the_cost(tmp_path: Path) -> None:
    sync_project = make_project(tmp_path, "sync.pld")
    batch_project = make_project(tmp_path, "batch.pld")
    n_train = len(batch_project.examples(split="train"))
    with FakeGemini(expected_key=KEY) as server:
        server.responder = extraction_responder
        backends = FakeBackends()
        backends.t = GeminiTeacher("gemini-2.5-flash", api_key=KEY, base_url=server.base_url,  # type: ignore
                                   retry_initial_s=0.01, retry_max_s=0.05)
        assert run_pipeline(sync_project, RunSettings(teacher="gemini"), backends, SilentProgress(),
                            phases=[1]).status == "done"
        batches = enable_batches(server, pending_polls=2)
        sync_requests = len(server.requests)
        progress = RecordingProgress()
        report = run_batch_extraction(batch_project, batch_teacher(server), RunSettings(teacher="gemini"), progress,
                                      poll=FAST_POLL)
        # One job, no interactive calls: every reply came from the batch and was found in the cache.
        assert batches.creates == 1 and len(report.submitted) == 1
        assert generate_calls(server) == sync_requests
        assert report.merged_ok == n_train and report.extraction is not None
        assert report.extraction.cached == n_train and report.extraction.called == 0
        assert any("pending" in m for m in progress.reports) and any("running" in m for m in progress.reports)
        inner = batches.inner_requests[0]
        assert "expert annotator" in inner.system_text
        assert inner.generation_config["responseMimeType"] == "application/json"
        assert "rule" in json.dumps(inner.generation_config)
        # A rerun sends nothing: no new job, no polls, no calls.
        gets = batches.gets
        again = run_batch_extraction(batch_project, batch_teacher(server), RunSettings(teacher="gemini"),
                                     SilentProgress(), poll=FAST_POLL)
        assert again.submitted == [] and batches.creates == 1 and batches.gets == gets
        assert generate_calls(server) == sync_requests
    assert rules_by_example(batch_project) == rules_by_example(sync_project)
    assert len(rules_by_example(batch_project)) == n_train
    # The same request hashes in both files: the batch filled the very cache the synchronous path reads.
    hashes = "SELECT request_hash FROM teacher_calls WHERE status = 'ok' ORDER BY request_hash"
    assert rawdb.query(batch_project, hashes) == rawdb.query(sync_project, hashes)
    sync_cost = sync_project.teacher_totals()["cost_usd"]
    assert batch_project.teacher_totals()["cost_usd"] == pytest.approx(sync_cost * BATCH_PRICE_FACTOR)
    assert batch_project.phase_states()[1]["state"] == "done"
    [job] = batch_summary(batch_project)
    assert job["state"] == "succeeded" and job["merged"] == 1 and job["n_requests"] == n_train
    batch_project.close()
    assert KEY.encode() not in (tmp_path / "batch.pld").read_bytes()


def test_invalid_and_failed_batch_items_are_recorded_then_retried_synchronously(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    n_train = len(project.examples(split="train"))
    with FakeGemini(expected_key=KEY) as server:
        server.responder = extraction_responder
        enable_batches(server, pending_polls=0)
        # The first two batch items get invalid JSON, the third a per-request error; the rest are good.
        server.enqueue(invalid_json(), invalid_json(), server_error())
        report = run_batch_extraction(project, batch_teacher(server), RunSettings(teacher="gemini"),
                                      SilentProgress(), poll=FAST_POLL)
        assert (report.merged_ok, report.merged_invalid, report.merged_errors) == (n_train - 3, 2, 1)
        assert generate_calls(server) == 3  # exactly the three unanswered requests, synchronously
    invalid = rawdb.query(project, "SELECT error, cost_usd FROM teacher_calls WHERE status = 'invalid'")
    assert len(invalid) == 2 and all("Invalid JSON" in r["error"] for r in invalid)
    errors = rawdb.query(project, "SELECT error FROM teacher_calls WHERE status = 'error'")
    assert len(errors) == 1 and "500" in errors[0]["error"]
    assert len(project.micro_rules()) == n_train
    assert project.failed_items(1) == []


def test_replies_without_metadata_are_matched_by_position(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    with FakeGemini(expected_key=KEY) as server:
        server.responder = extraction_responder
        enable_batches(server, pending_polls=0, echo_metadata=False)
        report = run_batch_extraction(project, batch_teacher(server), RunSettings(teacher="gemini"),
                                      SilentProgress(), poll=FAST_POLL)
        assert generate_calls(server) == 0 and report.extraction is not None and report.extraction.called == 0
    gold = {e.ext_id: e.label for e in project.examples(split="train")}
    got = rules_by_example(project)
    assert {k: v[2] for k, v in got.items()} == gold
    assert all(rule.endswith(f"answer {gold[k]}.") for k, (_, rule, _) in got.items())


def test_many_requests_are_split_into_several_jobs(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    n_train = len(project.examples(split="train"))
    with FakeGemini(expected_key=KEY) as server:
        server.responder = extraction_responder
        batches = enable_batches(server, pending_polls=1)
        teacher = batch_teacher(server)
        teacher.max_batch_requests = 20
        report = run_batch_extraction(project, teacher, RunSettings(teacher="gemini"), SilentProgress(),
                                      poll=FAST_POLL)
    assert batches.creates == len(report.submitted) == -(-n_train // 20)
    assert sorted(len(j.inlined) for j in batches.jobs.values())[-1] == 20
    assert len(project.micro_rules()) == n_train


def test_cancel_while_polling_stops_polling_not_the_job(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    n_train = len(project.examples(split="train"))
    with FakeGemini(expected_key=KEY) as server:
        server.responder = extraction_responder
        batches = enable_batches(server, pending_polls=10**6)
        progress = RecordingProgress(cancel_when="running")
        started = time.monotonic()
        with pytest.raises(Cancelled):
            run_batch_extraction(project, batch_teacher(server), RunSettings(teacher="gemini"), progress,
                                 poll=PollSchedule(initial_s=0.05, factor=1.0, max_s=0.05))
        assert time.monotonic() - started < 10
        assert batches.cancels == 0  # the job keeps running at the provider
        assert any("keep running" in m for level, m in progress.messages if level == "warning")
        [job] = batch_summary(project)
        assert job["state"] == "running" and job["merged"] == 0
        assert project.micro_rules() == [] and generate_calls(server) == 0
        # The next run polls the same job and merges it.
        batches.pending_polls = 0
        report = run_batch_extraction(project, batch_teacher(server), RunSettings(teacher="gemini"),
                                      SilentProgress(), poll=FAST_POLL)
        assert report.resumed == [job["name"]] and report.submitted == []
        assert batches.creates == 1
    assert len(project.micro_rules()) == n_train


def test_expired_job_says_so_and_its_requests_go_into_the_next_job(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    n_train = len(project.examples(split="train"))
    with FakeGemini(expected_key=KEY) as server:
        server.responder = extraction_responder
        batches = enable_batches(server, pending_polls=1, fail_state="BATCH_STATE_EXPIRED")
        with pytest.raises(BatchJobFailed) as info:
            run_batch_extraction(project, batch_teacher(server), RunSettings(teacher="gemini"), SilentProgress(),
                                 poll=FAST_POLL)
        message = str(info.value)
        assert "expired" in message and "rerun" in message and KEY not in message
        assert rawdb.query(project, "SELECT COUNT(*) AS n FROM teacher_calls")[0]["n"] == 0
        assert project.micro_rules() == [] and generate_calls(server) == 0
        assert batch_summary(project)[0]["state"] == "expired"
        batches.fail_state = None
        report = run_batch_extraction(project, batch_teacher(server), RunSettings(teacher="gemini"),
                                      SilentProgress(), poll=FAST_POLL)
        assert batches.creates == 2 and report.resumed == [] and len(report.submitted) == 1
        assert batches.jobs[report.submitted[0]].inlined and len(batches.jobs[report.submitted[0]].inlined) == n_train
    assert len(project.micro_rules()) == n_train


def test_quota_refusal_at_submission_is_resumable(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    with FakeGemini(expected_key=KEY) as server:
        server.responder = extraction_responder
        batches = enable_batches(server, pending_polls=0)
        batches.create_error = quota_exhausted()
        teacher = GeminiBatchTeacher("gemini-2.5-flash", api_key=KEY, base_url=server.base_url, retry_attempts=1)
        with pytest.raises(QuotaExhausted) as info:
            run_batch_extraction(project, teacher, RunSettings(teacher="gemini"), SilentProgress(), poll=FAST_POLL)
        assert "quota" in str(info.value).lower() and KEY not in str(info.value)
        assert batch_summary(project) == []
        run_batch_extraction(project, batch_teacher(server), RunSettings(teacher="gemini"), SilentProgress(),
                             poll=FAST_POLL)
    assert len(project.micro_rules()) == len(project.examples(split="train"))


_SUBMIT_AND_POLL = """
import os, sys
from pld_desktop.backends.gemini_batch import GeminiBatchTeacher
from pld_desktop.core.batch_extraction import PollSchedule, run_batch_extraction
from pld_desktop.core.progress import SilentProgress
from pld_desktop.core.project import Project
from pld_desktop.core.settings import RunSettings
project = Project.open(sys.argv[1])
teacher = GeminiBatchTeacher("gemini-2.5-flash", base_url=sys.argv[2], retry_initial_s=0.01, retry_max_s=0.05)
run_batch_extraction(project, teacher, RunSettings(teacher="gemini"), SilentProgress(),
                     poll=PollSchedule(0.05, 1.0, 0.05))
"""


def test_restart_after_sigkill_polls_the_submitted_job_instead_of_resubmitting(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    n_train = len(project.examples(split="train"))
    path = project.path
    project.close()
    with FakeGemini(expected_key=KEY) as server:
        server.responder = extraction_responder
        batches = enable_batches(server, pending_polls=10**6)
        env = {**os.environ, "GEMINI_API_KEY": KEY, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-c", _SUBMIT_AND_POLL, str(path), server.base_url], env=env,
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while batches.gets < 2 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert batches.gets >= 2, proc.stderr.read().decode() if proc.poll() is not None else "no polls"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        assert batches.creates == 1
        [job] = batches.jobs.values()
        batches.pending_polls = job.polls  # the next poll finds it done
        project = Project.open(path)
        progress = RecordingProgress()
        report = run_batch_extraction(project, batch_teacher(server), RunSettings(teacher="gemini"), progress,
                                      poll=FAST_POLL)
        assert batches.creates == 1, "the restarted run must poll the job, not submit a new one"
        assert report.resumed == [job.name] and report.submitted == []
        assert generate_calls(server) == 0
        assert any("Resuming 1 batch job" in m for _, m in progress.messages)
    assert len(project.micro_rules()) == n_train
    assert project.phase_states()[1]["state"] == "done"
    assert project.integrity_check() == "ok"


def test_m002_upgrades_a_file_made_before_batches(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    path = project.path
    with project.transaction() as conn:  # make it look like a file written before m002 existed
        conn.execute("DROP TABLE teacher_batch_requests")
        conn.execute("DROP TABLE teacher_batches")
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm002_teacher_batches'")
    project.close()
    project = Project.open(path)
    assert project.teacher_batches() == []
    assert project.add_teacher_batch("batches/x", phase=1, model="gemini:m", state="pending",
                                     items=[("h1", "example:1"), ("h2", "example:2")]) > 0
    assert list(project.teacher_batch_requests(project.teacher_batches()[0]["id"])) == ["h1", "h2"]
    assert [b["name"] for b in project.teacher_batches(1, open_only=True)] == ["batches/x"]


def test_open_job_whose_requests_were_answered_otherwise_is_not_waited_for(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    with FakeGemini(expected_key=KEY) as server:
        server.responder = extraction_responder
        batches = enable_batches(server, pending_polls=10**6)
        with pytest.raises(Cancelled):
            run_batch_extraction(project, batch_teacher(server), RunSettings(teacher="gemini"),
                                 RecordingProgress(cancel_when="waiting"), poll=FAST_POLL)
        # The user gives up on batch mode and runs phase 1 synchronously.
        backends = FakeBackends()
        backends.t = batch_teacher(server)  # type: ignore[assignment]
        assert run_pipeline(project, RunSettings(teacher="gemini"), backends, SilentProgress(),
                            phases=[1]).status == "done"
        gets = batches.gets
        report = run_batch_extraction(project, batch_teacher(server), RunSettings(teacher="gemini"),
                                      SilentProgress(), poll=FAST_POLL)
        assert report.resumed == [] and report.submitted == [] and batches.gets == gets
    assert batch_summary(project)[0]["state"] == "superseded"


def test_run_pipeline_uses_batch_mode_when_settings_ask(tmp_path: Path) -> None:
    """The setting the CLI and GUI write (`teacher_batch`) routes phase 1 through one batch job."""
    project = make_project(tmp_path, "via_settings.pld")
    n_train = len(project.examples(split="train"))
    with FakeGemini(expected_key=KEY) as server:
        server.responder = extraction_responder
        batches = enable_batches(server, pending_polls=1)
        backends = FakeBackends()
        backends.t = batch_teacher(server)  # type: ignore[assignment]
        settings = RunSettings(teacher="gemini", teacher_batch=True, batch_poll_initial_s=0.02, batch_poll_max_s=0.1)
        assert run_pipeline(project, settings, backends, SilentProgress(), phases=[1]).status == "done"
        assert batches.creates == 1 and generate_calls(server) == 0
    assert len(rules_by_example(project)) == n_train
    project.close()


def test_batch_mode_refuses_a_teacher_without_batches(tmp_path: Path) -> None:
    project = make_project(tmp_path, "no_batch.pld")
    with pytest.raises(ValueError, match="Batch mode needs the Gemini teacher"):
        run_pipeline(project, RunSettings(teacher="local", teacher_batch=True), FakeBackends(), SilentProgress(),
                     phases=[1])
    project.close()


def test_pld_run_batch_then_batch_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from pld_desktop.cli import main
    from pld_desktop.core.settings import load_settings, save_settings
    project = make_project(tmp_path, "cli.pld")
    settings = load_settings(project)
    settings.batch_poll_initial_s, settings.batch_poll_max_s = 0.02, 0.1  # the poll schedule lives in the project
    save_settings(project, settings)
    project.close()
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    with FakeGemini(expected_key=KEY) as server:
        server.responder = extraction_responder
        batches = enable_batches(server, pending_polls=1)
        assert main(["run", str(tmp_path / "cli.pld"), "--phase", "1", "--teacher", "gemini", "--base-url",
                     server.base_url, "--batch", "--yes", "--quiet"]) == 0
        assert batches.creates == 1 and generate_calls(server) == 0
    capsys.readouterr()
    assert main(["batch", str(tmp_path / "cli.pld")]) == 0
    out = capsys.readouterr().out
    assert "succeeded" in out and KEY not in out
    assert main(["run", str(tmp_path / "cli.pld"), "--phase", "1", "--teacher", "local", "--batch"]) == 2
    assert "--batch needs the Gemini teacher" in capsys.readouterr().err
