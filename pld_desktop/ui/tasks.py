"""The UI's one background-task runner (TaskRunner): tasks are plain callables taking a progress object."""

from __future__ import annotations

import atexit
import gc
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QCoreApplication, QObject, Qt, QThread, Signal, Slot

from ..core.progress import ProgressBase


class QtProgress(QObject, ProgressBase):
    """A `Progress` whose reports become queued signals (safe to emit from any thread)."""

    begun = Signal(str, int)
    reported = Signal(int, int, str)
    logged = Signal(str, str)

    def __init__(self) -> None:
        QObject.__init__(self)
        ProgressBase.__init__(self)
        self._rate_base: tuple[int, float] | None = None  # (done, time) the current rate is measured from

    def on_begin(self, stage: str, total: int) -> None:
        with self._lock:
            self._rate_base = None
        self.begun.emit(stage, total)

    def on_report(self, done: int, total: int, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            if self._rate_base is None:
                # A resumed stage reports the items restored from the project at once: measure the rate from
                # here, or "95 done in 1 s" predicts seconds for what takes minutes.
                self._rate_base = (done, now) if done > 1 else (0, self.started)
        self.reported.emit(done, total, message)

    def eta_seconds(self) -> float | None:
        """Seconds left at the rate of the items done since this stage began (or resumed), None until known."""
        with self._lock:
            done, total, base = self.done, self.total, self._rate_base
        if base is None or total <= 0 or done <= base[0]:
            return None
        return (time.monotonic() - base[1]) / (done - base[0]) * max(total - done, 0)

    def on_log(self, message: str, level: str) -> None:
        self.logged.emit(message, level)


class AnnouncingBackends:
    """Wraps a backends provider so the first request for each local model says it is loading (it takes seconds,
    and before this the window showed nothing while it happened). Delegates everything else unchanged."""

    def __init__(self, inner: Any, progress: ProgressBase) -> None:
        self._inner = inner
        self._progress = progress
        self._announced: set[str] = set()

    def _announce(self, kind: str, what: str) -> None:
        if kind not in self._announced:
            self._announced.add(kind)
            self._progress.begin(f"Loading the {what}…", 0)

    def student(self, settings: Any) -> Any:
        if getattr(settings, "student_backend", "") != "openai":
            self._announce("student", "student model")
        return self._inner.student(settings)

    def teacher(self, settings: Any) -> Any:
        if getattr(settings, "teacher", "") not in ("gemini", "openai"):
            self._announce("teacher", "local teacher model")
        return self._inner.teacher(settings)

    def embedder(self, settings: Any) -> Any:
        self._announce("embedder", "embedding model")
        return self._inner.embedder(settings)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# A job for the runner besides the phases: (project, backends, settings, progress) -> a message for the user.
# It runs on the worker thread with the thread's own project connection; raise Cancelled to stop.
Job = Callable[[Any, Any, Any, ProgressBase], str]


class PipelineTask:
    """A task for TaskRunner that opens its own connection to the project (one per thread) and runs the
    requested phases, or one `job` (scoring a version, recomputing conflicts, rule impact: the window's other
    background work). It returns `(status, message)` (status "done" | "cancelled" | "failed" | ...); only a
    backends factory that fails raises (the runner reports it as failed). `release()` frees the models it
    loaded: pass it as the runner's `after` (start_pipeline does), so the outcome reaches the window before
    the models are freed. Cancellation is cooperative through the progress object.
    """

    def __init__(self, project_path: Path, phases: Sequence[int], *,
                 backends_factory: Callable[[], Any] | None = None, job: Job | None = None) -> None:
        self.project_path = project_path
        self.backends_factory = backends_factory
        self.phases = list(phases)
        self.job = job
        self._backends: Any = None

    def __call__(self, progress: QtProgress) -> tuple[str, str]:  # on the worker thread
        from ..backends.factory import window_backends
        from ..core.pipeline import run_pipeline
        from ..core.progress import Cancelled
        from ..core.project import Project
        from ..core.settings import load_settings

        if self.job is None and any(phase > 1 for phase in self.phases):
            import_phase_libraries()  # the window's other jobs are short and mostly need neither library
        backends = self._backends = AnnouncingBackends((self.backends_factory or window_backends)(), progress)
        if self.job is not None:
            try:
                with Project.open(self.project_path) as project:
                    message = self.job(project, backends, load_settings(project), progress)
                return "done", message
            except Cancelled:
                return "cancelled", "Stopped; what was scored so far is kept and reused."
            except Exception as exc:
                return "failed", str(exc) or type(exc).__name__
        try:
            with Project.open(self.project_path) as project:
                report = run_pipeline(project, load_settings(project), backends, progress, phases=self.phases,
                                      command="gui")
            return report.status, report.message or "All phases finished."
        except Exception as exc:  # shown to the user; the project keeps everything completed
            return "failed", str(exc)

    def release(self) -> None:  # on the worker thread, after the outcome is posted
        backends, self._backends = self._backends, None
        if backends is not None:
            backends.close()


def start_pipeline(runner: TaskRunner, task: PipelineTask) -> bool:
    """Start a PipelineTask on `runner`, its models released after the outcome is posted."""
    return runner.start(task, after=task.release)


# ---------------------------------------------------------------------------
# The one background-task runner of the UI
# ---------------------------------------------------------------------------
# A task is a plain callable run on a worker thread: it takes the progress/cancel object and returns a result,
# raises Cancelled to stop, or raises anything else to fail. It opens its own project connection if it needs one.
Task = Callable[[QtProgress], Any]


_PREPARED: list[bool] = []
WINDOW_SWITCH_INTERVAL_S = 0.001


def prepare_window_process() -> None:
    """Once per process that shows the window: the GIL's switch interval down to 1 ms, and the startup heap frozen.

    Switch interval: while a worker thread runs Python (a phase, a CSV read, a model's vocabulary loop), every time
    the GUI thread needs the GIL it waits up to the interval (5 ms by default), and one timer tick or repaint needs
    it many times; at 1 ms those waits shrink five-fold (workers lose little: llama.cpp runs without the GIL).
    Heap: a full collection walks every tracked object while holding the GIL; with the window's ~90k startup
    objects each took 60-140 ms, and a worker that allocates much triggers several. Frozen objects (modules,
    classes, the window's widgets) are never walked again; a cycle among them that becomes garbage later is never
    freed (they live as long as the process anyway).
    """
    if not _PREPARED:
        _PREPARED.append(True)
        sys.setswitchinterval(WINDOW_SWITCH_INTERVAL_S)
        gc.collect()
        gc.freeze()


def import_phase_libraries() -> None:
    """On a worker thread of a window process: the phases' heavy libraries imported with the garbage collector
    paused, then frozen like the startup heap. Imported mid-run, their ~100k new objects set off two or three full
    collections, each walking them with the GIL held: 45-55 ms each in which the window could not run. Paused,
    the import costs no collection; frozen, later full collections never walk the modules again."""
    import importlib

    from ..core.pipeline import PHASE_LIBRARIES
    if all(name in sys.modules for name in PHASE_LIBRARIES):
        return
    gc.disable()
    try:
        for name in PHASE_LIBRARIES:
            importlib.import_module(name)
    finally:
        gc.freeze()
        gc.enable()


class _TaskThread(QThread):
    """The worker thread of one task (only TaskRunner creates these). `outcome(kind, payload)` is posted once:
    ("ok", result), ("failed", exception) or ("cancelled", None); `after` then runs on the same thread."""

    outcome = Signal(str, object)

    def __init__(self, task: Task, progress: QtProgress, after: Callable[[], None] | None, name: str) -> None:
        super().__init__()  # no parent: the keeper holds it until it has finished
        self.task = task
        self.progress = progress
        self.after = after
        self.name = name
        self.setObjectName(name)  # the OS thread's name, for debuggers and crash reports

    def run(self) -> None:  # on the worker thread
        from ..core.progress import Cancelled

        threading.current_thread().name = self.name  # tracebacks and logs name the thread
        try:
            try:
                result = self.task(self.progress)
            except Cancelled:
                self.outcome.emit("cancelled", None)
            except BaseException as exc:  # reported, never lost with the thread
                self.outcome.emit("failed", exc)
            else:
                self.outcome.emit("ok", result)
        finally:
            if self.after is not None:
                self.after()


class TaskKeeper(QObject):
    """The application's one owner of running task threads: each stays referenced here until it has finished,
    so a thread is never destroyed while it runs, whatever happened to the view that started it. One per
    QApplication (a child of it, found with `task_keeper()`); on quit it cancels and waits for them all."""

    def __init__(self, parent: QObject) -> None:
        super().__init__(parent)
        self.setObjectName("pld-task-keeper")
        self._threads: set[_TaskThread] = set()

    def adopt(self, thread: _TaskThread) -> None:
        self._threads.add(thread)
        thread.finished.connect(self._on_finished)

    def running(self) -> list[QThread]:
        """The task threads that have not finished yet (and been let go)."""
        return list(self._threads)

    @Slot()
    def _on_finished(self) -> None:
        thread = self.sender()
        if isinstance(thread, _TaskThread) and thread in self._threads:
            thread.wait()  # `finished` is posted just before run() returns: let it return
            self._threads.discard(thread)
            thread.deleteLater()

    @Slot()
    def wait_all(self) -> None:
        """Cancel every task still running and wait for its thread (the application is quitting)."""
        for thread in list(self._threads):
            thread.progress.cancel()
        for thread in list(self._threads):
            thread.wait()
            self._threads.discard(thread)


def task_keeper() -> TaskKeeper:
    """The running application's TaskKeeper (created on first use as a child of the QCoreApplication)."""
    app = QCoreApplication.instance()
    if app is None:
        raise RuntimeError("background tasks need a running QApplication")
    keeper = app.findChild(TaskKeeper, "pld-task-keeper", Qt.FindChildOption.FindDirectChildrenOnly)
    if keeper is None:
        keeper = TaskKeeper(app)
        app.aboutToQuit.connect(keeper.wait_all)
        # A script that ends without app.exec()/quit() (a benchmark, a test helper) destroys the application at
        # interpreter exit; a task thread still running then aborts the process ("QThread: Destroyed while
        # thread is still running"). Waiting here first makes that exit clean too.
        atexit.register(_wait_at_exit, keeper)
    return keeper


def _wait_at_exit(keeper: TaskKeeper) -> None:
    import shiboken6
    if shiboken6.isValid(keeper):
        keeper.wait_all()


class TaskRunner(QObject):
    """Runs a view's or dialog's background tasks, one at a time, and turns them into signals on the GUI thread.

    `start(task)` runs `task(progress)` on a new worker thread. While it runs the runner re-emits the task's
    progress (`begun`, `reported`, `logged`); at the end exactly one of `succeeded(result)`, `failed(message,
    exception)` or `cancelled()` arrives, and `busy()` is already False when it does. Cancellation is
    cooperative: `cancel()` sets the flag the task checks (`progress.check()`), never terminate().
    `abandon()` cancels and lets go: nothing more is heard of that task. The runner's parent (the view) owns
    it; the application's TaskKeeper owns the threads, so a view that closes or is deleted while its task
    runs never receives a callback (its runner is gone or has abandoned the task) and never destroys a
    running thread. `shutdown(wait=True)` is for a closing view that must not leave work behind.

    `name` names the worker threads. `serial=True`: a task started while an abandoned one of this runner is
    still running waits for that one to end (one thread at a time touches what the tasks share, e.g. the import
    dialog's DataFrame).

    Threading contract: call every method from the GUI thread; the signals arrive there.
    """

    begun = Signal(str, int)            # stage, total
    reported = Signal(int, int, str)    # done, total, message
    logged = Signal(str, str)           # message, level
    succeeded = Signal(object)          # the task's result
    failed = Signal(str, object)        # message in words, the exception
    cancelled = Signal()

    def __init__(self, parent: QObject | None = None, *, serial: bool = False, name: str = "pld-task") -> None:
        super().__init__(parent)
        self.serial = serial
        self.name = name
        self._thread: _TaskThread | None = None              # the current task's thread
        self._pending: tuple[Task, QtProgress, Callable[[], None] | None] | None = None  # serial: waiting
        self._started: list[_TaskThread] = []                 # threads of this runner not finished yet

    # -- state ----------------------------------------------------------------------------------------------
    def busy(self) -> bool:
        """Whether a task is running or waiting to run (abandoned tasks do not count)."""
        return self._thread is not None or self._pending is not None

    @property
    def progress(self) -> QtProgress | None:
        """The current task's progress object (its stage, done, total and ETA), None when idle."""
        if self._pending is not None:
            return self._pending[1]
        return self._thread.progress if self._thread is not None else None

    # -- control --------------------------------------------------------------------------------------------
    def start(self, task: Task, *, after: Callable[[], None] | None = None,
              progress: QtProgress | None = None) -> bool:
        """Run `task` in the background; False (and nothing started) if the runner is busy. `after` runs on
        the worker thread once the outcome is posted (releasing models must not hold up the window)."""
        if self.busy():
            return False
        progress = progress if progress is not None else QtProgress()
        if self.serial and any(t.isRunning() for t in self._started):
            self._pending = (task, progress, after)
            return True
        self._launch(task, progress, after)
        return True

    def cancel(self) -> None:
        """Ask the current task to stop at its next check; its outcome still arrives (usually `cancelled`)."""
        if self._pending is not None:
            self._pending[1].cancel()
        if self._thread is not None:
            self._thread.progress.cancel()

    def abandon(self) -> None:
        """Cancel the current task and forget it: no signal of it arrives; its thread ends on its own."""
        if self._pending is not None:
            self._pending[1].cancel()
            self._pending = None
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.progress.cancel()
            self._disconnect(thread)

    def shutdown(self, wait: bool = True) -> None:
        """The owner goes away: abandon the current task and, with `wait`, wait until every thread this runner
        started has ended (including the `after` of a task whose outcome has already arrived)."""
        self.abandon()
        if wait:
            for thread in list(self._started):
                thread.wait()

    def wait(self, timeout_ms: int | None = None) -> bool:
        """Block until the threads of this runner have ended (tests, and owners that must finish first)."""
        threads = list(self._started)
        return all(t.wait() if timeout_ms is None else t.wait(timeout_ms) for t in threads)

    # -- internals ------------------------------------------------------------------------------------------
    def _launch(self, task: Task, progress: QtProgress, after: Callable[[], None] | None) -> None:
        thread = _TaskThread(task, progress, after, self.name)
        progress.begun.connect(self._on_begun)
        progress.reported.connect(self._on_reported)
        progress.logged.connect(self._on_logged)
        thread.outcome.connect(self._on_outcome)
        thread.finished.connect(self._on_thread_finished)
        task_keeper().adopt(thread)
        self._started.append(thread)
        self._thread = thread
        thread.start()

    def _disconnect(self, thread: _TaskThread) -> None:
        for signal, slot in ((thread.progress.begun, self._on_begun), (thread.progress.reported, self._on_reported),
                             (thread.progress.logged, self._on_logged), (thread.outcome, self._on_outcome)):
            try:
                signal.disconnect(slot)
            except (RuntimeError, TypeError):  # already gone
                pass

    def _is_current_progress(self) -> bool:
        return self._thread is not None and self.sender() is self._thread.progress

    @Slot(str, int)
    def _on_begun(self, stage: str, total: int) -> None:
        if self._is_current_progress():
            self.begun.emit(stage, total)

    @Slot(int, int, str)
    def _on_reported(self, done: int, total: int, message: str) -> None:
        if self._is_current_progress():
            self.reported.emit(done, total, message)

    @Slot(str, str)
    def _on_logged(self, message: str, level: str) -> None:
        if self._is_current_progress():
            self.logged.emit(message, level)

    @Slot(str, object)
    def _on_outcome(self, kind: str, payload: object) -> None:
        thread = self.sender()
        if thread is not self._thread or not isinstance(thread, _TaskThread):
            return  # an abandoned task's late outcome
        self._thread = None
        self._disconnect(thread)
        if kind == "ok":
            self.succeeded.emit(payload)
        elif kind == "cancelled":
            self.cancelled.emit()
        else:
            self.failed.emit(str(payload).strip() or type(payload).__name__, payload)

    @Slot()
    def _on_thread_finished(self) -> None:
        thread = self.sender()
        if isinstance(thread, _TaskThread) and thread in self._started:
            self._started.remove(thread)
        if self._pending is not None and not any(t.isRunning() for t in self._started):
            task, progress, after = self._pending
            self._pending = None
            self._launch(task, progress, after)
