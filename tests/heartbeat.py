"""Proof that the GUI event loop turns while a background call waits, without counting wall-clock ticks.

A tick count over a run ("more than 3 timer ticks") depends on how fast the machine is: on a loaded CI box a
fast fake run finishes in two ticks. Here the background call itself waits until the GUI thread has beaten a
few times; if the call ran on the GUI thread, or blocked it, no beat could come and the wait times out.
"""

from __future__ import annotations

import threading

from PySide6.QtCore import QTimer


class GuiHeartbeat:
    def __init__(self, interval_ms: int = 5) -> None:
        self.beats = 0
        self.proven: bool | None = None  # None until a background call has checked
        self._cond = threading.Condition()
        self._timer = QTimer()
        self._timer.timeout.connect(self._beat)
        self._timer.start(interval_ms)

    def _beat(self) -> None:
        with self._cond:
            self.beats += 1
            self._cond.notify_all()

    def check_from_worker(self, beats: int = 3, timeout_s: float = 30.0) -> None:
        """Called inside the background work: waits for `beats` GUI beats (once per heartbeat)."""
        if self.proven is not None:
            return
        with self._cond:
            start = self.beats
            self.proven = self._cond.wait_for(lambda: self.beats >= start + beats, timeout_s)

    def stop(self) -> None:
        self._timer.stop()
