"""Runs core phases on a background thread and turns their progress into Qt signals."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal

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


class PipelineThread(QThread):
    """Opens its own connection to the project (one per thread) and runs the requested phases, or one `job`
    (scoring a version, recomputing conflicts, rule impact: the window's other background work).

    Cancellation is cooperative: `cancel()` sets the flag the phases check between items; never terminate().
    """

    finished_with = Signal(str, str)  # status ("done" | "cancelled" | "failed" | ...), message

    def __init__(self, project_path: Path, phases: Sequence[int], parent: QObject | None = None, *,
                 backends_factory: Callable[[], Any] | None = None, job: Job | None = None) -> None:
        super().__init__(parent)
        self.project_path = project_path
        self.backends_factory = backends_factory
        self.phases = list(phases)
        self.job = job
        self.progress = QtProgress()

    def cancel(self) -> None:
        self.progress.cancel()

    def run(self) -> None:  # runs on the worker thread
        from ..backends.factory import DefaultBackends
        from ..core.pipeline import run_pipeline
        from ..core.progress import Cancelled
        from ..core.project import Project
        from ..core.settings import load_settings

        backends = AnnouncingBackends((self.backends_factory or DefaultBackends)(), self.progress)
        if self.job is not None:
            try:
                with Project.open(self.project_path) as project:
                    message = self.job(project, backends, load_settings(project), self.progress)
                self.finished_with.emit("done", message)
            except Cancelled:
                self.finished_with.emit("cancelled", "Stopped; what was scored so far is kept and reused.")
            except Exception as exc:
                self.finished_with.emit("failed", str(exc) or type(exc).__name__)
            finally:
                backends.close()
            return
        try:
            with Project.open(self.project_path) as project:
                report = run_pipeline(project, load_settings(project), backends, self.progress, phases=self.phases,
                                      command="gui")
            self.finished_with.emit(report.status, report.message or "All phases finished.")
        except Exception as exc:  # shown to the user; the project keeps everything completed
            self.finished_with.emit("failed", str(exc))
        finally:
            backends.close()


# Background jobs whose view went away before they ended stay referenced here until they finish: a running
# QThread must not be destroyed with its parent. Views create job threads without a parent and call this.
_LIVE_JOBS: set[PipelineThread] = set()


def keep_alive(thread: PipelineThread) -> PipelineThread:
    """Hold a reference to `thread` until it has finished (then it is deleted later)."""
    _LIVE_JOBS.add(thread)
    thread.finished.connect(lambda t=thread: (_LIVE_JOBS.discard(t), t.deleteLater()))
    return thread

