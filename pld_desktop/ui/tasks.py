"""Runs core phases on a background thread and turns their progress into Qt signals."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

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

    def on_begin(self, stage: str, total: int) -> None:
        self.begun.emit(stage, total)

    def on_report(self, done: int, total: int, message: str) -> None:
        self.reported.emit(done, total, message)

    def on_log(self, message: str, level: str) -> None:
        self.logged.emit(message, level)


class PipelineThread(QThread):
    """Opens its own connection to the project (one per thread) and runs the requested phases.

    Cancellation is cooperative: `cancel()` sets the flag the phases check between items; never terminate().
    """

    finished_with = Signal(str, str)  # status, message

    def __init__(self, project_path: Path, phases: Sequence[int], parent: QObject | None = None, *,
                 backends_factory: Callable[[], Any] | None = None) -> None:
        super().__init__(parent)
        self.project_path = project_path
        self.backends_factory = backends_factory
        self.phases = list(phases)
        self.progress = QtProgress()

    def cancel(self) -> None:
        self.progress.cancel()

    def run(self) -> None:  # runs on the worker thread
        from ..backends.factory import DefaultBackends
        from ..core.pipeline import run_pipeline
        from ..core.project import Project
        from ..core.settings import load_settings

        backends = (self.backends_factory or DefaultBackends)()
        try:
            with Project.open(self.project_path) as project:
                report = run_pipeline(project, load_settings(project), backends, self.progress, phases=self.phases,
                                      command="gui")
            self.finished_with.emit(report.status, report.message or "All phases finished.")
        except Exception as exc:  # shown to the user; the project keeps everything completed
            self.finished_with.emit("failed", str(exc))
        finally:
            backends.close()
