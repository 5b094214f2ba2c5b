"""The UI's one background-task runner (ui/tasks.py TaskRunner): outcomes, progress, cancel, and lifetimes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from PySide6.QtCore import QCoreApplication, QEvent
from PySide6.QtWidgets import QWidget

from pld_desktop.core.progress import Cancelled
from pld_desktop.ui.tasks import QtProgress, TaskRunner, task_keeper

WAIT_MS = 30_000  # generous: a bound on a hang, never a timing assertion


@pytest.fixture
def runner(qtbot: Any) -> Iterator[TaskRunner]:
    owner = QWidget()  # the view that owns the runner (referenced here for the test's length)
    qtbot.addWidget(owner)
    yield TaskRunner(owner, name="pld-test-task")
    owner.close()


def test_a_task_s_result_arrives_on_the_gui_thread_and_the_runner_is_idle_by_then(qtbot: Any,
                                                                                  runner: TaskRunner) -> None:
    ran_on: list[str] = []
    seen: list[tuple[Any, bool, str]] = []
    runner.succeeded.connect(lambda result: seen.append((result, runner.busy(), threading.current_thread().name)))

    def task(progress: QtProgress) -> int:
        ran_on.append(threading.current_thread().name)
        return 42

    with qtbot.waitSignal(runner.succeeded, timeout=WAIT_MS):
        assert runner.start(task)
        assert runner.busy()
    assert seen == [(42, False, threading.current_thread().name)]
    assert ran_on == ["pld-test-task"], "the task ran on the runner's named worker thread"
    assert runner.wait(WAIT_MS)


def test_a_failing_task_reports_its_message_and_exception(qtbot: Any, runner: TaskRunner) -> None:
    error = ValueError("the file is not a CSV")
    cancelled: list[bool] = []
    runner.cancelled.connect(lambda: cancelled.append(True))

    def task(progress: QtProgress) -> None:
        raise error

    with qtbot.waitSignal(runner.failed, timeout=WAIT_MS) as blocker:
        runner.start(task)
    assert blocker.args == ["the file is not a CSV", error]
    assert not runner.busy() and not cancelled


def test_an_exception_without_a_message_is_named_by_its_type(qtbot: Any, runner: TaskRunner) -> None:
    def task(progress: QtProgress) -> None:
        raise KeyError()  # str() is '' only for some types; KeyError() gives ''

    with qtbot.waitSignal(runner.failed, timeout=WAIT_MS) as blocker:
        runner.start(task)
    assert blocker.args[0] == "KeyError"


def test_cancel_is_cooperative_and_ends_in_cancelled(qtbot: Any, runner: TaskRunner) -> None:
    entered = threading.Event()
    checks: list[int] = []

    def task(progress: QtProgress) -> str:
        entered.set()
        while True:  # works until it is told to stop; never terminated from outside
            checks.append(1)
            progress.check()
            threading.Event().wait(0.005)

    outcomes: list[str] = []
    runner.succeeded.connect(lambda _r: outcomes.append("succeeded"))
    runner.failed.connect(lambda *_a: outcomes.append("failed"))
    runner.start(task)
    assert entered.wait(WAIT_MS / 1000)
    with qtbot.waitSignal(runner.cancelled, timeout=WAIT_MS):
        runner.cancel()
    assert outcomes == [] and checks and not runner.busy()
    assert runner.wait(WAIT_MS)


def test_progress_is_re_emitted_in_order_before_the_outcome(qtbot: Any, runner: TaskRunner) -> None:
    events: list[tuple[Any, ...]] = []
    runner.begun.connect(lambda stage, total: events.append(("begun", stage, total)))
    runner.reported.connect(lambda done, total, message: events.append(("reported", done, total, message)))
    runner.logged.connect(lambda message, level: events.append(("logged", message, level)))
    runner.succeeded.connect(lambda result: events.append(("succeeded", result)))

    def task(progress: QtProgress) -> str:
        progress.begin("Scoring", 3)
        for i in range(1, 4):
            progress.report(i, 3, f"item {i}")
        progress.log("three scored", "info")
        return "ok"

    with qtbot.waitSignal(runner.succeeded, timeout=WAIT_MS):
        runner.start(task)
    assert events == [("begun", "Scoring", 3), ("reported", 1, 3, "item 1"), ("reported", 2, 3, "item 2"),
                      ("reported", 3, 3, "item 3"), ("logged", "three scored", "info"), ("succeeded", "ok")]


def test_one_task_at_a_time(qtbot: Any, runner: TaskRunner) -> None:
    gate = threading.Event()
    runner.start(lambda progress: gate.wait(WAIT_MS / 1000))
    assert not runner.start(lambda progress: "second"), "a busy runner refuses a second task"
    assert runner.progress is not None
    with qtbot.waitSignal(runner.succeeded, timeout=WAIT_MS) as blocker:
        gate.set()
    assert blocker.args == [True]
    assert runner.progress is None


def test_after_runs_on_the_worker_once_the_outcome_is_posted(qtbot: Any, runner: TaskRunner) -> None:
    outcome_seen = threading.Event()
    order: list[str] = []
    runner.succeeded.connect(lambda _r: outcome_seen.set())

    def after() -> None:  # e.g. freeing the models; the window must not wait for it
        order.append(f"after on {threading.current_thread().name}")

    with qtbot.waitSignal(runner.succeeded, timeout=WAIT_MS):
        runner.start(lambda progress: order.append("task") or "done", after=after)
    assert runner.wait(WAIT_MS)
    assert order == ["task", "after on pld-test-task"]


def test_an_abandoned_task_is_never_heard_of_again(qtbot: Any, runner: TaskRunner) -> None:
    gate = threading.Event()
    heard: list[Any] = []
    runner.succeeded.connect(heard.append)
    runner.cancelled.connect(lambda: heard.append("cancelled"))
    first = QtProgress()
    runner.start(lambda progress: gate.wait(WAIT_MS / 1000) and "late", progress=first)
    runner.abandon()
    assert not runner.busy() and first.cancelled(), "abandon also asks the task to stop"
    with qtbot.waitSignal(runner.succeeded, timeout=WAIT_MS):
        assert runner.start(lambda progress: "fresh")  # not serial: runs beside the abandoned one
    gate.set()
    qtbot.waitUntil(lambda: not task_keeper().running(), timeout=WAIT_MS)
    QCoreApplication.processEvents()
    assert heard == ["fresh"]


def test_a_serial_runner_starts_the_next_task_after_the_abandoned_one_has_ended(qtbot: Any) -> None:
    owner = QWidget()
    qtbot.addWidget(owner)
    runner = TaskRunner(owner, serial=True)
    gate = threading.Event()
    order: list[str] = []

    def first(progress: QtProgress) -> None:
        gate.wait(WAIT_MS / 1000)
        order.append("first ended")

    runner.start(first)
    runner.abandon()
    runner.start(lambda progress: order.append("second ran") or "second")
    assert runner.busy(), "the second task waits for its turn"
    with qtbot.waitSignal(runner.succeeded, timeout=WAIT_MS) as blocker:
        gate.set()
    assert blocker.args == ["second"] and order == ["first ended", "second ran"]


class _View(QWidget):
    """A view that owns a runner and records every callback it gets."""

    def __init__(self, calls: list[str]) -> None:
        super().__init__()
        self.calls = calls
        self.runner = TaskRunner(self)
        self.runner.succeeded.connect(self.on_result)
        self.runner.failed.connect(lambda *_a: self.calls.append("failed"))
        self.runner.cancelled.connect(lambda: self.calls.append("cancelled"))
        self.runner.reported.connect(lambda *_a: self.calls.append("reported"))

    def on_result(self, result: object) -> None:
        self.calls.append(f"result {result}")


@pytest.mark.parametrize("shutdown", [False, True], ids=["deleted", "shut-down"])
def test_a_view_deleted_while_its_task_runs_gets_no_callback_and_the_thread_ends(qtbot: Any,
                                                                                 shutdown: bool) -> None:
    calls: list[str] = []
    view = _View(calls)
    entered, gate = threading.Event(), threading.Event()

    def task(progress: QtProgress) -> str:  # ignores cancel on purpose: like a model load, it cannot stop
        entered.set()
        gate.wait(WAIT_MS / 1000)
        progress.report(1, 1, "late")
        return "late"

    view.runner.start(task)
    assert entered.wait(WAIT_MS / 1000)
    assert any(t.isRunning() for t in task_keeper().running()), "the application's keeper holds the thread"
    if shutdown:
        view.runner.shutdown(wait=False)
    view.deleteLater()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)  # the view and its runner are gone
    del view
    gate.set()
    qtbot.waitUntil(lambda: not task_keeper().running(), timeout=WAIT_MS)  # the keeper held it to the end
    QCoreApplication.processEvents()
    assert calls == [], "no callback reached the deleted view"


def test_a_shut_down_view_waits_for_its_thread(qtbot: Any, runner: TaskRunner) -> None:
    released = threading.Event()

    def task(progress: QtProgress) -> None:
        while not progress.cancelled():
            threading.Event().wait(0.005)
        raise Cancelled("cancelled by the user")

    runner.start(task, after=released.set)
    runner.shutdown(wait=True)
    assert released.is_set(), "shutdown(wait=True) returns after the task and its `after` have ended"
    assert not runner.busy()


def test_the_keeper_is_one_per_application(qapp: Any) -> None:
    assert task_keeper() is task_keeper()
    assert task_keeper().parent() is QCoreApplication.instance()


EXIT_WHILE_RUNNING = """
import sys, threading
from PySide6.QtWidgets import QApplication, QWidget
from pld_desktop.ui.tasks import TaskRunner
app = QApplication(sys.argv)
owner = QWidget()
runner = TaskRunner(owner, name="pld-exit-task")
started = threading.Event()

def task(progress):
    started.set()
    while not progress.cancelled():
        threading.Event().wait(0.01)

runner.start(task)
started.wait(30)
print("script ends with the task running", flush=True)
"""


def test_a_script_that_ends_while_a_task_runs_exits_cleanly(tmp_path: Any) -> None:
    """No app.exec()/quit(): the application is destroyed at interpreter exit. The keeper cancels and waits
    first, so Qt never destroys a running thread (that aborted the process, e.g. at the end of bench.window)."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run([sys.executable, "-c", EXIT_WHILE_RUNNING], capture_output=True, text=True, env=env,
                          timeout=120, cwd=str(tmp_path))
    assert "script ends with the task running" in proc.stdout, proc.stderr
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Destroyed while thread" not in proc.stderr
