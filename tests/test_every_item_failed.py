"""A phase whose items all failed is a failure, with the cause: phase 1 (and its batch mode), phase 3's rewrites
and student work, phase 4's scoring, in run_pipeline, `pld run`/`pld eval` (exit 1, README) and the window."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pld_desktop import cli
from pld_desktop.core.pipeline import run_pipeline
from pld_desktop.core.progress import SilentProgress
from pld_desktop.core.project import Project
from pld_desktop.core.protocols import Prediction, TeacherError, TeacherReply, TeacherRequest
from pld_desktop.core.settings import RunSettings, save_settings

from .fake_gemini import FakeGemini, bad_request, enable_batches
from .fakes import FakeBackends, FakeStudent, FakeTeacher
from .helpers import GEMINI_KEY as KEY
from .helpers import batch_teacher, make_project, settings

EXIT_FAILED = 1


class RefusingTeacher(FakeTeacher):
    """Refuses every request of the given kinds (as a server answering 400 to each would), answers the rest."""

    def __init__(self, kinds: Sequence[str], reason: str = "fake: this request is refused") -> None:
        super().__init__()
        self.kinds = set(kinds)
        self.reason = reason

    def generate(self, request: TeacherRequest) -> TeacherReply:
        if request.kind in self.kinds:
            with self._lock:
                self.requests.append(request)
            raise TeacherError(self.reason, retryable=False, status=400)
        return super().generate(request)


class BrokenStudent(FakeStudent):
    """A student whose every classification fails (its server went away, its model crashed)."""

    def classify(self, system_prompt: str, text: str, labels: Sequence[str]) -> Prediction:
        raise ConnectionError("fake: the student server closed the connection")


def _states(project: Project) -> dict[int, str]:
    return {p: s["state"] for p, s in project.phase_states().items()}


def _cli(monkeypatch: pytest.MonkeyPatch, backends: FakeBackends, *argv: str) -> int:
    monkeypatch.setattr("pld_desktop.backends.factory.DefaultBackends", lambda **_: backends)
    return cli.main(list(argv))


def _project_through(tmp_path: Path, phases: Sequence[int], **kw: Any) -> Path:
    """A project on the demo data with `phases` already done by the fakes."""
    project = make_project(tmp_path)
    if phases:
        assert run_pipeline(project, settings(**kw), FakeBackends(), SilentProgress(), phases=phases).status == "done"
    else:
        save_settings(project, settings(**kw))
    path = project.path
    project.close()
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Phase 1
# ---------------------------------------------------------------------------------------------------------------------
def test_phase1_whose_every_item_failed_is_a_failed_run_with_the_cause(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    report = run_pipeline(project, settings(teacher_max_attempts=1), FakeBackends(RefusingTeacher(["extraction"])),
                          SilentProgress(), phases=[1])
    n_train = len(project.examples(split="train"))
    assert report.status == "failed"
    assert f"all {n_train} items failed" in report.message and "this request is refused" in report.message
    assert _states(project)[1] == "failed"
    assert "this request is refused" in project.phase_states()[1]["message"]


def test_phase1_rerun_of_items_all_given_up_earlier_fails_and_says_how_to_retry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    path = _project_through(tmp_path, [], teacher_max_attempts=1)
    teacher = RefusingTeacher(["extraction"])
    assert _cli(monkeypatch, FakeBackends(teacher), "run", str(path), "--phase", "1", "--quiet") == EXIT_FAILED
    first_calls = teacher.calls
    capsys.readouterr()
    # The rerun sends nothing (every item was given up) and must not say "Finished".
    assert _cli(monkeypatch, FakeBackends(teacher), "run", str(path), "--phase", "1", "--quiet") == EXIT_FAILED
    err = capsys.readouterr().err
    assert teacher.calls == first_calls
    assert "given up" in err and "--retry-failed" in err and "this request is refused" in err, err
    assert "Finished" not in err and "Traceback" not in err
    with Project.open(path, read_only=True) as project:
        assert _states(project)[1] == "failed"


def test_pld_run_phase1_every_item_failed_exits_1_with_the_cause(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    path = _project_through(tmp_path, [], teacher_max_attempts=1)
    code = _cli(monkeypatch, FakeBackends(RefusingTeacher(["extraction"])), "run", str(path), "--quiet")
    err = capsys.readouterr().err
    assert code == EXIT_FAILED, err
    assert "Phase 1 failed" in err and "items failed" in err and "this request is refused" in err, err
    assert "needs micro-rules" not in err and "Finished" not in err


def test_batch_phase1_whose_every_item_failed_is_a_failure(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    with FakeGemini(expected_key=KEY) as server:
        server.always(bad_request("fake: this batch request is refused"))
        enable_batches(server, pending_polls=1)
        backends = FakeBackends()
        backends.t = batch_teacher(server)  # type: ignore[assignment]
        run_settings = RunSettings(teacher="gemini", teacher_batch=True, teacher_max_attempts=1,
                                   batch_poll_initial_s=0.02, batch_poll_max_s=0.1)
        report = run_pipeline(project, run_settings, backends, SilentProgress(), phases=[1])
    assert report.status == "failed", report.message
    assert "items failed" in report.message and "refused" in report.message, report.message
    assert _states(project)[1] == "failed" and not project.micro_rule_example_ids()


# ---------------------------------------------------------------------------------------------------------------------
# Phase 3: the teacher's rewrites, and the student's per-item work
# ---------------------------------------------------------------------------------------------------------------------
def test_phase3_whose_every_rewrite_failed_is_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = _project_through(tmp_path, [1, 2], teacher_max_attempts=1)
    teacher = RefusingTeacher(["resolution"])
    code = _cli(monkeypatch, FakeBackends(teacher), "run", str(path), "--phase", "3", "--quiet")
    err = capsys.readouterr().err
    assert code == EXIT_FAILED, err
    assert "Phase 3 failed" in err and "every teacher rewrite failed" in err and "this request is refused" in err
    assert "Finished" not in err and "Traceback" not in err
    assert any(r.kind == "resolution" for r in teacher.requests)
    with Project.open(path, read_only=True) as project:
        assert _states(project)[3] == "failed"


def test_phase3_with_one_failed_rewrite_among_good_ones_is_done(tmp_path: Path) -> None:
    """The guard is for "every": a round that failed next to one that worked leaves the phase done."""

    class FlakyOnce(FakeTeacher):
        def generate(self, request: TeacherRequest) -> TeacherReply:
            if request.kind == "resolution" and not any(r.kind == "resolution" for r in self.requests):
                self.requests.append(request)
                raise TeacherError("fake: refused once", retryable=False, status=400)
            return super().generate(request)

    project = make_project(tmp_path)
    report = run_pipeline(project, settings(teacher_max_attempts=1, loop_patience=2),
                          FakeBackends(FlakyOnce()), SilentProgress(), phases=[1, 2, 3])
    assert report.status == "done", report.message
    rounds = report.phases[3].rounds
    assert rounds[0].get("failed") and not all(r.get("failed") for r in rounds)


@pytest.mark.parametrize("cut", [{"finish_reason": "length"}, {"finish_reason": "MAX_TOKENS"}, {"truncated": True}])
def test_phase3_whose_every_rewrite_was_cut_keeps_its_rules_and_goes_on(tmp_path: Path, cut: dict[str, Any]) -> None:
    """A rewrite cut at the output bound is an answer the loop cannot use (a small local teacher restating a dozen
    rules runs past 512 tokens), like one that drops a label, not a teacher that is gone: each round is a failed
    attempt with the reason, the loop keeps the synthesis rules, and phase 4 runs on them."""

    class CuttingTeacher(FakeTeacher):
        def generate(self, request: TeacherRequest) -> TeacherReply:
            reply = super().generate(request)
            if request.kind != "resolution":
                return reply
            return TeacherReply(reply.text[: len(reply.text) // 2], reply.usage, reply.latency_s, reply.model, **cut)

    path = _project_through(tmp_path, [1, 2], teacher_max_attempts=2, loop_patience=2)
    with Project.open(path) as project:
        report = run_pipeline(project, settings(teacher_max_attempts=2, loop_patience=2),
                              FakeBackends(CuttingTeacher()), SilentProgress(), phases=[3, 4])
        assert report.status == "done", report.message
        rounds = report.phases[3].rounds
        assert rounds and all(r.get("failed") and r.get("useless") for r in rounds)
        assert all("output length bound" in r["note"] for r in rounds)
        assert _states(project)[3] == "done" and _states(project)[4] == "done"


def test_phase3_student_failing_on_every_item_is_a_failure_with_the_cause(tmp_path: Path) -> None:
    path = _project_through(tmp_path, [1, 2])
    with Project.open(path) as project:
        report = run_pipeline(project, settings(), FakeBackends(student=BrokenStudent()), SilentProgress(),
                              phases=[3])
        assert report.status == "failed"
        assert "Phase 3 failed" in report.message and "closed the connection" in report.message
        assert _states(project)[3] == "failed"


# ---------------------------------------------------------------------------------------------------------------------
# Phase 4 and `pld eval`
# ---------------------------------------------------------------------------------------------------------------------
def test_phase4_scoring_whose_every_item_failed_exits_1_with_the_cause(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    path = _project_through(tmp_path, [1, 2, 3])
    code = _cli(monkeypatch, FakeBackends(student=BrokenStudent()), "run", str(path), "--phase", "4", "--quiet")
    err = capsys.readouterr().err
    assert code == EXIT_FAILED, err
    assert "Phase 4 failed" in err and "the student failed" in err and "closed the connection" in err, err
    assert "internal error" not in err and "Traceback" not in err and "Finished" not in err
    with Project.open(path, read_only=True) as project:
        assert _states(project)[4] == "failed"


@pytest.mark.parametrize("split", ["dev", "test"])
def test_pld_eval_with_a_student_failing_every_item_exits_1_with_the_cause(
        split: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    path = _project_through(tmp_path, [1, 2])
    code = _cli(monkeypatch, FakeBackends(student=BrokenStudent()), "eval", str(path), "--split", split, "--quiet")
    err = capsys.readouterr().err
    assert code == EXIT_FAILED, err
    assert err.startswith("error:") and "the student failed" in err and "closed the connection" in err, err
    assert "internal error" not in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------------------------
# The window
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("phase", "backends", "said"), [
    (1, lambda: FakeBackends(RefusingTeacher(["extraction"])), "items failed"),
    (3, lambda: FakeBackends(RefusingTeacher(["resolution"])), "every teacher rewrite failed"),
    (4, lambda: FakeBackends(student=BrokenStudent()), "the student failed"),
], ids=["phase1", "phase3", "phase4"])
def test_the_window_shows_a_phase_whose_every_item_failed_as_failed(
        phase: int, backends: Any, said: str, qtbot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pld_desktop.ui.app import MainWindow
    path = _project_through(tmp_path, [p for p in (1, 2, 3) if p < phase], teacher_max_attempts=1)
    shown: list[str] = []
    monkeypatch.setattr("pld_desktop.ui.app.QMessageBox.warning", lambda *a: shown.append(a[2]))
    window = MainWindow(backends_factory=backends)
    qtbot.addWidget(window)
    window.open_project(path)
    window.run_phases([phase])
    assert window.worker is not None
    with qtbot.waitSignal(window.runner.succeeded, timeout=60000) as blocker:
        pass
    status, message = blocker.args[0]
    assert status == "failed" and f"Phase {phase} failed" in message and said in message, blocker.args
    qtbot.waitUntil(lambda: window.worker is None)
    assert shown and said in shown[0]
    assert "failed" in window.cards[phase].state.text()
