"""The window's own smoke test (`pld-desktop --smoke-test`): the packaged bundle's proof that the GUI does its job.

Started offscreen (QT_QPA_PLATFORM=offscreen) with a project path, it checks that the project opened, shows every
tab, runs the phases named by PLD_SMOKE_PHASES (e.g. "4"; none when unset) in the window's own runner, shows every
tab again, saves a screenshot to PLD_SMOKE_SCREENSHOT (when set) and exits 0. It exits 1, naming the cause on
stderr, when the project did not open, a tab could not be drawn, a phase did not end "done", a dialog popped up
(its text is the cause; the dialog is closed), an exception reached sys.excepthook or threading.excepthook, the
screenshot could not be written, or nothing finished within PLD_SMOKE_TIMEOUT seconds (default 60, 1800 with
phases). The last stdout line "PLD_SMOKE {json}" reports what it saw.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QTimer
from PySide6.QtWidgets import QApplication, QDialog, QMainWindow, QMessageBox

SMOKE_FLAG = "--smoke-test"
POLL_MS = 250


def smoke_requested(arguments: list[str]) -> bool:
    return SMOKE_FLAG in arguments or os.environ.get("PLD_SMOKE_TEST") == "1"


def _phases_from_env() -> list[int]:
    raw = os.environ.get("PLD_SMOKE_PHASES", "").replace(",", " ").split()
    phases = [int(p) for p in raw]
    if any(p not in (1, 2, 3, 4) for p in phases):
        raise ValueError(f"PLD_SMOKE_PHASES names phases 1-4, not {raw}")
    return phases


class WindowSmoke(QObject):
    """Drives one MainWindow through the smoke steps on the GUI thread (timers only; never blocks the loop)."""

    def __init__(self, app: QApplication, window: QMainWindow, wanted_project: Path | None) -> None:
        super().__init__(app)
        self.app = app
        self.window: Any = window
        self.wanted_project = wanted_project.resolve() if wanted_project is not None else None
        self.phases = _phases_from_env()
        screenshot = os.environ.get("PLD_SMOKE_SCREENSHOT")
        self.screenshot = Path(screenshot) if screenshot else None
        default_timeout = 1800.0 if self.phases else 60.0
        self.timeout_ms = int(float(os.environ.get("PLD_SMOKE_TIMEOUT", default_timeout)) * 1000)
        self.problems: list[str] = []
        self.report: dict[str, Any] = {"platform": app.platformName(), "phases": self.phases, "tabs": []}
        self._started_run = False
        self._ended = False
        self._dialogs = self._poller(self._close_dialogs)
        self._waiter = self._poller(self._wait_for_run)
        self._previous_hooks = (sys.excepthook, threading.excepthook)

    def _poller(self, slot: Any) -> QTimer:
        timer = QTimer(self)
        timer.setInterval(POLL_MS)
        timer.timeout.connect(slot)
        return timer

    # -- hooks ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        sys.excepthook = self._on_exception
        threading.excepthook = self._on_thread_exception
        self._dialogs.start()
        QTimer.singleShot(self.timeout_ms, self._give_up)
        QTimer.singleShot(0, self._first_look)

    def _on_exception(self, kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        traceback.print_exception(kind, exc, tb)
        self.problems.append(f"exception: {kind.__name__}: {exc}")

    def _on_thread_exception(self, args: threading.ExceptHookArgs) -> None:
        traceback.print_exception(args.exc_type, args.exc_value, args.exc_traceback)
        name = args.thread.name if args.thread is not None else "?"
        self.problems.append(f"exception in thread {name}: {args.exc_type.__name__}: {args.exc_value}")

    def _close_dialogs(self) -> None:
        """A modal dialog in a smoke run is a failure (a warning, an error, a question nobody answers)."""
        dialog = self.app.activeModalWidget()
        if dialog is None:
            return
        text = dialog.text() if isinstance(dialog, QMessageBox) else ""
        self.problems.append(f"dialog {dialog.windowTitle()!r}: {text}")
        if isinstance(dialog, QMessageBox) and dialog.escapeButton() is None:
            dialog.done(0)
        elif isinstance(dialog, QDialog):
            dialog.reject()
        else:
            dialog.close()

    # -- steps ----------------------------------------------------------------------------------------------
    def _first_look(self) -> None:
        if self.app.activeModalWidget() is not None:  # opening the project raised a dialog: let it be closed
            QTimer.singleShot(POLL_MS, self._first_look)
            return
        opened = self.window.project_path
        self.report["project"] = str(opened) if opened is not None else None
        self.report["title"] = self.window.windowTitle()
        if self.wanted_project is not None and (opened is None or Path(opened) != self.wanted_project):
            self.problems.append(f"the project {self.wanted_project} did not open")
            self._end()
            return
        self._show_every_tab("before")
        if self.problems or not self.phases:
            self._end()
            return
        self.window.run_phases(self.phases)
        if self.window.worker is None:
            self.problems.append(f"phases {self.phases} did not start")
            self._end()
            return
        self._started_run = True
        self._waiter.start()

    def _show_every_tab(self, when: str) -> None:
        tabs = getattr(self.window, "tabs", None)
        if tabs is None:
            return
        shown = []
        for i in range(tabs.count()):
            tabs.setCurrentIndex(i)
            self.app.processEvents()
            image = self.window.grab()
            if image.isNull() or tabs.currentWidget() is None:
                self.problems.append(f"tab {tabs.tabText(i)!r} could not be drawn ({when} the run)")
            shown.append(tabs.tabText(i))
        tabs.setCurrentIndex(0)
        self.report["tabs"] = shown

    def _wait_for_run(self) -> None:
        if self.window.worker is not None or getattr(self.window, "_finishing", None):
            return  # still running, or its thread is still tearing down
        self._waiter.stop()
        project = self.window.project
        states = project.phase_states() if project is not None else {}
        self.report["states"] = {str(p): (states.get(p) or {}).get("state") for p in self.phases}
        for p in self.phases:
            st = states.get(p) or {}
            if st.get("state") != "done":
                self.problems.append(f"phase {p} ended {st.get('state')!r}: {st.get('message') or ''}".strip())
        if self.problems:
            log = self.window.log.toPlainText().splitlines()[-15:]
            self.problems.append("window log:\n  " + "\n  ".join(log))
        self._show_every_tab("after")
        self._end()

    def _give_up(self) -> None:
        if not self._ended:
            self.problems.append(f"the smoke test did not finish within {self.timeout_ms / 1000:.0f} s")
            if self.window.worker is not None:
                self.window.cancel()
            self._end(force=True)

    def _end(self, force: bool = False) -> None:
        if self._ended:
            return
        self._ended = True
        self._dialogs.stop()
        image = self.window.grab()
        self.report["size"] = [image.width(), image.height()]
        if self.screenshot is not None:
            self.screenshot.parent.mkdir(parents=True, exist_ok=True)
            if image.isNull() or not image.save(str(self.screenshot)):
                self.problems.append(f"the screenshot {self.screenshot} could not be written")
            self.report["screenshot"] = str(self.screenshot)
        self.report["ok"] = not self.problems
        for problem in self.problems:
            print(f"PLD_SMOKE problem: {problem}", file=sys.stderr, flush=True)
        print("PLD_SMOKE " + json.dumps(self.report), flush=True)
        # Also to a file when asked: a frozen GUI app's stdout was seen to reach no one (the screenshot was there).
        report_path = os.environ.get("PLD_SMOKE_REPORT")
        if report_path:
            Path(report_path).write_text(json.dumps(self.report), encoding="utf-8")
        sys.excepthook, threading.excepthook = self._previous_hooks
        if force:  # a phase may still be running: no teardown to wait for, the run is a failure anyway
            sys.stderr.flush()
            os._exit(1)
        self.window.close()  # the window's own teardown: views, project connection, finished workers
        self.app.exit(0 if not self.problems else 1)


def install(app: QApplication, window: QMainWindow, args: list[str]) -> WindowSmoke:
    """Start the smoke steps once the event loop runs; `args` are the window's arguments without the flag."""
    wanted = Path(args[0]) if args and args[0].endswith(".pld") else None
    smoke = WindowSmoke(app, window, wanted)
    smoke.start()
    return smoke
