"""Progress reporting and cooperative cancellation shared by every long operation."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Cancelled(Exception):
    """Raised inside a phase when the user asked it to stop; the work done so far is already saved."""


class Progress(Protocol):
    """What a phase needs from its caller: somewhere to report, and a way to learn it should stop.

    Implementations must be callable from any thread (phases report from worker threads).
    """

    def begin(self, stage: str, total: int) -> None: ...

    def report(self, done: int, total: int, message: str = "") -> None: ...

    def log(self, message: str, level: str = "info") -> None: ...

    def cancelled(self) -> bool: ...


class ProgressBase:
    """A thread-safe base: a cancel flag, a log, and `check()` that raises `Cancelled`.

    The CLI and the Qt task runner subclass it and override `on_report` / `on_log`.
    """

    def __init__(self) -> None:
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self.stage = ""
        self.done = 0
        self.total = 0
        self.started = time.monotonic()
        self.messages: list[tuple[str, str]] = []

    # -- caller side -------------------------------------------------------
    def cancel(self) -> None:
        self._cancel.set()

    # -- phase side --------------------------------------------------------
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        if self._cancel.is_set():
            raise Cancelled("cancelled by the user")

    def begin(self, stage: str, total: int) -> None:
        """Start a new stage (e.g. 'Phase 1: extraction') with `total` items."""
        with self._lock:
            self.stage = stage
            self.done = 0
            self.total = total
            self.started = time.monotonic()
        self.on_begin(stage, total)

    def report(self, done: int, total: int, message: str = "") -> None:
        with self._lock:
            self.done, self.total = done, total
        self.on_report(done, total, message)

    def log(self, message: str, level: str = "info") -> None:
        with self._lock:
            self.messages.append((level, message))
        self.on_log(message, level)

    def eta_seconds(self) -> float | None:
        with self._lock:
            done, total, started = self.done, self.total, self.started
        if done <= 0 or total <= 0:
            return None
        return (time.monotonic() - started) / done * (total - done)

    # -- hooks -------------------------------------------------------------
    def on_begin(self, stage: str, total: int) -> None:
        pass

    def on_report(self, done: int, total: int, message: str) -> None:
        pass

    def on_log(self, message: str, level: str) -> None:
        pass


class SilentProgress(ProgressBase):
    """For tests and scripts that do not display progress."""


def check(progress: Progress) -> None:
    """Raise `Cancelled` if the caller asked to stop (works with any `Progress`)."""
    if progress.cancelled():
        raise Cancelled("cancelled by the user")
